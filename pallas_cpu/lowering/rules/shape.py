"""Shape primitives: broadcasts, reshapes, iota, gathers and scatters.

Broadcasts and unit-dimension reshapes re-index the lazy expression (no
data moves); a true reshape copies into a contiguous temporary and
reinterprets it.  A general gather is a lazy node loading the materialized
operand at the gathered point; a scatter copies the operand and loops over
the updates (XLA's semantics for every mode, as interpret mode runs them)."""
from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np
from jax._src import core as jax_core
from jax._src.lax import lax
from jax._src.pallas import einshape
from jax._src.lax import slicing
from mlir import ir
from mlir.dialects import arith, memref, scf

from pallas_cpu.lowering import jaxpr as jaxpr_lowering
from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.jaxpr import lower_fun
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.common import loop_nest
from pallas_cpu.lowering.scalars import const


def _reindexed(v: values.Array, dim_map, shape) -> values.Array:
  return values.Array(values.reindex(v.node, dim_map, shape), tuple(shape),
                      v.dtype)


@register(lax.broadcast_in_dim_p)
def _broadcast_in_dim(ctx, x, *dyn, shape, broadcast_dimensions, **_):
  if dyn:
    raise NotImplementedError("broadcast_in_dim with dynamic shapes")
  shape = tuple(shape)
  if isinstance(x, values.Scalar):
    return values.Array(values.Splat(x.value), shape, x.dtype) if shape else x
  if not shape:
    return x
  dim_map = [bd if x.shape[i] == shape[bd] else None
             for i, bd in enumerate(broadcast_dimensions)]
  return _reindexed(x, dim_map, shape)


def unit_reshape_map(src, dst):
  """If ``src -> dst`` only inserts or removes size-1 dimensions, the
  old-dim -> new-dim map (None for removed unit dims); else None."""
  src_big = [i for i, d in enumerate(src) if d != 1]
  dst_big = [i for i, d in enumerate(dst) if d != 1]
  if [src[i] for i in src_big] != [dst[i] for i in dst_big]:
    return None
  dim_map = [None] * len(src)
  for i, j in zip(src_big, dst_big):
    dim_map[i] = j
  return dim_map


def reshape(ctx, x: values.Value, shape) -> values.Value:
  shape = tuple(shape)
  kctx = ctx.kernel
  if not shape:
    return scalar_of(kctx, x)
  if isinstance(x, values.Scalar):
    return values.Array(values.Splat(x.value), shape, x.dtype)
  dim_map = unit_reshape_map(x.shape, shape)
  if dim_map is not None:
    return _reindexed(x, dim_map, shape)
  buf = kctx.materialize(x)
  t = ir.MemRefType(buf.type)
  if t.get_strides_and_offset() != (types.row_major_strides(x.shape), 0):
    # A window of a temporary (a slice or split of it) is returned as is;
    # the cast below needs contiguous memory from offset 0.
    buf = kctx.materialize(x, reuse=False)
    t = ir.MemRefType(buf.type)
  out_t = ir.MemRefType.get(list(shape), t.element_type,
                            memory_space=t.memory_space)
  new = memref.ReinterpretCastOp(out_t, buf, [], [], [], [0], list(shape),
                                 types.row_major_strides(shape)).result
  return values.load_array(new, x.dtype)


@register(lax.reshape_p)
def _reshape(ctx, x, *dyn, new_sizes, dimensions, **_):
  if dyn:
    raise NotImplementedError("reshape with dynamic shapes")
  if dimensions is not None and tuple(dimensions) != tuple(range(len(dimensions))):
    raise NotImplementedError("reshape with a dimension permutation")
  return reshape(ctx, x, new_sizes)


@register(lax.squeeze_p)
def _squeeze(ctx, x, *, dimensions):
  return reshape(ctx, x, ctx.avals_out[0].shape)


@register(lax.iota_p)
def _iota(ctx, *dyn, dtype, shape, dimension, **_):
  if dyn:
    raise NotImplementedError("iota with dynamic shapes")
  shape = tuple(shape)
  if not shape:
    return ctx.constant(0, dtype)
  return values.Array(values.Iota(dimension, np.dtype(dtype)), shape,
                      np.dtype(dtype))


