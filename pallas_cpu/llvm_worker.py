"""A long-lived process that optimizes LLVM IR and emits object files through
libLLVM's C API -- what ``opt -O<n>`` and ``llc -filetype=obj`` do, without
starting two processes (and loading a 130 MB libLLVM twice) per kernel.

It runs as its own process because the bundled LLVM is built with
assertions: an assertion that fails aborts this worker, never the user's
process (native.py then starts a new worker and tries the next ``-mcpu``).
Standard library only, started by path (``python -S llvm_worker.py
<libLLVM.so>``): importing the pallas_cpu package would import JAX.

Protocol: one JSON request per line on stdin, one JSON reply per line on the
stdout the worker had at start (LLVM's own prints go to stderr):

  {"ll": in.ll, "obj": out.o, "cpu": "native" | name, "opt_level": n,
   "opt_ll": path | null, "asm": path | null, "options": [...]}
  -> {"ok": true} | {"ok": false, "error": "..."}

``opt_ll`` and ``asm`` ask for the optimized IR and the assembly too (the
stage dumps).  ``options`` are LLVM command-line options (``-unroll-...``);
they are global to the process, so they are set once, by the first request,
and a request with different ones is refused (native.py sends those kernels
to the tools).
"""
import ctypes
import json
import os
import sys

_vp, _cp = ctypes.c_void_p, ctypes.c_char_p

# LLVMCodeGenOptLevel, LLVMRelocMode, LLVMCodeModel, LLVMCodeGenFileType.
_CODEGEN_LEVEL = {0: 0, 1: 1, 2: 2, 3: 3}
_RELOC_PIC = 2
_CODE_MODEL_DEFAULT = 0
_ASSEMBLY_FILE, _OBJECT_FILE = 0, 1


