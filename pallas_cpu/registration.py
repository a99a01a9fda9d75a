"""The one place that touches JAX internals: a CPU-platform lowering rule for
``pallas_call_p`` and the FFI target.

The rule compiles a kernel when its ``interpret`` parameter is the
``CpuBackend`` marker (``pallas_cpu.pallas_call(backend="cpu")`` or
``force_cpu_backend()``) or when PALLAS_CPU_FORCE=1; every other pallas_call
goes to JAX's own rule, unchanged.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jax._src.interpreters import mlir
from jax._src.pallas import pallas_call as pallas_call_mod

from pallas_cpu import (abi, background, compiler, knobs, mlir_context,
                        runtime_lib)
from pallas_cpu.lowering import coalesce, cost
from pallas_cpu.lowering import grid as grid_lowering
from pallas_cpu.lowering import kernel as kernel_lowering
from pallas_cpu import params as params_lib
from pallas_cpu import tpu_checks
from pallas_cpu.params import CpuBackend


def kernel_spec(params, in_avals, out_avals, backend: CpuBackend,
                device_mesh: tuple = ()) -> kernel_lowering.KernelSpec:
  jaxpr = params["jaxpr"]
  cores = mesh_cores(params.get("mesh"))  # a mesh we cannot run raises here
  name = params.get("name") or jaxpr.debug_info.func_name or "kernel"
  cpu = backend.params
  if knobs.read().detect_races and not cpu.detect_races:
    cpu = dataclasses.replace(cpu, detect_races=True)
  opt = cpu.opt_level if cpu.opt_level is not None else knobs.read().opt_level
  tier_up = None
  if opt is None:  # nobody chose: by the kernel's work (lowering/cost.py)
    opt = cost.default_opt_level(jaxpr, tuple(params["grid_mapping"].grid))
    tier_up = cost.tier_up_after_us(opt, knobs.read().tier_up_ms)
  gm = params["grid_mapping"]
  # A position-wise kernel runs on blocks that span the grid dimension
  # walking its last dimension (lowering/coalesce.py): fewer steps, rows
  # read as contiguous runs.  Not where the kernel's steps are observed
  # (race detection, a permuted grid order, a mesh).
  wide = (coalesce.plan(jaxpr, gm, params["input_output_aliases"])
          if params.get("mesh") is None and not cpu.detect_races
          and cpu.grid_order != "random" and knobs.read().coalesce else None)
  if wide is not None:
    jaxpr, gm = wide.jaxpr, wide.grid_mapping
  aliases = params["input_output_aliases"]
  parallel_dim = (0 if params.get("mesh") is not None
                  else None if grid_lowering.needs_one_thread(
                      jaxpr, gm, aliases)
                  else _parallel_dim(gm, cpu, params.get("compiler_params")))
  # Without a parallel dimension, a row-local body's blocks go to the
  # threads in row bands (race verdicts stay those of the unsplit kernel);
  # failing that, steps that share nothing go to the threads all the same,
  # split along their first dimension of several steps (the results are
  # grid order's).  With one, a body with whole-block temporaries runs each
  # step's blocks in row bands that fit the cache.
  row_split = None
  if params.get("mesh") is None and not cpu.detect_races:
    if parallel_dim is not None:
      row_split = grid_lowering.cache_band_plan(jaxpr, gm, aliases)
    else:
      row_split = grid_lowering.row_split_plan(jaxpr, gm, aliases)
      if (row_split is None and grid_lowering.worth_threads(gm)
          and grid_lowering.independent_steps(jaxpr, gm, aliases)):
        parallel_dim = next((d for d, n in enumerate(gm.grid)
                             if isinstance(n, int) and n > 1), None)
  return kernel_lowering.KernelSpec(
      name=mlir.sanitize_name(name), jaxpr=jaxpr,
      grid_mapping=gm, in_avals=tuple(in_avals),
      out_avals=tuple(out_avals),
      input_output_aliases=tuple(params["input_output_aliases"]),
      params=cpu, opt_level=opt, tier_up_after_us=tier_up,
      parallel_dim=parallel_dim,
      row_split=row_split,
      permuted_dims=_permuted_dims(gm, cpu, params),
      coalesced=None if wide is None else (wide.dim, wide.steps),
      device_mesh=device_mesh, mesh_cores=cores)


def device_mesh(ctx: mlir.LoweringRuleContext) -> tuple:
  """The shard_map mesh the kernel runs in, as ((axis name, size), ...):
  () outside shard_map.  Device ids (MESH type)
  are the row-major index of a device's coordinates over all its axes, as
  in Mosaic."""
  from jax._src import sharding_impls
  axis_context = ctx.module_context.axis_context
  if not isinstance(axis_context, sharding_impls.SPMDAxisContext):
    return ()
  mesh = axis_context.mesh
  missing = [a for a in mesh.axis_names if a not in axis_context.manual_axes]
  if missing:
    raise NotImplementedError(
        f"pallas_cpu: a kernel inside a shard_map that leaves mesh axes "
        f"{missing} automatic (only kernels in a shard_map over every axis of "
        "its mesh are supported)")
  return tuple((name, int(mesh.shape[name])) for name in mesh.axis_names)


def _device_id_operand(ctx: mlir.LoweringRuleContext, names) -> ir.Value:
  """The logical id of the device running this instance (XLA computes it
  from the shard_map coordinates): the custom call's last operand."""
  import jax
  from jax._src import core as jax_core
  sub = ctx.replace(avals_in=[],
                    avals_out=[jax_core.ShapedArray((), np.int32)])
  (out,) = mlir.lower_fun(
      lambda: jax.lax.axis_index(tuple(names)).astype(np.int32),
      multiple_results=False)(sub)
  return out


