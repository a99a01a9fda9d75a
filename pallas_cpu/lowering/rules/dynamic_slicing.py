"""``lax.dynamic_slice`` / ``dynamic_update_slice`` of values (beyond
Mosaic's table, which slices refs but not values at traced offsets):
``x[:, pl.ds(off, 128)]`` on a loaded array, ``jnp`` indexing of a value by
a traced integer.

XLA's semantics, as interpret mode runs them: each start index is clamped
into ``[0, dim - size]``, so the window always lies inside the operand
(jax has already wrapped negative indices before binding the primitive).
The slice is a lazy view of the operand in memory (no copy beyond
materializing a lazy operand); the update copies the operand into a fresh
buffer and writes the update through a window of it."""
from __future__ import annotations

import numpy as np
from jax._src.lax import slicing
from mlir import ir
from mlir.dialects import arith

from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.registry import register


def _clamped_starts(ctx, starts, index_avals, shape, sizes) -> list:
  """The start indices as ``index`` values clamped into [0, dim - size];
  constants stay Python ints (a static subview offset)."""
  out = []
  for s, aval, dim, size in zip(starts, index_avals, shape, sizes):
    hi = max(int(dim) - int(size), 0)
    v = scalar_of(ctx.kernel, s).value
    unsigned = types.is_unsigned(np.dtype(aval.dtype))
    known = views.constant_int(v)
    if known is not None:
      if unsigned and known < 0:
        known += 2 ** types.bitwidth(np.dtype(aval.dtype))
      out.append(min(max(known, 0), hi))
      continue
    cast = arith.index_castui if unsigned else arith.index_cast
    i = cast(ir.IndexType.get(), v)
    out.append(arith.maxsi(arith.minsi(i, views.as_index(hi)),
                           views.as_index(0)))
  return out


@register(slicing.dynamic_slice_p)
def _dynamic_slice(ctx, x, *starts, slice_sizes):
  rank = len(ctx.avals_in[0].shape)
  if len(starts) != rank:
    raise NotImplementedError("dynamic_slice with dynamic slice sizes")
  if isinstance(x, values.Scalar):
    return x
  sizes = [int(s) for s in slice_sizes]
  offsets = _clamped_starts(ctx, starts, ctx.avals_in[1:], x.shape, sizes)
  src = views.with_layout(ctx.kernel.materialize(x))
  return values.load_array(views.subview(src, offsets, sizes), x.dtype)


@register(slicing.dynamic_update_slice_p)
def _dynamic_update_slice(ctx, x, update, *starts):
  if not ctx.avals_in[0].shape:
    return update
  kctx = ctx.kernel
  dtype = np.dtype(ctx.avals_out[0].dtype)
  shape = tuple(ctx.avals_in[0].shape)
  sizes = [int(s) for s in ctx.avals_in[1].shape]
  offsets = _clamped_starts(ctx, starts, ctx.avals_in[2:], shape, sizes)
  out = kctx.alloc(shape, dtype)
  kctx.store(x, out)
  kctx.store(update, views.subview(views.with_layout(out), offsets, sizes))
  return values.load_array(out, dtype)