class _Llvm:
  def __init__(self, path: str):
    lib = ctypes.CDLL(path)
    for part in ("TargetInfo", "Target", "TargetMC", "AsmPrinter",
                 "AsmParser"):
      getattr(lib, f"LLVMInitializeX86{part}")()
    sig = {
        "LLVMContextCreate": (_vp, []),
        "LLVMContextDispose": (None, [_vp]),
        "LLVMDisposeModule": (None, [_vp]),
        "LLVMDisposeMessage": (None, [_vp]),
        "LLVMGetDefaultTargetTriple": (_vp, []),
        "LLVMGetHostCPUName": (_vp, []),
        "LLVMGetHostCPUFeatures": (_vp, []),
        "LLVMGetTargetFromTriple": (ctypes.c_int, [_cp, ctypes.POINTER(_vp),
                                                   ctypes.POINTER(_vp)]),
        "LLVMCreateTargetMachine": (_vp, [_vp, _cp, _cp, _cp, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_int]),
        "LLVMCreateTargetDataLayout": (_vp, [_vp]),
        "LLVMCopyStringRepOfTargetData": (_vp, [_vp]),
        "LLVMDisposeTargetData": (None, [_vp]),
        "LLVMSetDataLayout": (None, [_vp, _cp]),
        "LLVMSetTarget": (None, [_vp, _cp]),
        "LLVMCreateMemoryBufferWithContentsOfFile": (
            ctypes.c_int, [_cp, ctypes.POINTER(_vp), ctypes.POINTER(_vp)]),
        "LLVMParseIRInContext": (ctypes.c_int, [_vp, _vp, ctypes.POINTER(_vp),
                                                ctypes.POINTER(_vp)]),
        "LLVMCreatePassBuilderOptions": (_vp, []),
        "LLVMPassBuilderOptionsSetVerifyEach": (None, [_vp, ctypes.c_int]),
        "LLVMDisposePassBuilderOptions": (None, [_vp]),
        "LLVMRunPasses": (_vp, [_vp, _cp, _vp, _vp]),
        "LLVMGetErrorMessage": (_vp, [_vp]),
        "LLVMDisposeErrorMessage": (None, [_vp]),
        "LLVMVerifyModule": (ctypes.c_int, [_vp, ctypes.c_int,
                                            ctypes.POINTER(_vp)]),
        "LLVMCloneModule": (_vp, [_vp]),
        "LLVMPrintModuleToFile": (ctypes.c_int, [_vp, _cp,
                                                 ctypes.POINTER(_vp)]),
        "LLVMTargetMachineEmitToFile": (ctypes.c_int, [
            _vp, _vp, _cp, ctypes.c_int, ctypes.POINTER(_vp)]),
        "LLVMParseCommandLineOptions": (None, [ctypes.c_int,
                                               ctypes.POINTER(_cp), _cp]),
    }
    for name, (res, args) in sig.items():
      fn = getattr(lib, name)
      fn.restype, fn.argtypes = res, args
    self.lib = lib
    self.machines = {}
    self.options = None

  def message(self, ptr) -> str:
    """An LLVM-allocated C string, freed."""
    if not ptr:
      return ""
    text = ctypes.string_at(ptr).decode(errors="replace")
    self.lib.LLVMDisposeMessage(ptr)
    return text

  def machine(self, triple: str, cpu: str, opt_level: int):
    key = (triple, cpu, opt_level)
    if key not in self.machines:
      lib = self.lib
      if cpu == "native":  # what -mcpu=native means to opt and llc
        name = self.message(lib.LLVMGetHostCPUName())
        features = self.message(lib.LLVMGetHostCPUFeatures())
      else:
        name, features = cpu, ""
      target, err = _vp(), _vp()
      if lib.LLVMGetTargetFromTriple(triple.encode(), ctypes.byref(target),
                                     ctypes.byref(err)):
        raise RuntimeError(self.message(err))
      tm = lib.LLVMCreateTargetMachine(
          target, triple.encode(), name.encode(), features.encode(),
          _CODEGEN_LEVEL[opt_level], _RELOC_PIC, _CODE_MODEL_DEFAULT)
      if not tm:
        raise RuntimeError(f"no target machine for {triple} {name}")
      layout = lib.LLVMCreateTargetDataLayout(tm)
      self.machines[key] = (tm, self.message(
          lib.LLVMCopyStringRepOfTargetData(layout)))
      lib.LLVMDisposeTargetData(layout)
    return self.machines[key]

  def set_options(self, options: list[str]) -> None:
    if self.options is None:
      argv = (_cp * (len(options) + 1))(b"pallas_cpu-llvm-worker",
                                         *[o.encode() for o in options])
      self.lib.LLVMParseCommandLineOptions(len(options) + 1, argv, None)
      self.options = list(options)
    elif self.options != list(options):
      raise RuntimeError(f"options {options} differ from this worker's "
                         f"{self.options}")

  def compile(self, req: dict) -> None:
    lib = self.lib
    self.set_options(req.get("options", []))
    triple = req["triple"]
    tm, layout = self.machine(triple, req["cpu"], req["opt_level"])
    ctx = lib.LLVMContextCreate()
    module = None
    try:
      buf, err = _vp(), _vp()
      if lib.LLVMCreateMemoryBufferWithContentsOfFile(
          req["ll"].encode(), ctypes.byref(buf), ctypes.byref(err)):
        raise RuntimeError(f"{req['ll']}: {self.message(err)}")
      mod = _vp()
      if lib.LLVMParseIRInContext(ctx, buf, ctypes.byref(mod),
                                  ctypes.byref(err)):  # (takes buf)
        raise RuntimeError(f"{req['ll']}: {self.message(err)}")
      module = mod
      if lib.LLVMVerifyModule(module, 2, ctypes.byref(err)):  # ReturnStatus
        raise RuntimeError(f"{req['ll']}: invalid IR: {self.message(err)}")
      self.message(err)
      lib.LLVMSetTarget(module, triple.encode())
      lib.LLVMSetDataLayout(module, layout.encode())
      opts = lib.LLVMCreatePassBuilderOptions()
      lib.LLVMPassBuilderOptionsSetVerifyEach(opts, 0)
      error = lib.LLVMRunPasses(module, f"default<O{req['opt_level']}>"
                                .encode(), tm, opts)
      lib.LLVMDisposePassBuilderOptions(opts)
      if error:
        msg = lib.LLVMGetErrorMessage(error)
        text = ctypes.string_at(msg).decode(errors="replace")
        lib.LLVMDisposeErrorMessage(msg)
        raise RuntimeError(f"optimization failed: {text}")
      if req.get("opt_ll"):
        if lib.LLVMPrintModuleToFile(module, req["opt_ll"].encode(),
                                     ctypes.byref(err)):
          raise RuntimeError(self.message(err))
      if req.get("asm"):
        # Code generation changes the module (CodeGenPrepare): the assembly
        # comes from a copy, the object from the optimized module itself.
        clone = lib.LLVMCloneModule(module)
        try:
          self.emit(tm, clone, req["asm"], _ASSEMBLY_FILE)
        finally:
          lib.LLVMDisposeModule(clone)
      self.emit(tm, module, req["obj"], _OBJECT_FILE)
    finally:
      if module is not None:
        lib.LLVMDisposeModule(module)
      lib.LLVMContextDispose(ctx)

  def emit(self, tm, module, path: str, kind: int) -> None:
    err = _vp()
    if self.lib.LLVMTargetMachineEmitToFile(tm, module, path.encode(), kind,
                                            ctypes.byref(err)):
      raise RuntimeError(f"code generation failed: {self.message(err)}")


def main() -> int:
  replies = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # anything LLVM prints goes to stderr, not into the replies
  llvm = _Llvm(sys.argv[1])
  replies.write(json.dumps({"ok": True, "ready": True}) + "\n")
  replies.flush()
  for line in sys.stdin:
    try:
      llvm.compile(json.loads(line))
      reply = {"ok": True}
    except Exception as e:  # a diagnostic: the worker stays usable
      reply = {"ok": False, "error": str(e)}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