@register(slicing.slice_p)
def _slice(ctx, x, *, start_indices, limit_indices, strides):
  if isinstance(x, values.Scalar):
    return x
  strides = tuple(strides) if strides is not None else (1,) * len(x.shape)
  sizes = [max(0, -(-(hi - lo) // s)) for lo, hi, s in
           zip(start_indices, limit_indices, strides)]
  buf = views.with_layout(ctx.kernel.materialize(x))
  view = views.subview(buf, list(start_indices), sizes, list(strides))
  out = values.load_array(view, x.dtype)
  return out if sizes else scalar_of(ctx.kernel, out)


@register(einshape.einshape_lo_p)
def _einshape_lo(ctx, x, *, equation, sizes, assert_is_tile_preserving):
  """pltpu.einshape: its reshapes and transposes, lowered from JAX's own
  reference implementation."""
  del assert_is_tile_preserving  # a TPU layout property
  return lower_fun(ctx, functools.partial(einshape._einshape, equation,
                                          **dict(sizes)), x)


# -- general gathers and scatters (XLA semantics, as interpret mode runs them) --
def _index_of(v: ir.Value, unsigned: bool) -> ir.Value:
  """An integer register value as an ``index`` (zero-extended if unsigned,
  as jax widens unsigned indices before its bounds checks)."""
  if isinstance(v.type, ir.IndexType):
    return v
  if unsigned:
    return arith.index_castui(ir.IndexType.get(), v)
  return arith.index_cast(ir.IndexType.get(), v)


def _load_start_indices(idx_buf: ir.Value, batch: list[ir.Value], n: int,
                        unsigned: bool) -> list[ir.Value]:
  """The index vector ``indices[*batch, :n]`` as index values."""
  return [_index_of(memref.load(idx_buf, [*batch, views.as_index(k)]),
                    unsigned) for k in range(n)]


def _in_range(i: ir.Value, hi: int) -> ir.Value:
  """0 <= i <= hi (signed; ``hi`` < 0: never)."""
  return arith.andi(
      arith.cmpi(arith.CmpIPredicate.sge, i, views.as_index(0)),
      arith.cmpi(arith.CmpIPredicate.sle, i, views.as_index(hi)))


def _clamped(i: ir.Value, hi: int) -> ir.Value:
  """i clamped into [0, max(hi, 0)] (XLA's clamp of gather starts)."""
  return arith.maxsi(arith.minsi(i, views.as_index(max(hi, 0))),
                     views.as_index(0))


def gather_fill_value(fill_value, dtype):
  """jax's default fill of an out-of-bounds ``mode="fill"`` gather."""
  if fill_value is not None:
    return fill_value
  if types.is_float(dtype):
    return float("nan")
  if types.is_bool(dtype):
    return True
  if types.is_unsigned(dtype):
    return int(types.iinfo(dtype).max)
  return int(types.iinfo(dtype).min)


def gather(ctx, x, indices, *, dimension_numbers, slice_sizes, mode,
           fill_value) -> values.Value:
  """Any ``lax.gather`` (``x[idx]``, ``jnp.take``, ``jnp.diagonal``...),
  as a lazy elementwise node loading the materialized operand at the
  gathered position, so it fuses with its consumer.

  XLA's semantics, as interpret mode runs them: ``clip`` and
  ``promise_in_bounds`` clamp each start index into [0, dim - slice size];
  ``fill`` yields the fill value for a slice whose start is outside that
  range (indices widened to 64 bits first, as ``_gather_fill`` does)."""
  kctx = ctx.kernel
  in_aval, idx_aval = ctx.avals_in
  out_aval = ctx.avals_out[0]
  dn = dimension_numbers
  out_shape = tuple(out_aval.shape)
  op_shape = tuple(in_aval.shape)
  dtype = np.dtype(out_aval.dtype)
  unsigned = types.is_unsigned(idx_aval.dtype)
  mode = slicing.GatherScatterMode.from_any(mode)
  fill = mode == slicing.GatherScatterMode.FILL_OR_DROP
  if mode not in (slicing.GatherScatterMode.CLIP,
                  slicing.GatherScatterMode.FILL_OR_DROP,
                  slicing.GatherScatterMode.PROMISE_IN_BOUNDS,
                  slicing.GatherScatterMode.ONE_HOT):
    raise NotImplementedError(f"pallas_cpu: gather with mode {mode}")
  if mode == slicing.GatherScatterMode.ONE_HOT:
    raise NotImplementedError("pallas_cpu: gather with mode one_hot")
  if any(d == 0 for d in out_shape):
    raise NotImplementedError("pallas_cpu: gather with an empty result")
  n_index = int(idx_aval.shape[-1])
  batch_dims = [d for d in range(len(out_shape)) if d not in dn.offset_dims]
  window_operand_dims = [d for d in range(len(op_shape))
                         if d not in dn.collapsed_slice_dims
                         and d not in dn.operand_batching_dims]
  buf = kctx.materialize(x)
  idx_buf = kctx.materialize(indices)
  fill_v = gather_fill_value(fill_value, dtype) if fill else None

  def element(pos: list[ir.Value]) -> ir.Value:
    batch = [pos[d] for d in batch_dims]
    starts = _load_start_indices(idx_buf, batch, n_index, unsigned)
    full = [views.as_index(0)] * len(op_shape)
    ok = None
    for k, d in enumerate(dn.start_index_map):
      hi = op_shape[d] - int(slice_sizes[d])
      if fill:
        inb = _in_range(starts[k], hi)
        ok = inb if ok is None else arith.andi(ok, inb)
      full[d] = _clamped(starts[k], hi)
    for od, sd in zip(dn.operand_batching_dims,
                      dn.start_indices_batching_dims):
      full[od] = batch[sd]
    for od, out_d in zip(window_operand_dims, dn.offset_dims):
      full[od] = arith.addi(full[od], pos[out_d])
    v = values.from_memory(memref.load(buf, full), dtype)
    if ok is not None:
      v = arith.select(ok, v, const(v.type, fill_v))
    return v

  if not out_shape:
    return values.Scalar(element([]), dtype)
  pos = tuple(values.Iota(d, np.dtype(np.int64)) for d in range(len(out_shape)))
  return values.Array(
      values.Op(lambda a: element([_index_of(v, False) for v in a]), pos),
      out_shape, dtype)


_SCATTER_COMBINE = {
    slicing.scatter_p: lambda x, y: y,
    slicing.scatter_add_p: lax.add,
    slicing.scatter_sub_p: lax.sub,
    slicing.scatter_mul_p: lax.mul,
    slicing.scatter_min_p: lax.min,
    slicing.scatter_max_p: lax.max,
}


def _scatter(prim):
  @register(prim)
  def rule(ctx, operand, indices, updates, *, dimension_numbers,
           indices_are_sorted, unique_indices, mode, update_jaxpr,
           update_consts):
    """``x.at[idx].set/add/...`` (``lax.scatter*``): the operand copied into
    a fresh buffer, then one scalar loop over the updates in row-major
    order (a later duplicate index sees the earlier update, as on XLA:CPU).

    XLA's semantics, as interpret mode runs them: ``clip`` clamps each
    start index into [0, dim - window size]; ``fill``/``drop`` and
    ``promise_in_bounds`` skip an update window whose start is outside
    that range."""
    del indices_are_sorted, unique_indices
    kctx = ctx.kernel
    op_aval, idx_aval, upd_aval = ctx.avals_in
    dn = dimension_numbers
    op_shape = tuple(op_aval.shape)
    upd_shape = tuple(upd_aval.shape)
    dtype = np.dtype(op_aval.dtype)
    unsigned = types.is_unsigned(idx_aval.dtype)
    mode = slicing.GatherScatterMode.from_any(mode)
    if mode == slicing.GatherScatterMode.ONE_HOT:
      raise NotImplementedError(f"pallas_cpu: {prim.name} with mode one_hot")
    clip = mode == slicing.GatherScatterMode.CLIP
    if not op_shape:
      raise NotImplementedError(f"pallas_cpu: {prim.name} of a rank-0 operand")
    if update_jaxpr is not None:
      closed = jax_core.ClosedJaxpr(update_jaxpr, update_consts)
      combine = jax_core.jaxpr_as_fun(closed)
    else:
      combine = _SCATTER_COMBINE[prim]
    scalar = jax.ShapeDtypeStruct((), dtype)
    combine_jaxpr = jax.make_jaxpr(lambda a, b: combine(a, b))(scalar, scalar)
    out = kctx.alloc(op_shape, dtype)
    kctx.store(operand, out)
    if any(d == 0 for d in upd_shape):
      return values.load_array(out, dtype)
    idx_buf = kctx.materialize(indices)
    upd_buf = kctx.materialize(updates) if isinstance(
        updates, values.Array) else None
    n_index = int(idx_aval.shape[-1])
    scatter_dims = [d for d in range(len(upd_shape))
                    if d not in dn.update_window_dims]
    window_operand_dims = [d for d in range(len(op_shape))
                           if d not in dn.inserted_window_dims
                           and d not in dn.operand_batching_dims]
    window_size = [1] * len(op_shape)
    for od, ud in zip(window_operand_dims, dn.update_window_dims):
      window_size[od] = upd_shape[ud]

    def body(ivs):
      batch = [ivs[d] for d in scatter_dims]
      starts = _load_start_indices(idx_buf, batch, n_index, unsigned)
      full = [views.as_index(0)] * len(op_shape)
      ok = None
      for k, d in enumerate(dn.scatter_dims_to_operand_dims):
        hi = op_shape[d] - window_size[d]
        if clip:
          full[d] = _clamped(starts[k], hi)
        else:
          inb = _in_range(starts[k], hi)
          ok = inb if ok is None else arith.andi(ok, inb)
          full[d] = starts[k]
      for od, sd in zip(dn.operand_batching_dims,
                        dn.scatter_indices_batching_dims):
        full[od] = batch[sd]
      for od, ud in zip(window_operand_dims, dn.update_window_dims):
        full[od] = arith.addi(full[od], ivs[ud])
      guard = scf.IfOp(ok) if ok is not None else None
      with (ir.InsertionPoint(guard.then_block) if guard
            else contextlib.nullcontext()):
        old = values.Scalar(values.from_memory(memref.load(out, full), dtype),
                            dtype)
        if upd_buf is None:
          new = updates
        else:
          new = values.Scalar(values.from_memory(memref.load(upd_buf, ivs),
                                                 dtype), dtype)
        (res,) = jaxpr_lowering.lower_closed_jaxpr(ctx, combine_jaxpr,
                                                   [old, new])
        res = scalar_of(kctx, res)
        memref.store(values.to_memory(res.value, dtype), out, full)
        if guard:
          scf.YieldOp([])

    loop_nest(upd_shape, body)
    return values.load_array(out, dtype)
  return rule


for _prim in _SCATTER_COMBINE:
  _scatter(_prim)
