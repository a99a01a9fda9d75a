"""pltpu.emit_pipeline in its primitive form (``jax_use_emit_pipeline_primitive``).

``emit_pipeline_p`` carries the pipeline's body as a jaxpr traced once over
generic block refs.  As Mosaic does, the rule rebuilds the pipeline around it
(``_emit_pipeline(..., _explicit_indices=True)``: DMAs, semaphores and loops,
which have rules of their own) and lowers that into the kernel; the rebuilt
pipeline calls its body through ``pipeline_body_p``, whose rule lowers the
body jaxpr on the current block refs with the pipeline's indices as the
program ids.
"""
from __future__ import annotations

from jax._src import api_util
from jax._src import core as jax_core
from jax._src import linear_util as lu
from jax._src import util as jax_util
from jax._src.interpreters import partial_eval as pe
from jax._src.pallas import core as pallas_core
from jax._src.pallas.mosaic import pipeline as tpu_pipeline
from jax._src.tree_util import tracing_registry

from pallas_cpu.lowering import jaxpr as jaxpr_lowering
from pallas_cpu.lowering import views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.memory import view_of


def _user_dims(grid_mapping, dims):
  return [d for i, d in enumerate(dims) if i not in grid_mapping.vmapped_dims]


def _rebuilt_pipeline(grid_mapping, *, body_jaxpr, body_consts_len, args_tree,
                      num_extra_dynamic, static_grid_offsets, params):
  """The pipeline as a function of emit_pipeline_p's operands: the index
  maps get their constants back, dynamic grid sizes and offsets their
  values, and TransformedRef operands their transforms."""
  gm = grid_mapping
  consts_per_map = [len(bm.index_map_jaxpr.consts) for bm in gm.block_mappings]
  n_dynamic = gm.num_dynamic_grid_bounds + num_extra_dynamic

  def run(*operands):
    map_consts, dynamic, body_consts, flat_refs = jax_util.split_list(
        operands, [sum(consts_per_map), n_dynamic, body_consts_len])
    specs = [
        bm.replace(index_map_jaxpr=jax_core.ClosedJaxpr(
            bm.index_map_jaxpr.jaxpr, consts)).to_block_spec()
        for bm, consts in zip(gm.block_mappings,
                              jax_util.split_list(map_consts, consts_per_map))]
    dynamic = iter(dynamic)
    grid = tuple(next(dynamic) if pallas_core.is_dynamic_dim(d) else d
                 for d in gm.grid)
    offsets = tuple(next(dynamic) if pallas_core.is_dynamic_dim(d) else d
                    for d in static_grid_offsets)
    refs, _ = tracing_registry.flatten(args_tree.unflatten(flat_refs),
                                       tpu_pipeline.is_transformed_ref)

    def body(indices, *block_refs):
      operands, tree = tracing_registry.flatten(
          (tuple(_user_dims(gm, indices)), tuple(body_consts), block_refs))
      tpu_pipeline.pipeline_body_p.bind(*operands, jaxpr=body_jaxpr,
                                        in_tree=tree, num_inputs=gm.num_inputs)

    tpu_pipeline._emit_pipeline(  # noqa: SLF001 - what Mosaic's rule calls
        body, grid=grid, in_specs=specs[:gm.num_inputs],
        out_specs=specs[gm.num_inputs:], _grid_offsets=offsets,
        _explicit_indices=True, **params)(*refs)
    return []

  return run


@register(tpu_pipeline.emit_pipeline_p, barrier=True)
def _emit_pipeline(ctx, *operands, grid_mapping, body_jaxpr, body_consts_len,
                   args_tree, _num_extra_dynamic, _static_grid_offsets,
                   **params):
  kctx = ctx.kernel
  gm = grid_mapping
  run = _rebuilt_pipeline(gm, body_jaxpr=body_jaxpr,
                          body_consts_len=body_consts_len, args_tree=args_tree,
                          num_extra_dynamic=_num_extra_dynamic,
                          static_grid_offsets=_static_grid_offsets,
                          params=params)
  # Trace as Mosaic does: the kernel's named axes stay in scope for the body,
  # and num_programs sees the pipeline's grid.
  named_axes = [(n, s) for n, s in zip(kctx.grid_names, kctx.program_sizes)
                if n is not None and isinstance(s, int)]
  with (jax_core.extend_axis_env_nd(named_axes),
        pallas_core.tracing_grid_env(tuple(_user_dims(gm, gm.grid)), ())):
    jaxpr, _, consts = pe.trace_to_jaxpr_dynamic(
        lu.wrap_init(run, debug_info=api_util.debug_info(
            "emit_pipeline", run, ctx.avals_in, {})), ctx.avals_in)
  if consts:
    raise NotImplementedError(
        "pallas_cpu: emit_pipeline whose rebuilt pipeline captures constants")

  # The pipeline's sizes for num_programs in its body; its indices are known
  # only there (pipeline_body_p), the kernel's own axes follow (as in Mosaic,
  # so that axis_index of a named kernel axis still answers).
  n_index_consts = sum(len(bm.index_map_jaxpr.consts)
                       for bm in gm.block_mappings)
  dynamic = iter(operands[n_index_consts:])
  sizes = _user_dims(gm, [
      views.as_index(scalar_of(kctx, next(dynamic)).value)
      if pallas_core.is_dynamic_dim(d) else d for d in gm.grid])
  n = len(sizes)
  with kctx.scoped_grid(ids=[None] * n + kctx.program_ids,
                        sizes=sizes + kctx.program_sizes,
                        names=(None,) * n + kctx.grid_names):
    jaxpr_lowering.check_supported(jaxpr, kctx.name)
    jaxpr_lowering.lower_jaxpr(kctx, jaxpr, operands, parent=ctx.source)
  return []


@register(tpu_pipeline.pipeline_body_p, barrier=True)
def _pipeline_body(ctx, *operands, jaxpr, in_tree, **_):
  kctx = ctx.kernel
  indices, consts, refs = in_tree.unflatten(operands)
  # The body was traced on plain refs: a block ref the pipeline hands it as a
  # TransformedRef (a buffer slot, a slice) becomes that view.
  refs = [view_of(ctx, r)[0] for r in refs]
  ids = [views.as_index(scalar_of(kctx, i).value) for i in indices]
  with kctx.scoped_grid(ids=ids + kctx.program_ids[len(ids):],
                        sizes=kctx.program_sizes, names=kctx.grid_names):
    return jaxpr_lowering.lower_jaxpr(kctx, jaxpr, refs, consts=consts,
                                      parent=ctx.source)
