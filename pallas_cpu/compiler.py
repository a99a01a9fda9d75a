"""The staged compile pipeline: kernel MLIR -> native code.

Stages (each a named, flat list of passes; the IR after every stage can be
printed from Python and dumped through PALLAS_CPU_DUMP_DIR):

  kernel     the lowered kernel: func/linalg/scf/memref/arith/math with
             hbm/vmem/smem memory spaces (what the HLO carries)
  canonical  canonicalized and CSE'd
  loops      linalg ops rewritten as scf loops
  flat       memory spaces erased (all host memory on CPU)
  llvm       LLVM dialect
  native     machine code from the MLIR ExecutionEngine at -O3, host CPU

Compiled kernels are cached in-process by a fingerprint of the kernel IR and
the options, so re-tracing or re-jitting never recompiles.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import threading
from typing import Callable

from mlir import ir, passmanager
from mlir import execution_engine

from pallas_cpu import knobs

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
        "convert-math-to-libm",      # exact log1p/expm1/erf... from libm
        "convert-math-to-llvm",
        "finalize-memref-to-llvm",
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
  engine: object     # keeps the native code alive
  context: ir.Context


_cache: dict[str, CompiledKernel] = {}
_cache_lock = threading.Lock()


def fingerprint(kernel_ir: str) -> str:
  """Identifies a kernel across processes: its IR (which carries its name
  and options as module attributes) and this compiler's pipeline."""
  h = hashlib.sha256()
  for part in (VERSION, _describe_pipeline(), kernel_ir):
    h.update(part.encode())
    h.update(b"\0")
  return h.hexdigest()[:32]


def _describe_pipeline() -> str:
  return ";".join(f"{s.name}:{','.join(s.passes)}" for s in STAGES)


def compile_kernel(kernel_ir: str) -> CompiledKernel:
  """Native code for ``kernel_ir`` (the 'kernel' stage text), cached."""
  fp = fingerprint(kernel_ir)
  with _cache_lock:
    hit = _cache.get(fp)
    if hit is not None:
      return hit
    dump_dir = knobs.read().dump_dir
    ctx = ir.Context()
    with ctx, ir.Location.unknown():
      module = ir.Module.parse(kernel_ir)
      attrs = module.operation.attributes
      name = ir.StringAttr(attrs[KERNEL_NAME_ATTR]).value
      opt_level = ir.IntegerAttr(attrs[OPT_LEVEL_ATTR]).value
      on_stage = None
      if dump_dir:
        out = os.path.join(dump_dir, f"{name}-{fp}")
        os.makedirs(out, exist_ok=True)

        def on_stage(stage_name, m):
          idx = STAGE_NAMES.index(stage_name)
          with open(os.path.join(out, f"{idx}-{stage_name}.mlir"), "w") as f:
            f.write(m.operation.get_asm(enable_debug_info=True))
      run_stages(module, on_stage=on_stage, name=name)
      from pallas_cpu import runtime_lib
      engine = execution_engine.ExecutionEngine(
          module, opt_level=opt_level, shared_libs=[runtime_lib.path()])
      from pallas_cpu.lowering.kernel import ENTRY
      address = engine.raw_lookup("_mlir_ciface_" + ENTRY)
      if not address:
        raise CompilationError(f"pallas_cpu: no entry point in kernel '{name}'")
    compiled = CompiledKernel(fp, name, address, engine, ctx)
    _cache[fp] = compiled
    return compiled


def cache_size() -> int:
  return len(_cache)
