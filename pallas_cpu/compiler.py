"""The staged compile pipeline: kernel MLIR -> native code.

Stages (each a named, flat list of passes; the IR after every stage can be
printed from Python and dumped through PALLAS_CPU_DUMP_DIR):

  kernel     the lowered kernel: func/linalg/scf/memref/arith/math with
             hbm/vmem/smem memory spaces (what the HLO carries)
  canonical  canonicalized and CSE'd
  loops      linalg ops rewritten as scf loops
  flat       memory spaces erased (all host memory on CPU)
  llvm       LLVM dialect
  native     a shared object: LLVM IR -> opt -O3 -> llc (host CPU) -> cc
             -shared (native.py), loaded with dlopen

Compiled kernels are cached in-process by a fingerprint of the kernel IR and
the options, so re-tracing or re-jitting never recompiles, and on disk
(PALLAS_CPU_CACHE_DIR, disk_cache.py: keyed by fingerprint and machine), so
a second process on the same kind of machine compiles nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
import threading
from typing import Callable

from mlir import ir, passmanager

from pallas_cpu import disk_cache, knobs, native
from pallas_cpu.lowering.kernel import ENTRY

VERSION = "0.1.0"
KERNEL_NAME_ATTR = "pallas_cpu.kernel_name"
OPT_LEVEL_ATTR = "pallas_cpu.opt_level"


class CompilationError(RuntimeError):
  """A pass pipeline failed; the message has diagnostics and a reproducer."""


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  passes: tuple[str, ...] = ()       # MLIR pass pipeline elements, or
  fn: Callable | None = None         # a Python rewrite of the module
  why: str = ""


def _erase_memory_spaces(module: ir.Module) -> None:
  """Drops the hbm/vmem/smem attributes from every memref type.

  Upstream has no generic pass for this; types are rewritten in place and
  memory_space_cast ops, now identities, are folded away.
  """
  def strip(t: ir.Type) -> ir.Type:
    if isinstance(t, ir.MemRefType):
      m = ir.MemRefType(t)
      if m.memory_space is not None:
        return ir.MemRefType.get(m.shape, m.element_type, layout=m.layout)
    return t

  casts = []

  def visit(op):
    op = op.operation
    for r in op.results:
      r.set_type(strip(r.type))
    for region in op.regions:
      for block in region.blocks:
        for a in block.arguments:
          a.set_type(strip(a.type))
    if op.name == "func.func":
      ft = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
      op.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(
          [strip(t) for t in ft.inputs], [strip(t) for t in ft.results]))
    if op.name == "memref.memory_space_cast":
      casts.append(op)
    return ir.WalkResult.ADVANCE

  module.operation.walk(visit)
  for op in casts:
    op.results[0].replace_all_uses_with(op.operands[0])
    op.erase()


STAGES: tuple[Stage, ...] = (
    Stage("kernel", why="as lowered from the jaxpr"),
    Stage("canonical", ("canonicalize", "cse"),
          why="fold constant index arithmetic from index maps and indexers"),
    Stage("loops", ("convert-linalg-to-loops",),
          why="one loop nest per fused elementwise generic; LLVM vectorizes "
              "the unit-stride inner loop"),
    Stage("flat", fn=_erase_memory_spaces,
          why="memory spaces mean nothing to LLVM on a CPU"),
    Stage("llvm", (
        "expand-strided-metadata",   # subviews -> reinterpret_cast arithmetic
        "lower-affine",              # affine.apply left by the step above
        "convert-scf-to-cf",
        # Intrinsics first (sqrt, floor, ctpop... vectorize); libm for what
        # has none (erf...).  math-to-libm marks the whole dialect illegal,
        # so it must come second.  log1p/expm1 never reach here as math ops
        # (rules/elementwise.py calls libm: math-to-llvm expands them
        # imprecisely).
        "convert-math-to-llvm",
        "convert-math-to-libm",
        # Allocations call the runtime's checked allocator (abi.h), which
        # turns a failed one into an error instead of a null pointer.
        "finalize-memref-to-llvm{use-generic-functions=true}",
        "convert-arith-to-llvm",
        "convert-func-to-llvm",
        "convert-cf-to-llvm",
        "convert-index-to-llvm",
        "reconcile-unrealized-casts",
    ), why="LLVM dialect for the ExecutionEngine"),
)
STAGE_NAMES = tuple(s.name for s in STAGES) + ("native",)


def _pipeline(stage: Stage) -> str:
  return "builtin.module(" + ",".join(stage.passes) + ")"


def run_stages(module: ir.Module, *, upto: str | None = None,
               on_stage: Callable[[str, ir.Module], None] | None = None,
               name: str = "kernel") -> ir.Module:
  """Runs the pipeline in place, calling ``on_stage`` after each stage."""
  for stage in STAGES:
    if stage.fn is not None:
      stage.fn(module)
    elif stage.passes:
      before = str(module)
      try:
        passmanager.PassManager.parse(_pipeline(stage)).run(module.operation)
      except Exception as e:  # MLIRError carries the diagnostics
        raise _pipeline_error(name, stage, before, e) from None
    if on_stage is not None:
      on_stage(stage.name, module)
    if stage.name == upto:
      break
  return module


def _pipeline_error(name, stage, before, e) -> CompilationError:
  fd, path = tempfile.mkstemp(prefix=f"pallas_cpu-{name}-{stage.name}-",
                              suffix=".mlir")
  with os.fdopen(fd, "w") as f:
    f.write(before)
  return CompilationError(
      f"pallas_cpu: stage '{stage.name}' failed for kernel '{name}':\n{e}\n"
      f"Reproduce with:\n  python -m pallas_cpu opt {path} "
      f"--pass-pipeline='{_pipeline(stage)}'")


@dataclasses.dataclass
class CompiledKernel:
  fingerprint: str
  name: str
  entry_address: int
  library: object     # the dlopen'ed shared object: keeps the code alive
  from_disk: bool     # loaded from the persistent cache, nothing compiled


_cache: dict[str, CompiledKernel] = {}
_cache_lock = threading.Lock()


@functools.cache
def _code_version() -> str:
  """A hash of pallas_cpu's own code (Python and the runtime ABI), so the
  persistent cache never serves a kernel built by different code."""
  root = os.path.dirname(os.path.abspath(__file__))
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in sorted(os.walk(root)):
    dirnames.sort()
    for f in sorted(filenames):
      if f.endswith((".py", ".h", ".cc")):
        with open(os.path.join(dirpath, f), "rb") as fh:
          h.update(f.encode() + b"\0" + fh.read())
  return h.hexdigest()


def fingerprint(kernel_ir: str) -> str:
  """Identifies a kernel across processes: its IR (which carries its name
  and options as module attributes), this compiler's pipeline and code."""
  h = hashlib.sha256()
  for part in (VERSION, _code_version(), _describe_pipeline(), kernel_ir):
    h.update(part.encode())
    h.update(b"\0")
  return h.hexdigest()[:32]


