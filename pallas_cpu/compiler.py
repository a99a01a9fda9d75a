"""The staged compile pipeline: kernel MLIR -> native code.

Stages (the output of every one can be printed from Python with
``pallas_cpu.lower(...).as_text(stage)``, dumped through
PALLAS_CPU_DUMP_DIR and replaced through PALLAS_CPU_OVERRIDE_DIR):

  kernel     the lowered kernel: func/linalg/scf/memref/arith/math with
             hbm/vmem/smem memory spaces (what the HLO carries)
  canonical  canonicalized and CSE'd
  loops      linalg ops rewritten as scf loops
  flat       memory spaces erased (all host memory on CPU)
  llvm       LLVM dialect
  llvm-ir    LLVM IR, with the packed entry the runtime calls (native.py)
  opt        opt -O<n> for the host CPU
  asm        llc for the host CPU
  so         cc -shared: the shared object the runtime loads with dlopen

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
import re
import shutil
import tempfile
import threading
import warnings
from typing import Callable

from mlir import ir, passmanager

from pallas_cpu import abi, disk_cache, knobs, mlir_context, native
from pallas_cpu.abi import KERNEL_NAME_ATTR, OPT_LEVEL_ATTR

VERSION = "0.1.0"


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
    ), why="LLVM dialect, which translates to LLVM IR"),
)


@dataclasses.dataclass(frozen=True)
class NativeStage:
  name: str
  ext: str        # of its output file
  why: str = ""


NATIVE_STAGES: tuple[NativeStage, ...] = (
    NativeStage("llvm-ir", "ll", why="what LLVM's tools read; adds the "
                "packed entry the runtime calls (runtime/abi.h)"),
    NativeStage("opt", "ll", why="LLVM's optimizer for the host CPU: "
                "inlining, vectorization, unrolling"),
    NativeStage("asm", "s", why="llc: machine code for the host CPU"),
    NativeStage("so", "so", why="a shared object the runtime dlopens; "
                "it outlives the process (disk_cache.py)"),
)
STAGE_NAMES = (tuple(s.name for s in STAGES)
               + tuple(s.name for s in NATIVE_STAGES))


def stage_file(stage: str) -> str:
  """The file name of a stage's output in dump and override directories:
  ``<index>-<stage>.<ext>`` (0-kernel.mlir ... 7-asm.s)."""
  idx = STAGE_NAMES.index(stage)
  ext = ("mlir" if idx < len(STAGES)
         else NATIVE_STAGES[idx - len(STAGES)].ext)
  return f"{idx}-{stage}.{ext}"


def _pipeline(stage: Stage) -> str:
  return "builtin.module(" + ",".join(stage.passes) + ")"


def run_stages(module: ir.Module, *, upto: str | None = None,
               on_stage: Callable[[str, ir.Module], None] | None = None,
               name: str = "kernel", after: str = "kernel",
               source: str | None = None) -> ir.Module:
  """Runs the MLIR stages that follow ``after`` (the stage ``module`` is
  at) in place, calling ``on_stage`` after each stage.  ``source``, the
  text ``module`` was parsed from, saves printing the module before every
  stage (3 ms of a small kernel's 14): a failing stage's input is then
  rebuilt from it, by the stages before, for the error's reproducer."""
  stages = STAGES[STAGE_NAMES.index(after) + 1:]
  for i, stage in enumerate(stages):
    if stage.fn is not None:
      stage.fn(module)
    elif stage.passes:
      before = str(module) if source is None else None
      try:
        passmanager.PassManager.parse(_pipeline(stage)).run(module.operation)
      except Exception as e:  # MLIRError carries the diagnostics
        if before is None:
          before = _input_of(source, after, stages[:i])
        raise _pipeline_error(name, stage, before, e) from None
    if on_stage is not None:
      on_stage(stage.name, module)
    if stage.name == upto:
      break
  return module


class StageFiles:
  """Where a kernel's stage outputs are dumped (PALLAS_CPU_DUMP_DIR) and
  where replacements are found (PALLAS_CPU_OVERRIDE_DIR), both laid out as
  ``<dir>/<kernel>-<fingerprint>/<index>-<stage>.<ext>``; an override
  directory may also name the kernel alone (``<dir>/<kernel>/``), which
  survives changes to the kernel.  Compilation resumes after the last
  stage that has a replacement."""

  def __init__(self, name: str, fp: str, dump_dir: str | None = None,
               override_dir: str | None = None):
    self.dump_to = os.path.join(dump_dir, f"{name}-{fp}") if dump_dir else None
    self.overrides: dict[str, str] = {}
    if override_dir:
      for sub in (f"{name}-{fp}", name):
        d = os.path.join(override_dir, sub)
        for stage in STAGE_NAMES[:-1]:
          path = os.path.join(d, stage_file(stage))
          if stage not in self.overrides and os.path.isfile(path):
            self.overrides[stage] = path

  @property
  def resume_after(self) -> str:
    """The last stage whose output is replaced ("kernel" when none)."""
    return max(self.overrides, key=STAGE_NAMES.index, default="kernel")

  def digest(self) -> str:
    """Identifies the replacements (part of the in-process cache key)."""
    h = hashlib.sha256()
    for stage, path in sorted(self.overrides.items()):
      with open(path, "rb") as f:
        h.update(stage.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]

  def dump(self, stage: str, text: str) -> None:
    if self.dump_to is not None:
      os.makedirs(self.dump_to, exist_ok=True)
      with open(os.path.join(self.dump_to, stage_file(stage)), "w") as f:
        f.write(text)

  def dump_module(self, stage: str, module: ir.Module) -> None:
    if self.dump_to is not None:
      self.dump(stage, module.operation.get_asm(enable_debug_info=True))

  def dump_file(self, stage: str, path: str) -> None:
    if self.dump_to is not None:
      with open(path) as f:
        self.dump(stage, f.read())


def build_native(llvm_module: ir.Module | None, opt_level: int,
                 files: StageFiles, work: str) -> str:
  """The native stages, in ``work``: LLVM IR -> opt -> llc -> cc -shared.
  Starts from ``llvm_module`` (the llvm stage) or from the last replaced
  native stage; returns the shared object's path.  When a step fails its
  inputs stay in ``work`` and the error names the command to re-run."""
  paths = {s.name: os.path.join(work, stage_file(s.name))
           for s in NATIVE_STAGES}
  start = STAGE_NAMES.index(files.resume_after)

  def todo(stage: str) -> bool:
    """Whether ``stage`` runs (else its replacement, if any, is its output)."""
    idx = STAGE_NAMES.index(stage)
    if idx == start and stage in files.overrides:
      shutil.copyfile(files.overrides[stage], paths[stage])
    return idx > start

  if todo("llvm-ir"):
    text = native.llvm_ir(llvm_module, abi.CIFACE_ENTRY)
    with open(paths["llvm-ir"], "w") as f:
      f.write(text)
    files.dump("llvm-ir", text)
  lines = 0  # the LLVM IR's size, for opt's unrolling budget
  if os.path.exists(paths["llvm-ir"]):
    with open(paths["llvm-ir"]) as f:
      lines = sum(1 for _ in f)
  cpus = native.cpu_targets()
  options = native.opt_options(lines)
  use_worker = (start < STAGE_NAMES.index("opt") and options is not None)
  for n, cpu in enumerate(cpus):
    try:
      if use_worker and _worker_step(paths, work, files, cpu, opt_level,
                                     options):
        return paths["so"]
      if todo("opt"):
        _native_step(native.opt_command(paths["llvm-ir"], paths["opt"],
                                        opt_level, cpu, lines), work)
      if todo("asm"):
        _native_step(native.llc_command(paths["opt"], paths["asm"],
                                        opt_level, cpu), work)
      break
    except native.NativeCompileError as e:
      # The bundled LLVM has assertions on; on a new CPU model its
      # vectorizer can abort: the generic x86-64 levels compile instead.
      if not e.crashed or n == len(cpus) - 1:
        raise
  for stage in ("opt", "asm"):
    if STAGE_NAMES.index(stage) > start:
      files.dump_file(stage, paths[stage])
  _native_step(native.link_command(paths["asm"], paths["so"]), work)
  return paths["so"]


def _worker_step(paths: dict, work: str, files: StageFiles, cpu: str,
                 opt_level: int, options: list[str]) -> bool:
  """opt, llc and the link through the compile worker (native.py): the
  tools' work without their process starts.  False when there is no
  worker here or LLVM reported an error: the tools then run the same
  steps, so that the error comes with a command that reproduces it.  A
  worker that died (crashed=True) raises, and the next ``-mcpu`` tries."""
  obj = os.path.join(work, "kernel.o")
  dumping = files.dump_to is not None
  try:
    done = native.worker.compile(
        paths["llvm-ir"], obj, cpu=cpu, opt_level=opt_level, options=options,
        opt_ll=paths["opt"] if dumping else None,
        asm=paths["asm"] if dumping else None)
  except native.NativeCompileError as e:
    if e.crashed:
      raise
    return False
  if not done:
    return False
  if dumping:
    files.dump_file("opt", paths["opt"])
    files.dump_file("asm", paths["asm"])
  _native_step(native.link_object_command(obj, paths["so"]), work)
  return True


def _native_step(cmd: list[str], work: str) -> None:
  try:
    native.run(cmd)
  except native.NativeCompileError as e:
    raise native.NativeCompileError(
        f"{e}\nThe step's inputs are kept in {work}; re-run:\n  "
        + " ".join(cmd), crashed=e.crashed) from None


def _input_of(source: str, after: str, stages) -> str:
  """The text ``stages`` (which ran without error) make of ``source``."""
  module = ir.Module.parse(source)
  for stage in stages:
    if stage.fn is not None:
      stage.fn(module)
    elif stage.passes:
      passmanager.PassManager.parse(_pipeline(stage)).run(module.operation)
  return str(module)


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
  # The -O3 code of a kernel built for tier-up (its tiered_ir's build): no
  # faster build to ask for.
  tiered: bool = False


_cache: dict[str, CompiledKernel] = {}
_cache_lock = threading.Lock()


def _reset_lock_in_child() -> None:
  # A build another thread of the parent ran at fork time does not run in
  # the child: the lock it held must not stay taken there.
  global _cache_lock
  _cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


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


def _key(fp: str, files: StageFiles) -> str:
  return fp if not files.overrides else f"{fp}+{files.digest()}"


def kernel_id(kernel_ir: str, k: knobs.Knobs | None = None) -> str:
  """The id the HLO carries for ``kernel_ir``, the key of both kernel
  caches: its fingerprint, and a digest of the replaced stages if the
  override directory replaces any (different code, different id)."""
  fp = fingerprint(kernel_ir)
  k = k if k is not None else knobs.read()
  if not k.override_dir:
    return fp
  return _key(fp, StageFiles(_kernel_name(kernel_ir), fp, None,
                             k.override_dir))


def compile_kernel(kernel_ir: str,
                   k: knobs.Knobs | None = None) -> CompiledKernel:
  """Native code for ``kernel_ir`` (the 'kernel' stage text), cached in
  this process and, as a shared object, on disk (disk_cache.py).  ``k``:
  the knobs to build with (default: as the environment sets them now)."""
  fp = fingerprint(kernel_ir)
  k = k if k is not None else knobs.read()
  files = StageFiles(_kernel_name(kernel_ir), fp, k.dump_dir, k.override_dir)
  key = _key(fp, files)
  with _cache_lock:
    hit = _cache.get(key)
    if hit is None:
      hit = _cache[key] = _load_or_build(kernel_ir, fp, k, files)
    return hit


def _load_or_build(kernel_ir: str, fp: str, k: knobs.Knobs,
                   files: StageFiles) -> CompiledKernel:
  """The disk cache's entry for this kernel and machine when it has a sound
  one; else a fresh build, stored there for the next process.  A kernel
  built from replaced stages never meets the disk cache."""
  entry = (disk_cache.entry_path(k.cache_dir, fp) if not files.overrides
           else None)
  if files.overrides:
    warnings.warn(f"pallas_cpu: kernel {fp} is built from replaced stages: "
                  + ", ".join(sorted(files.overrides.values())), stacklevel=2)
  if entry is not None:
    tiered = _tiered_from_disk(kernel_ir, fp, k)
    if tiered is not None:
      return tiered
  with mlir_context.kernel_context():
    module = ir.Module.parse(kernel_ir)
    name, opt_level = _kernel_attributes(module)
    loaded = disk_cache.load(entry) if entry is not None else None
    if loaded is not None:
      library, address = loaded
      return CompiledKernel(fp, name, address, library, from_disk=True)
    native.worker.prestart()  # starts while the MLIR stages run
    work = tempfile.mkdtemp(prefix=f"pallas_cpu-{name}-")
    so = _build(module, name, opt_level, files, work, source=kernel_ir)
  if entry is not None and disk_cache.store(so, entry):
    so = entry
  library, address = native.load(so)
  # Loaded code stays mapped after its file is gone: nothing of the build
  # is left behind (with the disk cache off too).
  shutil.rmtree(work, ignore_errors=True)
  return CompiledKernel(fp, name, address, library, from_disk=False)


_TIER_UP = re.compile(r",\s*" + re.escape(abi.TIER_UP_ATTR) + r" = \d+ : i64")
_OPT_LEVEL = re.compile(re.escape(OPT_LEVEL_ATTR) + r" = \d+ : i32")


def tiered_ir(kernel_ir: str) -> str | None:
  """The kernel's IR at -O3 without its tier-up attribute, for a kernel the
  cost model built small (lowering/cost.py); None for any other.  Only the
  module's attribute line changes."""
  head_end = kernel_ir.find("func.func")
  head, body = kernel_ir[:head_end], kernel_ir[head_end:]
  if not _TIER_UP.search(head):
    return None
  head = _TIER_UP.sub("", head, count=1)
  head = _OPT_LEVEL.sub(f"{OPT_LEVEL_ATTR} = 3 : i32", head, count=1)
  return head + body


def compile_tiered(kernel_ir: str) -> CompiledKernel | None:
  """The -O3 build of a kernel the runtime asks to tier up (on the
  background thread); None when there is none to make: no tier-up
  attribute, the kernel already runs its -O3 code, or stages are replaced
  (PALLAS_CPU_OVERRIDE_DIR: the replacement is the code asked for)."""
  k = knobs.read()
  tiered = tiered_ir(kernel_ir)
  if tiered is None or k.override_dir:
    return None
  fp = fingerprint(kernel_ir)
  with _cache_lock:
    hit = _cache.get(fp)
  if hit is not None and hit.tiered:
    return None
  compiled = dataclasses.replace(compile_kernel(tiered, k), tiered=True)
  with _cache_lock:
    _cache[compiled.fingerprint] = compiled
    # Whoever asks for this kernel again (a re-trace, another jit) gets the
    # -O3 code: registering the -O0 code again would undo the tier-up.
    _cache[fp] = dataclasses.replace(compiled, fingerprint=fp)
  return compiled


def _tiered_from_disk(kernel_ir: str, fp: str,
                      k: knobs.Knobs) -> CompiledKernel | None:
  """Kernel ``fp``'s -O3 build if it tiers up and an earlier process
  stored that build: that code at once (the same results, no -O0 phase)."""
  tiered = tiered_ir(kernel_ir)
  path = (disk_cache.entry_path(k.cache_dir, fingerprint(tiered))
          if tiered is not None else None)
  loaded = disk_cache.load(path) if path is not None else None
  if loaded is None:
    return None
  library, address = loaded
  return CompiledKernel(fp, _kernel_name(kernel_ir), address, library,
                        from_disk=True, tiered=True)


def _kernel_name(kernel_ir: str) -> str:
  m = re.search(re.escape(KERNEL_NAME_ATTR) + r' = "([^"]*)"', kernel_ir)
  return m.group(1) if m else "kernel"


def _kernel_attributes(module: ir.Module) -> tuple[str, int]:
  attrs = module.operation.attributes
  return (ir.StringAttr(attrs[KERNEL_NAME_ATTR]).value,
          ir.IntegerAttr(attrs[OPT_LEVEL_ATTR]).value)


def _build(module: ir.Module, name: str, opt_level: int, files: StageFiles,
           work: str, source: str | None = None) -> str:
  """Every stage after the last replaced one; the shared object's path (in
  ``work``: loaded from there when nothing caches it).  ``source``: the
  kernel text ``module`` was parsed from."""
  after = files.resume_after
  if STAGE_NAMES.index(after) < len(STAGES):
    if after != "kernel":
      with open(files.overrides[after]) as f:
        source = f.read()
      module = ir.Module.parse(source)
    else:
      files.dump_module("kernel", module)
    run_stages(module, on_stage=files.dump_module, name=name, after=after,
               source=source)
  else:
    module = None
  return build_native(module, opt_level, files, work)


def cache_size() -> int:
  return len(_cache)


@dataclasses.dataclass(frozen=True)
class CacheEntry:
  """A kernel this process holds: its fingerprint (the kernel id the HLO
  carries), its name, whether it came from the disk cache (nothing
  compiled) and whether it is the -O3 code a small kernel tiered up to
  (lowering/cost.py)."""
  fingerprint: str
  name: str
  from_disk: bool
  tiered: bool = False  # the -O3 code of a kernel that tiered up


def cache_entries() -> tuple[CacheEntry, ...]:
  """A snapshot of the in-process kernel cache, oldest first.  The cache
  only grows (a loaded kernel stays loaded: compiled code may still call
  it), so the entries added by some work are ``after[len(before):]``.

  Example::

    before = pallas_cpu.compiler.cache_entries()
    jax.jit(my_kernel_fn)(x)
    new = pallas_cpu.compiler.cache_entries()[len(before):]
    compiled_now = [e.name for e in new if not e.from_disk]
  """
  with _cache_lock:
    return tuple(CacheEntry(k.fingerprint, k.name, k.from_disk, k.tiered)
                 for k in _cache.values())
