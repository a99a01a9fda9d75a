"""Would this kernel compile for a TPU?  Checked once per kernel, before the
CPU build.

Neither of JAX's interpreters asks, so a kernel can pass on the CPU and be
refused by Mosaic.  The authority here is JAX's own Mosaic lowering
(``jax._src.pallas.mosaic.lowering``, the Python half of the TPU compiler):
it runs on any machine once the TPU it asks about (``tpu_info.get_tpu_info``)
is the generation checked -- an abstract TPU device in an abstract mesh, the
means JAX offers for lowering without the hardware.  What it refuses (block
shapes off the (8, 128) tiling, primitives and forms it has no rule for)
is reported in its own words, with the operand or the user's line.

The lowering cannot see what the rest of the TPU compiler refuses, so three
checks are added, each an estimate of that compiler's rule:

- VMEM: the blocks of VMEM operands (times their buffers: 2, or
  ``pl.Buffered(n)``), VMEM scratch and the deepest nest of ``run_scoped``
  VMEM allocations, each padded to the (sublane, 128) tiling, against the
  scoped VMEM limit -- ``pltpu.CompilerParams(vmem_limit_bytes=...)``, or
  XLA's default (16 MiB up to v5, 32 MiB from v6e; JAX does not carry
  these numbers) -- and against the generation's VMEM capacity
  (``TpuInfo.vmem_capacity_bytes``);
- SMEM: scalar prefetch, SMEM operands and scratch (32-bit words) against
  ``TpuInfo.smem_capacity_bytes``;
- dtypes: Mosaic has no 64-bit or complex types (float64, int64...).

A checker that fails on its own (JAX internals not as expected) never fails
the call: it warns once that the checks could not run.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import threading
import types
import warnings

from pallas_cpu import knobs

MODES = ("error", "warn", "off")

MIB = 1 << 20


class TpuCompatibilityWarning(UserWarning):
  """A kernel that runs on the CPU would not compile for the TPU generation
  checked (``CompilerParams(tpu_checks="warn")``, the default)."""


class TpuCompatibilityError(ValueError):
  """A kernel that would not compile for the TPU generation checked
  (``CompilerParams(tpu_checks="error")``).  ``problems`` lists each
  reason."""

  def __init__(self, message: str, problems: tuple[str, ...] = ()):
    super().__init__(message)
    self.problems = problems


# -- generations ---------------------------------------------------------------
def _chip_versions():
  from jax._src.pallas.mosaic import tpu_info
  return tpu_info, list(tpu_info.ChipVersion)


def _generation_of(chip) -> int:
  tpu_info, _ = _chip_versions()
  return tpu_info._get_tpu_info_impl(chip, 1).generation


def _normalize(name: str) -> str:
  n = name.strip().lower()
  n = n.removeprefix("tpu").strip()
  return n


@functools.cache
def chip_version(name: str | None):
  """JAX's ``ChipVersion`` for ``name`` ("v6e", "7x", "v7x", "TPU v6 lite");
  None: the newest generation the installed jax knows."""
  tpu_info, chips = _chip_versions()
  if name is None:
    newest = max(_generation_of(c) for c in chips)
    return [c for c in chips if _generation_of(c) == newest][-1]
  by_kind = tpu_info.chip_version_from_device_kind(name.strip())
  if by_kind is not None:
    return by_kind
  n = _normalize(name)
  for c in chips:
    if n in (c.value, "v" + c.value, c.value.removeprefix("v")):
      return c
  raise ValueError(
      f"tpu_generation must name a TPU generation JAX knows, one of "
      f"{[c.value for c in chips]} (or a device kind such as 'TPU v6 lite'), "
      f"got {name!r}")


def validate_generation(name: str) -> None:
  """Raises ValueError when the installed jax knows TPU generations and
  ``name`` is none of them (CompilerParams calls it)."""
  try:
    _chip_versions()
  except Exception:  # noqa: BLE001 - JAX internals moved: check at use
    return
  chip_version(name)


def default_scoped_vmem_bytes(generation: int) -> int:
  """XLA's default scoped VMEM limit of a TPU generation (what a kernel may
  use without ``vmem_limit_bytes``): 16 MiB up to v5, 32 MiB from v6e."""
  return 16 * MIB if generation <= 5 else 32 * MIB


# -- the check -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Verdict:
  """The problems found for one kernel and generation (empty: Mosaic would
  compile it, as far as the checks see), or why the checks could not run."""
  kernel: str
  generation: str
  problems: tuple[str, ...] = ()
  not_run: str = ""

  def message(self) -> str:
    lines = "\n".join(f"  - {p}" for p in self.problems)
    return (f"pallas_cpu: kernel {self.kernel} would not compile for TPU "
            f"{self.generation}:\n{lines}\n(CompilerParams(tpu_generation=...) "
            "checks another generation; tpu_checks='off' or "
            "PALLAS_CPU_TPU_CHECKS=off turns the checks off)")


_verdicts: dict[str, Verdict] = {}
_warned: set[str] = set()
_lock = threading.Lock()


def mode_of(cpu_params) -> str:
  """What the checks do for a kernel of ``cpu_params`` (pallas_cpu's
  CompilerParams): its ``tpu_checks``, else PALLAS_CPU_TPU_CHECKS."""
  return cpu_params.tpu_checks or knobs.read().tpu_checks


def check_kernel_later(params: dict, avals_in, cpu_params, *,
                       kernel_ir: str = "", mesh_axes: tuple = ()):
  """``check_kernel``, or -- when it would only warn and has no verdict
  for this kernel yet -- a function that runs it, for the thread that
  builds the kernel while XLA compiles (the check lowers the kernel with
  Mosaic: 5-40 ms).  None when there is nothing left to do.  The warning
  then comes from that thread, before the kernel's first execution (which
  waits for the build)."""
  mode = mode_of(cpu_params)
  if mode == "warn":
    try:
      key = _key(params, cpu_params, kernel_ir, mesh_axes)
    except Exception:  # noqa: BLE001 - check_kernel reports it
      key = None
    with _lock:
      known = key in _verdicts
    if key is not None and not known:
      return functools.partial(check_kernel, params, avals_in, cpu_params,
                               kernel_ir=kernel_ir, mesh_axes=mesh_axes,
                               mode=mode)
  check_kernel(params, avals_in, cpu_params, kernel_ir=kernel_ir,
               mesh_axes=mesh_axes, mode=mode)
  return None


def check_kernel(params: dict, avals_in, cpu_params, *, kernel_ir: str = "",
                 mesh_axes: tuple = (), mode: str | None = None
                 ) -> Verdict | None:
  """Checks the pallas_call ``params`` (its equation's parameters) for the
  TPU of ``cpu_params.tpu_generation`` and acts on the verdict as
  ``cpu_params.tpu_checks`` (or PALLAS_CPU_TPU_CHECKS) says: raise
  ``TpuCompatibilityError``, warn once per kernel, or nothing.  The verdict
  is cached by ``kernel_ir`` (the kernel's IR text) and the TPU options."""
  mode = mode or mode_of(cpu_params)
  if mode == "off":
    return None
  try:
    key = _key(params, cpu_params, kernel_ir, mesh_axes)
  except Exception as e:  # noqa: BLE001 - never fail the call on our own
    key, verdict = None, Verdict(f"'{params.get('name') or 'kernel'}'", "?",
                                 not_run=f"{type(e).__name__}: {e}")
  else:
    with _lock:
      verdict = _verdicts.get(key)
    if verdict is None:
      verdict = run(params, avals_in, cpu_params, mesh_axes=mesh_axes)
      with _lock:
        _verdicts[key] = verdict
  if verdict.not_run:
    if _first_time(("not run", key)):
      warnings.warn(f"pallas_cpu: TPU checks could not run for kernel "
                    f"{verdict.kernel}: {verdict.not_run}", RuntimeWarning,
                    stacklevel=2)
    return verdict
  if verdict.problems:
    if mode == "error":
      raise TpuCompatibilityError(verdict.message(), verdict.problems)
    if _first_time(key):
      warnings.warn(verdict.message(), TpuCompatibilityWarning, stacklevel=2)
  return verdict


def _first_time(key) -> bool:
  with _lock:
    if key in _warned:
      return False
    _warned.add(key)
    return True


def _key(params, cpu_params, kernel_ir, mesh_axes) -> str:
  cp = params.get("compiler_params")
  h = hashlib.sha256(kernel_ir.encode())
  h.update(repr((
      _kernel_name(params), str(chip_version(cpu_params.tpu_generation)),
      getattr(cp, "vmem_limit_bytes", None),
      getattr(cp, "dimension_semantics", None),
      cpu_params.dimension_semantics, mesh_axes,
      # what the VMEM estimate reads and the kernel's IR may not show
      [(bm.origin, bm.block_shape, bm.pipeline_mode,
        bm.block_aval.memory_space)
       for bm in params["grid_mapping"].block_mappings])).encode())
  return h.hexdigest()


def _kernel_name(params) -> str:
  jaxpr = params["jaxpr"]
  info = getattr(jaxpr, "debug_info", None)
  src = getattr(info, "func_src_info", None)
  name = params.get("name") or getattr(info, "func_name", None) or "kernel"
  if src and not src.startswith(f"{name} "):
    return f"'{name}' ({src})"
  return f"'{name}'" + (f" ({src.partition(' at ')[2]})" if src and " at "
                        in src else "")


def run(params: dict, avals_in, cpu_params, *, mesh_axes: tuple = ()
        ) -> Verdict:
  """The verdict for one kernel (no caching, no warnings)."""
  name = _kernel_name(params)
  try:
    chip = chip_version(cpu_params.tpu_generation)
    problems = []
    rejected = _mosaic_lowering(params, avals_in, cpu_params, chip,
                                mesh_axes)
    if rejected:
      problems.append(rejected)
    problems += _dtype_problems(params)
    problems += _capacity_problems(params, chip)
    return Verdict(name, str(chip), tuple(problems))
  except Exception as e:  # noqa: BLE001 - never fail the call on our own
    return Verdict(name, str(cpu_params.tpu_generation or "?"),
                   not_run=f"{type(e).__name__}: {e}")


# -- JAX's Mosaic lowering ------------------------------------------------------
class _LoweringRuleContext:
  """The part of ``mlir.LoweringRuleContext`` Mosaic's lowering reads: no
  backend (it then assumes the oldest libtpu, as when lowering for a TPU
  without one), a lowering cache, the operands."""

  def __init__(self, avals_in):
    self.avals_in = list(avals_in)
    self.module_context = types.SimpleNamespace(
        get_backend=lambda optional=False: None, pallas_lowering_cache={})

  def is_forward_compat(self) -> bool:
    return False


@functools.cache
def _device_kind(chip) -> str:
  """An abstract device kind answering ``get_tpu_info`` as ``chip``: the
  registry is JAX's extension point for device kinds it does not know."""
  tpu_info, _ = _chip_versions()
  kind = f"pallas_cpu tpu_checks {chip.value}"
  tpu_info.registry.setdefault(
      kind, functools.partial(tpu_info._get_tpu_info_impl, chip, 1))
  return kind


def _abstract_mesh(chip, mesh_axes):
  import jax
  device = jax.sharding.AbstractDevice(device_kind=_device_kind(chip),
                                       num_cores=1, platform="tpu")
  names = tuple(a for a, _ in mesh_axes)
  sizes = tuple(int(n) for _, n in mesh_axes)
  return jax.sharding.AbstractMesh(sizes, names, abstract_device=device)


# One MLIR context per thread for the Mosaic lowerings, made afresh every
# _CONTEXT_USES kernels (a context keeps every type and attribute it has
# seen): making one registers every dialect, 2 ms of a check's 6.
_contexts = threading.local()
_CONTEXT_USES = 100


def _check_context(jax_mlir, tpu):
  if isinstance(threading.current_thread(), threading._DummyThread):
    # A thread Python did not start: its thread-locals are torn down when
    # the call returns, freeing MLIR objects there crashes (mlir_context.py).
    context = jax_mlir.make_ir_context()
    tpu.register_dialect(context)
    return context
  entry = getattr(_contexts, "entry", None)
  if entry is None or entry[1] >= _CONTEXT_USES:
    context = jax_mlir.make_ir_context()
    tpu.register_dialect(context)
    entry = _contexts.entry = [context, 0]
  entry[1] += 1
  return entry[0]


def _mosaic_lowering(params, avals_in, cpu_params, chip, mesh_axes) -> str:
  """Lowers the kernel with JAX's Mosaic lowering for ``chip``: "" if it
  is accepted, else Mosaic's message with the user's line."""
  import jax
  from jax._src.interpreters import mlir as jax_mlir
  from jax._src.lib.mlir import ir
  from jax._src.pallas.mosaic import core as tpu_core
  from jax._src.pallas.mosaic import lowering
  from jax._src.pallas.mosaic import pallas_call_registration
  from jax.experimental.mosaic.dialects import tpu

  jaxpr, gm = params["jaxpr"], params["grid_mapping"]
  cp = params.get("compiler_params")
  semantics = getattr(cp, "dimension_semantics", None)
  if semantics is None and params.get("mesh") is None:
    semantics = cpu_params.dimension_semantics
  abstract_mesh = _abstract_mesh(chip, mesh_axes)
  ctx = _LoweringRuleContext(avals_in)
  context = _check_context(jax_mlir, tpu)
  try:
    with (jax.sharding.use_abstract_mesh(abstract_mesh), context,
          ir.Location.unknown(context)):
      if params.get("mesh") is None:
        module = lowering.lower_jaxpr_to_pipelined_module(
            ctx, gm, jaxpr, dimension_semantics=semantics,
            kernel_type=tpu_core.CoreType.TC,
            mesh=abstract_mesh if mesh_axes else None,
            fuse_transposed_lhs_in_matmul=getattr(
                cp, "fuse_transposed_lhs_in_matmul", False))
      else:  # pl.kernel / pl.core_map: as mpmd_map_tpu_lowering_rule does
        mesh = params["mesh"]
        if any(isinstance(v.aval, jax.core.ShapedArray) and not v.aval.shape
               for v in jaxpr.invars):
          jaxpr = pallas_call_registration._rewrite_jaxpr_for_lowering(
              jaxpr, mesh, (mesh,))
        module = ir.Module.create()
        lowering.lower_jaxpr_into_unpipelined_module(
            ctx, module, jaxpr, jax_mesh=abstract_mesh if mesh_axes else None,
            pallas_mesh=mesh, name=jax_mlir.sanitize_name(
                jaxpr.debug_info.func_name),
            num_scratch=gm.num_scratch_operands,
            needs_layout_passes=getattr(cp, "needs_layout_passes", True))
      module.operation.verify()
  except Exception as e:  # noqa: BLE001 - sorted below
    if not _is_verdict(e, ir, lowering):
      raise
    return _describe_rejection(e)
  return ""


def _is_verdict(e: BaseException, ir, lowering) -> bool:
  """Whether ``e`` is Mosaic refusing the kernel rather than this checker
  calling it wrongly: an error of the kinds its rules raise, raised inside
  JAX (an error raised in this module is a call that did not fit)."""
  from jax._src.pallas.mosaic import error_handling
  if not isinstance(e, (ValueError, NotImplementedError, TypeError,
                        IndexError, AssertionError, ir.MLIRError,
                        lowering.LoweringException,
                        error_handling.MosaicError)):
    return False
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is None or tb.tb_frame.f_code.co_filename != __file__


def _failing_equations(e: BaseException) -> list:
  """The equations Mosaic's jaxpr walker was lowering when ``e`` was
  raised, outermost first (its frames' ``eqn``)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    eqns, tb = [], e.__traceback__
    while tb is not None:
      frame = tb.tb_frame
      if frame.f_code.co_name == "jaxpr_subcomp" and "eqn" in frame.f_locals:
        eqns.append(frame.f_locals["eqn"])
      tb = tb.tb_next
    if eqns:
      return eqns
    e = e.__cause__ or e.__context__
  return []


def _source_line(eqn) -> str:
  from jax._src import source_info_util
  return source_info_util.summarize(eqn.source_info)


def _traceback_line(e: BaseException) -> str:
  """The user's line of a Mosaic verifier error: JAX gives it a traceback
  of the user frames of the failing op's location."""
  line, tb = "", e.__traceback__
  while tb is not None:
    code = tb.tb_frame.f_code
    if not any(part in code.co_filename
               for part in ("/jax/", "/jaxlib/", __file__)):
      # (its function names are the op's name stack: left out)
      line = f"{code.co_filename}:{tb.tb_lineno}"
    tb = tb.tb_next
  return line


def _describe_rejection(e: BaseException) -> str:
  text = str(e).strip()
  text = text.split("\nAdditional diagnostics:")[0]  # verbose errors' jaxpr
  if not text and isinstance(e, AssertionError):
    text = "an assertion of Mosaic's lowering rule failed"
  eqns = _failing_equations(e)
  where = ""
  if eqns:
    # The innermost user line: an equation inside a library function's jit
    # (the rev of jnp.flip) has none, its caller's equation does.
    line = next((l for l in map(_source_line, reversed(eqns)) if l), "")
    where = f" (primitive '{eqns[-1].primitive.name}'" + (
        f" at {line})" if line else ")")
  elif line := _traceback_line(e):
    where = f" (at {line})"
  return f"Mosaic lowering{where}: {type(e).__name__}: {text}"


# -- what the lowering cannot see -----------------------------------------------
def _is_64_bit(dtype) -> bool:
  """float64, int64, uint64 and the complex types (Mosaic has none)."""
  import numpy as np
  try:
    d = np.dtype(dtype)
  except TypeError:
    return False
  return d.kind == "c" or (d.kind in "fiu" and d.itemsize >= 8)


def _dtype_problems(params) -> list[str]:
  """Mosaic has no 64-bit or complex types: name the first operand and the
  first equation that has one."""
  from jax._src import core as jax_core
  jaxpr, gm = params["jaxpr"], params["grid_mapping"]
  out = []
  for bm in gm.block_mappings:
    if _is_64_bit(bm.array_aval.dtype):
      out.append(f"operand {bm.origin} is {bm.array_aval.dtype}: Mosaic "
                 "has no 64-bit or complex types")
      break

  def walk(j):
    for eqn in j.eqns:
      for v in eqn.outvars:
        dtype = getattr(getattr(v, "aval", None), "dtype", None)
        if dtype is not None and _is_64_bit(dtype):
          return eqn, dtype
      for sub in jax_core.jaxprs_in_params(eqn.params):
        found = walk(sub)
        if found:
          return found
    return None

  found = walk(jaxpr)
  if found:
    eqn, dtype = found
    line = _source_line(eqn)
    out.append(f"primitive '{eqn.primitive.name}'" +
               (f" at {line}" if line else "") +
               f" makes a {dtype} value: Mosaic has no 64-bit or complex "
               "types")
  return out


def _info(chip):
  tpu_info, _ = _chip_versions()
  return tpu_info._get_tpu_info_impl(chip, 1)


def _bits(dtype) -> int:
  import numpy as np
  from jax._src import dtypes
  if np.dtype(dtype) == np.bool_:
    return 32  # Mosaic keeps bool in memory as int32 (BOOL_MEMREF_TYPE)
  return dtypes.itemsize_bits(dtype)


def vmem_bytes(shape, dtype, info) -> int:
  """Bytes of a VMEM buffer of ``shape``: its last two dimensions padded
  to the (sublane, lane) tile of ``dtype`` (JAX's
  ``TpuInfo.get_sublane_tiling``), a 1-D buffer to whole lanes."""
  bits = _bits(dtype)
  shape = tuple(int(d) for d in shape) or (1,)
  lanes = info.num_lanes
  if len(shape) == 1:
    padded = (_round_up(shape[0], lanes * max(1, 32 // bits)),)
  else:
    try:
      sublanes = info.get_sublane_tiling(dtype)
    except Exception:  # noqa: BLE001 - a generation JAX has no rule for
      sublanes = 0
    if sublanes <= 0:  # (and 64-bit types, which JAX's rule makes 0)
      sublanes = info.num_sublanes * max(1, 32 // bits)
    padded = (*shape[:-2], _round_up(shape[-2], sublanes),
              _round_up(shape[-1], lanes))
  return math.prod(padded) * bits // 8


def smem_bytes(shape, dtype) -> int:
  """Bytes of an SMEM buffer: one 32-bit word per element (wider ones
  take their size)."""
  return math.prod(int(d) for d in shape) * max(4, _bits(dtype) // 8)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


@dataclasses.dataclass
class _Use:
  vmem: list  # (bytes, what)
  smem: list


def memory_use(params, chip) -> _Use:
  """The VMEM and SMEM a kernel asks for, item by item."""
  from jax._src.pallas import core as pallas_core
  from jax._src.pallas.mosaic import core as tpu_core
  info = _info(chip)
  jaxpr, gm = params["jaxpr"], params["grid_mapping"]
  use = _Use([], [])
  mesh = params.get("mesh") is not None
  for v in jaxpr.invars[gm.slice_index_ops]:
    aval = _inner(v.aval)
    use.smem.append((smem_bytes(aval.shape, aval.dtype),
                     f"scalar prefetch {aval.str_short()}"))
  for bm in gm.block_mappings:
    space = bm.block_aval.memory_space
    if space is None:
      space = pallas_core.MemorySpace.DEFAULT
    space = tpu_core.memory_space_to_tpu_memory_space(space,
                                                       tpu_core.CoreType.TC)
    shape = pallas_core._get_block_shape(bm.block_shape)
    dtype = bm.array_aval.dtype
    trivial = bm.has_trivial_window()
    buffers = 1 if mesh else getattr(bm.pipeline_mode, "buffer_count", 2)
    desc = f"{bm.origin} block {tuple(shape)} {dtype}"
    if space == tpu_core.MemorySpace.VMEM:
      use.vmem.append((buffers * vmem_bytes(shape, dtype, info),
                       f"{desc} x{buffers} buffers"))
    elif space == tpu_core.MemorySpace.SMEM:
      buffers = 1 if trivial else buffers
      use.smem.append((buffers * smem_bytes(shape, dtype),
                       f"{desc} x{buffers} buffers"))
  for i, v in enumerate(jaxpr.invars[gm.slice_scratch_ops]):
    _add_ref(use, v.aval, f"scratch operand {i}", info)
  scoped = _Use([], [])
  _scoped_peak(jaxpr, scoped, info)
  use.vmem += scoped.vmem
  use.smem += scoped.smem
  return use


def _inner(aval):
  return getattr(aval, "inner_aval", aval)


def _add_ref(use: _Use, ref_aval, what: str, info) -> None:
  from jax._src.pallas.mosaic import core as tpu_core
  space = getattr(ref_aval, "memory_space", None)
  aval = _inner(ref_aval)
  if not hasattr(aval, "dtype") or isinstance(aval,
                                              tpu_core.AbstractSemaphore):
    return
  desc = f"{what} {aval.str_short()}"
  if space == tpu_core.MemorySpace.VMEM:
    use.vmem.append((vmem_bytes(aval.shape, aval.dtype, info), desc))
  elif space == tpu_core.MemorySpace.SMEM:
    use.smem.append((smem_bytes(aval.shape, aval.dtype), desc))


def _scoped_peak(jaxpr, use: _Use, info) -> None:
  """The run_scoped allocations live at the deepest point of the kernel
  (allocations of scopes one after another reuse memory; nested ones
  add up), VMEM by bytes."""
  from jax._src import core as jax_core
  best = _Use([], [])
  for eqn in jaxpr.eqns:
    here = _Use([], [])
    subs = list(jax_core.jaxprs_in_params(eqn.params))
    if eqn.primitive.name == "run_scoped":
      line = _source_line(eqn)
      for v in eqn.params["jaxpr"].invars:
        _add_ref(here, v.aval, "run_scoped" + (f" at {line}" if line else ""),
                 info)
    inner_best = _Use([], [])
    for sub in subs:
      inner = _Use([], [])
      _scoped_peak(sub, inner, info)
      if _total(inner.vmem) + _total(inner.smem) > (
          _total(inner_best.vmem) + _total(inner_best.smem)):
        inner_best = inner
    here.vmem += inner_best.vmem
    here.smem += inner_best.smem
    if _total(here.vmem) + _total(here.smem) > (_total(best.vmem) +
                                                _total(best.smem)):
      best = here
  use.vmem += best.vmem
  use.smem += best.smem


def _total(items) -> int:
  return sum(b for b, _ in items)


def _fmt(n: int) -> str:
  if n >= MIB:
    return f"{n / MIB:.1f} MiB"
  if n >= 1024:
    return f"{n / 1024:.1f} KiB"
  return f"{n} B"


def _largest(items, k: int = 3) -> str:
  top = sorted(items, key=lambda x: -x[0])[:k]
  more = len(items) - len(top)
  return "; ".join(f"{w}: {_fmt(b)}" for b, w in top) + (
      f"; and {more} more" if more > 0 else "")


def _capacity_problems(params, chip) -> list[str]:
  info = _info(chip)
  use = memory_use(params, chip)
  out = []
  vmem = _total(use.vmem)
  limit = getattr(params.get("compiler_params"), "vmem_limit_bytes", None)
  if vmem > info.vmem_capacity_bytes:
    out.append(f"VMEM: the kernel needs about {_fmt(vmem)}, more than the "
               f"{_fmt(info.vmem_capacity_bytes)} of VMEM a TPU {chip} core has "
               f"({_largest(use.vmem)})")
  elif limit is not None and vmem > limit:
    out.append(f"VMEM: the kernel needs about {_fmt(vmem)}, more than its "
               f"vmem_limit_bytes={limit} ({_largest(use.vmem)})")
  elif limit is None and vmem > default_scoped_vmem_bytes(info.generation):
    scoped = default_scoped_vmem_bytes(info.generation)
    out.append(f"VMEM: the kernel needs about {_fmt(vmem)}, more than the "
               f"default scoped VMEM limit of {_fmt(scoped)} on TPU {chip} "
               f"({_largest(use.vmem)}); "
               "pltpu.CompilerParams(vmem_limit_bytes=...) raises it, up to "
               f"{_fmt(info.vmem_capacity_bytes)}")
  if limit is not None and limit > info.vmem_capacity_bytes:
    out.append(f"VMEM: vmem_limit_bytes={limit} is more than the "
               f"{_fmt(info.vmem_capacity_bytes)} of VMEM a TPU {chip} core has")
  smem = _total(use.smem)
  if smem > info.smem_capacity_bytes:
    out.append(f"SMEM: the kernel needs about {_fmt(smem)}, more than the "
               f"{_fmt(info.smem_capacity_bytes)} of SMEM a TPU {chip} core has "
               f"({_largest(use.smem)})")
  return out