def _permuted_dims(gm, cpu, params) -> tuple:
  """grid_order="random": a seeded permutation of each parallel dimension
  (static size > 1; a mesh's cores keep their fixed division, as in TPU
  interpret mode)."""
  if cpu.grid_order != "random" or params.get("mesh") is not None:
    return ()
  rng = np.random.default_rng(cpu.seed)
  grid = tuple(gm.grid)
  return tuple(
      (d, tuple(int(i) for i in rng.permutation(grid[d])))
      for d in sorted(_parallel_dims(gm, cpu, params.get("compiler_params")))
      if isinstance(grid[d], int) and grid[d] > 1)


def mesh_cores(mesh) -> int:
  """The cores of a TensorCore mesh (0 without a mesh): the kernel's grid
  is the mesh (``grid=(("core", n),)``, dimension 0) and each core runs on
  its own runtime thread, with its own scratch and semaphores."""
  if mesh is None:
    return 0
  from jax._src.pallas.mosaic import core as tpu_core
  if not isinstance(mesh, tpu_core.TensorCoreMesh):
    raise NotImplementedError(
        f"pallas_cpu: kernels over a {type(mesh).__name__} are not supported "
        "(TensorCore meshes are: pltpu.create_tensorcore_mesh)")
  if len(mesh.shape) != 1:
    raise NotImplementedError(
        f"pallas_cpu: a TensorCore mesh of shape {dict(mesh.shape)} (one core "
        "axis is supported)")
  (n,) = mesh.shape.values()
  return int(n)


def _parallel_dim(gm, cpu, compiler_params) -> int | None:
  """The grid dimension split across threads: the first one that is
  vmapped or declared parallel (pallas_cpu's or pltpu's
  dimension_semantics) with more than one step."""
  grid = tuple(gm.grid)
  for d in range(len(grid)):
    if (d in _parallel_dims(gm, cpu, compiler_params)
        and isinstance(grid[d], int) and grid[d] > 1):
      return d
  return None


def _parallel_dims(gm, cpu, compiler_params) -> set[int]:
  """The vmapped grid dimensions and those declared parallel."""
  semantics = cpu.dimension_semantics
  if semantics is None:
    semantics = getattr(compiler_params, "dimension_semantics", None)
  semantics = [str(getattr(s, "value", s)) for s in (semantics or ())]
  grid = tuple(gm.grid)
  own = [d for d in range(len(grid)) if d not in gm.vmapped_dims]
  parallel = set(gm.vmapped_dims)
  for d, s in zip(own, semantics):
    if s in ("parallel", "core_parallel", "subcore_parallel"):
      parallel.add(d)
  return parallel


def kernel_ir(spec: kernel_lowering.KernelSpec
              ) -> tuple[str, abi.RuntimeInfo]:
  """The 'kernel' stage text -- what the HLO carries (no debug locations, so
  the fingerprint does not depend on file paths) -- and the kernel's runtime
  info (semaphore names, debug prints, check messages)."""
  with mlir_context.kernel_context():
    module = kernel_lowering.lower_kernel(spec)
    module.operation.verify()
    return (module.operation.get_asm(enable_debug_info=False),
            kernel_lowering.runtime_info(module))


