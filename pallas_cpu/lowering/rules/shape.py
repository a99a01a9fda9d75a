"""Shape primitives: broadcasts, reshapes and iota.

Broadcasts and unit-dimension reshapes re-index the lazy expression (no
data moves); a true reshape copies into a contiguous temporary and
reinterprets it."""
from __future__ import annotations

import functools

import numpy as np
from jax._src.lax import lax
from jax._src.pallas import einshape
from jax._src.lax import slicing
from mlir import ir
from mlir.dialects import memref

from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.jaxpr import lower_fun
from pallas_cpu.lowering.registry import register


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