def _describe_pipeline() -> str:
  return ";".join(f"{s.name}:{','.join(s.passes)}" for s in STAGES)


def compile_kernel(kernel_ir: str) -> CompiledKernel:
  """Native code for ``kernel_ir`` (the 'kernel' stage text), cached in
  this process and, as a shared object, on disk (disk_cache.py)."""
  fp = fingerprint(kernel_ir)
  with _cache_lock:
    hit = _cache.get(fp)
    if hit is None:
      hit = _cache[fp] = _load_or_build(kernel_ir, fp, knobs.read())
    return hit


def _load_or_build(kernel_ir: str, fp: str, k: knobs.Knobs) -> CompiledKernel:
  """The disk cache's entry for this kernel and machine when it has a sound
  one; else a fresh build, stored there for the next process."""
  entry = disk_cache.entry_path(k.cache_dir, fp)
  with ir.Context(), ir.Location.unknown():
    module = ir.Module.parse(kernel_ir)
    name, opt_level = _kernel_attributes(module)
    loaded = disk_cache.load(entry) if entry is not None else None
    if loaded is not None:
      library, address = loaded
      return CompiledKernel(fp, name, address, library, from_disk=True)
    so = _build(module, name, opt_level, fp, k.dump_dir)
  if entry is not None and disk_cache.store(so, entry):
    os.unlink(so)
    os.rmdir(os.path.dirname(so))
    so = entry
  library, address = native.load(so)
  return CompiledKernel(fp, name, address, library, from_disk=False)


def _kernel_attributes(module: ir.Module) -> tuple[str, int]:
  attrs = module.operation.attributes
  return (ir.StringAttr(attrs[KERNEL_NAME_ATTR]).value,
          ir.IntegerAttr(attrs[OPT_LEVEL_ATTR]).value)


def _build(module: ir.Module, name: str, opt_level: int, fp: str,
           dump_dir: str | None) -> str:
  """Runs every stage and the native build; the path of the shared object
  (in a directory of its own: loaded from there when nothing caches it)."""
  on_stage = _dumper(dump_dir, name, fp) if dump_dir else None
  run_stages(module, on_stage=on_stage, name=name)
  native.add_packed_entry(module, "_mlir_ciface_" + ENTRY)
  so = os.path.join(tempfile.mkdtemp(prefix="pallas_cpu-"), f"{fp}.so")
  native.build_shared_object(module, opt_level, so)
  return so


def _dumper(dump_dir: str, name: str, fp: str):
  out = os.path.join(dump_dir, f"{name}-{fp}")
  os.makedirs(out, exist_ok=True)

  def on_stage(stage_name, m):
    idx = STAGE_NAMES.index(stage_name)
    with open(os.path.join(out, f"{idx}-{stage_name}.mlir"), "w") as f:
      f.write(m.operation.get_asm(enable_debug_info=True))
  return on_stage


def cache_size() -> int:
  return len(_cache)