def _backend_for(interpret) -> CpuBackend | None:
  if isinstance(interpret, CpuBackend):
    return interpret
  if knobs.read().force:
    # Code written for TPU interpret mode keeps its options (race
    # detection, DMA mode...) when forced onto the compiled backend.
    if hasattr(interpret, "detect_races"):
      return CpuBackend(params_lib.from_interpret_params(interpret))
    return CpuBackend()
  return None


def _lowering_rule(ctx: mlir.LoweringRuleContext, *in_nodes, interpret,
                   **params):
  backend = _backend_for(interpret)
  if backend is None:
    return _default_rule()(ctx, *in_nodes, interpret=interpret, **params)
  mesh_axes = device_mesh(ctx)
  spec = kernel_spec(params, ctx.avals_in, ctx.avals_out, backend, mesh_axes)
  text, info = kernel_ir(spec)
  checks = tpu_checks.check_kernel_later(
      params, ctx.avals_in, spec.params, kernel_ir=text, mesh_axes=mesh_axes)
  if params.get("debug"):
    print(f"pallas_cpu kernel '{spec.name}' (stage 'kernel'):\n{text}")
  runtime_lib.ensure_registered()
  kernel_id = compile_in_background(text, first=checks)
  # HLO operand indices count the dynamic grid bounds that come first.
  n_dyn = spec.grid_mapping.num_dynamic_grid_bounds
  call = mlir_ffi_lowering(tuple((n_dyn + i, o)
                                 for i, o in spec.input_output_aliases))
  num_devices = int(np.prod([n for _, n in mesh_axes])) if mesh_axes else 0
  if num_devices > 1:
    from jax._src import core as jax_core
    in_nodes = (*in_nodes, _device_id_operand(ctx, [a for a, _ in mesh_axes]))
    ctx = ctx.replace(avals_in=[*ctx.avals_in,
                                jax_core.ShapedArray((), np.int32)])
  return call(ctx, *in_nodes, kernel_id=kernel_id, kernel_ir=text,
              kernel_name=spec.name, **info.ffi_attributes(),
              # (0 for a dynamic dimension: messages then count steps)
              grid=np.asarray([g if isinstance(g, int) else 0
                               for g in spec.grid_mapping.grid], np.int64),
              parallel_extent=np.int64(
                  spec.row_split.bands if spec.row_split is not None
                  and spec.row_split.threaded
                  else 0 if spec.parallel_dim is None
                  else spec.grid_mapping.grid[spec.parallel_dim]),
              num_threads=np.int64(spec.params.num_threads
                                   or knobs.read().num_threads),
              mesh_cores=np.int64(spec.mesh_cores),
              num_devices=np.int64(num_devices),
              collective=np.int64(info.collective),
              shared_buffers=np.asarray(info.shared_buffers, np.int64),
              detect_races=np.int64(abi.RACE_MODES[
                  spec.params.on_race if spec.params.detect_races else None]),
              race_cores=np.int64(spec.params.num_cores),
              # (the runtime times the calls of a kernel that has one)
              tier_up_after_us=np.int64(-1 if spec.tier_up_after_us is None
                                        else spec.tier_up_after_us),
              device_timeout_ms=np.int64(
                  round(spec.params.device_timeout_s * 1000)))




def compile_in_background(text: str, first=None) -> str:
  """Starts building the kernel ``text`` and returns its id at once.

  The build runs on a background thread while XLA compiles the program
  around the kernel (for a small kernel the two take about as long).  The
  first execution finds the kernel registered, or asks the compile hook
  (runtime_lib), which waits for this build through the compiler's cache
  lock.  A build that fails here is not reported here: the hook builds the
  kernel again and the error reaches the caller with the execution.
  ``first`` runs before the build (the TPU checks that only warn)."""
  knob_values = knobs.read()  # as the caller set them, not as later

  kernel_id = compiler.kernel_id(text, knob_values)

  def build():
    if first is not None:  # the TPU checks, when they only warn
      try:
        first()
      except Exception:  # noqa: BLE001 - a failed check never fails a call
        pass
    try:
      compiled = compiler.compile_kernel(text, knob_values)
    except Exception:  # noqa: BLE001 - re-raised by the hook's own build
      return
    runtime_lib.register_kernel(kernel_id, compiled.entry_address)

  background.submit(build)
  return kernel_id


@functools.cache
def mlir_ffi_lowering(aliases: tuple):
  import jax
  return jax.ffi.ffi_lowering(abi.FFI_TARGET,
                              operand_output_aliases=dict(aliases))


_default = None


def _default_rule():
  return _default


_default_mpmd = None


def _mpmd_lowering_rule(ctx: mlir.LoweringRuleContext, *in_nodes, interpret,
                        **params):
  """``pl.core_map`` / ``pl.kernel`` over a mesh arrive as ``mpmd_map``.
  JAX's CPU fallback turns one into a pallas_call whose grid is the mesh
  (``grid=(("core", n),)``) and lowers it with interpret mode; for the
  compiled backend the same pallas_call comes here instead, with its mesh
  (each core of it then runs on its own runtime thread)."""
  backend = _backend_for(interpret)
  if backend is None:
    return _default_mpmd(ctx, *in_nodes, interpret=interpret, **params)
  return _lowering_rule(ctx, *in_nodes, interpret=backend,
                        **mpmd_as_pallas_call(params, ctx.avals_in))


def mpmd_as_pallas_call(params: dict, avals_in) -> dict:
  """The pallas_call parameters of an ``mpmd_map`` over one TensorCore
  mesh, as JAX's CPU fallback lowering builds them: the mesh is the grid,
  every operand whole in its memory space (the mesh's default: ANY)."""
  from jax._src import core as jax_core
  from jax._src import state
  from jax._src import tree_util
  from jax._src.pallas import core as pallas_core
  (jaxpr,), (mesh,) = params["jaxprs"], params["meshes"]
  if len(params["jaxprs"]) != 1 or params.get("external_meshes"):
    raise NotImplementedError(
        "pallas_cpu: mpmd_map with several meshes or external meshes")
  out_avals = params["out_avals"]
  compiler_params = params["compiler_params"]
  if compiler_params is not None and hasattr(mesh, "dimension_semantics"):
    compiler_params = compiler_params.replace(
        dimension_semantics=mesh.dimension_semantics)
  n_in, n_out = len(avals_in), len(out_avals)
  scratch = [v.aval for v in jaxpr.invars[n_in + n_out:]]

  def spec(aval):
    own = (isinstance(aval, jax_core.ShapedArray)
           and not isinstance(aval.memory_space, jax_core.MemorySpace))
    return pallas_core.BlockSpec(
        memory_space=aval.memory_space if own else mesh.default_memory_space)

  grid_spec = pallas_core.GridSpec(
      grid=tuple(mesh.shape.items()),
      in_specs=tuple(spec(a) for a in avals_in),
      out_specs=tuple(spec(a) for a in out_avals),
      scratch_shapes=tuple(pallas_core.MemoryRef(a.inner_aval, a.memory_space)
                           for a in scratch))
  inner = lambda vs: [v.aval.inner_aval if isinstance(v.aval, state.AbstractRef)
                      else v.aval for v in vs]
  _, grid_mapping = pallas_core.get_grid_mapping(
      grid_spec, inner(jaxpr.invars[:n_in]),
      tree_util.tree_structure(tuple(avals_in)),
      [f"arg{i}" for i in range(n_in)],
      inner(jaxpr.invars[n_in:n_in + n_out]),
      tree_util.tree_structure(out_avals), [f"out{i}" for i in range(n_out)],
      debug=params["debug"])
  return dict(
      jaxpr=jaxpr, grid_mapping=grid_mapping, mesh=mesh,
      input_output_aliases=tuple(params["input_output_aliases"].items()),
      debug=params["debug"], compiler_params=compiler_params,
      cost_estimate=params["cost_estimate"], out_avals=out_avals,
      metadata=params["metadata"], name=params["name"])


@functools.cache
def install() -> None:
  """Registers the rules and the FFI target once per process."""
  global _default, _default_mpmd
  from jax._src.pallas import mpmd
  _default = mlir._lowerings[pallas_call_mod.pallas_call_p].rule
  mlir.register_lowering(pallas_call_mod.pallas_call_p, _lowering_rule,
                         platform="cpu")
  _default_mpmd = mlir._lowerings[mpmd.mpmd_map_p].rule
  mlir.register_lowering(mpmd.mpmd_map_p, _mpmd_lowering_rule,
                         platform="cpu")
  runtime_lib.ensure_registered()
  _register_cpu_tpu_info()


def _register_cpu_tpu_info() -> None:
  """Pallas TPU helpers (emit_pipeline's DMA tiling) ask for the TPU
  generation while tracing; on the CPU device kind they would fail.  The
  registry is the extension point JAX offers for unknown device kinds: the
  CPU answers as a single-core TPU v5e."""
  from jax._src.pallas.mosaic import tpu_info
  tpu_info.registry.setdefault(
      "cpu", lambda: tpu_info._get_tpu_info_impl(tpu_info.ChipVersion.TPU_V5E,
                                                  1))

