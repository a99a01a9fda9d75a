"""Layout primitives: data movement between positions of an array.

- ``concatenate`` and ``stack`` compute each (lazy) operand straight into
  its window of one output buffer.
- ``tile`` is a broadcast to (r0, n0, r1, n1, ...) and a reshape: lazy
  where only unit dimensions repeat, else one generic into a temporary.
  ``broadcast_to`` (the state primitive) is a lazy broadcast.
- ``split``/``unstack`` are windows (subviews) of the materialized operand.
- ``pad`` fills the output and writes the operand into a strided window
  (negative low/high crop the operand first).
- ``rev`` is one ``linalg.generic`` whose input map reverses dimensions.
- ``pltpu.roll`` is two ``linalg.copy`` between windows (the shift may be
  dynamic); the strided form is one generic that loads at a rotated index.
  rev, roll and a cropping pad read a ref operand where it lies (no copy).
- ``gather`` in Mosaic's take_along_axis form is a lazy elementwise node
  that ``memref.load``s the materialized operand at the clamped (or
  checked, for ``mode="fill"``) index, so it fuses with its consumer; every
  other gather goes to rules/shape.py's general one.
- ``masked_load``/``masked_swap`` (``pl.load``/``pl.store``/``pltpu.load``/
  ``pltpu.store``): without a mask they are plain ref reads/writes; with a
  mask, a store is one generic selecting between the new and the old value
  in place.  A masked window may cross the ref's end (rules/memory.py's
  ``Crossing``); index arrays go through interpret mode's discharge.
- ``multiple_of`` and ``stop_gradient`` are identities.
"""
from __future__ import annotations

import numpy as np
from jax._src import ad_util
from jax._src import core as jax_core
from jax._src import tree_util
from jax._src.lax import lax
from jax._src.lax import slicing
from jax._src.pallas import primitives as pallas_primitives
from jax._src.pallas.mosaic import primitives as tpu_primitives
from jax._src.state import primitives as state_primitives
from mlir import ir
from mlir.dialects import arith, linalg
from mlir.dialects import memref as memref_d

from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules import memory as memory_rules
from pallas_cpu.lowering.rules import shape as shape_rules
from pallas_cpu.lowering.rules.common import elementwise
from pallas_cpu.lowering.scalars import const

_PARALLEL = "#linalg.iterator_type<parallel>"


# -- helpers --------------------------------------------------------------------
def _window(buf: ir.Value, offsets, sizes, steps=None, drop=()) -> ir.Value:
  return views.subview(views.with_layout(buf), offsets, sizes, steps, drop)


def _read_now(ctx, x: values.Value) -> ir.Value:
  """``x`` in memory for a rule that reads it right away into a fresh
  buffer: a plain load of a ref (or temporary) is read where it lies, with
  no copy; anything else is materialized."""
  if isinstance(x, values.Array):
    node = x.node
    if (isinstance(node, values.Load)
        and node.index_map == values.identity_map(len(x.shape))
        and tuple(ir.MemRefType(node.memref.type).shape) == tuple(x.shape)):
      return node.memref
  return ctx.kernel.materialize(x)


def _array(x: values.Value, shape, dtype) -> values.Array:
  """``x`` as an Array of ``shape`` (a Scalar becomes a splat)."""
  if isinstance(x, values.Scalar):
    return values.Array(values.Splat(x.value), tuple(shape), np.dtype(dtype))
  return x


def broadcast(x: values.Value, shape) -> values.Value:
  """``x`` broadcast to ``shape`` with numpy's rules (leading dimensions
  are added, size-1 dimensions repeat), lazily."""
  shape = tuple(shape)
  if isinstance(x, values.Scalar):
    return values.Array(values.Splat(x.value), shape, x.dtype) if shape else x
  if tuple(x.shape) == shape:
    return x
  lead = len(shape) - len(x.shape)
  if lead < 0:
    raise ValueError(f"cannot broadcast {x.shape} to {shape}")
  dim_map = []
  for d, n in enumerate(x.shape):
    m = shape[lead + d]
    if n == m:
      dim_map.append(lead + d)
    elif n == 1:
      dim_map.append(None)
    else:
      raise ValueError(f"cannot broadcast {x.shape} to {shape}")
  return values.Array(values.reindex(x.node, dim_map, shape), shape, x.dtype)


def _affine_map(exprs, rank) -> ir.AffineMapAttr:
  return ir.AffineMapAttr.get(ir.AffineMap.get(rank, 0, list(exprs)))


def _generic(inputs, in_maps, output, rank, body) -> None:
  """``linalg.generic`` over ``output``'s iteration space; ``body(args)``
  gets the block arguments (inputs then the output's old value) and returns
  the value to yield, emitting at the body's insertion point."""
  ident = [ir.AffineDimExpr.get(d) for d in range(rank)]
  maps = [_affine_map(m, rank) for m in in_maps] + [_affine_map(ident, rank)]
  op = linalg.GenericOp(
      result_tensors=[], inputs=list(inputs), outputs=[output],
      indexing_maps=ir.ArrayAttr.get(maps),
      iterator_types=ir.ArrayAttr.get([ir.Attribute.parse(_PARALLEL)] * rank))
  elem = [ir.MemRefType(v.type).element_type for v in [*inputs, output]]
  block = op.regions[0].blocks.append(*elem)
  with ir.InsertionPoint(block):
    linalg.YieldOp([body(list(block.arguments))])


def _linalg_index(d: int) -> ir.Value:
  return linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64),
                                           d)).result


def _to_index(v: ir.Value, unsigned: bool) -> ir.Value:
  if isinstance(v.type, ir.IndexType):
    return v
  if unsigned:
    return arith.index_castui(ir.IndexType.get(), v)
  return arith.index_cast(ir.IndexType.get(), v)


# -- identities -------------------------------------------------------------------
@register(pallas_primitives.multiple_of_p)
def _multiple_of(ctx, x, *, values):  # noqa: ARG001 - a hint only
  return x


@register(ad_util.stop_gradient_p)
def _stop_gradient(ctx, x):
  return x


# -- concatenate / stack / tile / broadcast_to --------------------------------------
@register(lax.concatenate_p)
def _concatenate(ctx, *xs, dimension):
  out_aval = ctx.avals_out[0]
  shape, dtype = tuple(out_aval.shape), np.dtype(out_aval.dtype)
  if len(xs) == 1:
    return xs[0]
  out = ctx.kernel.alloc(shape, dtype)
  offset = 0
  for x, aval in zip(xs, ctx.avals_in):
    n = aval.shape[dimension]
    if n == 0:
      continue
    offsets = [0] * len(shape)
    offsets[dimension] = offset
    ctx.kernel.store(x, _window(out, offsets, list(aval.shape)))
    offset += n
  return values.load_array(out, dtype)


@register(lax.stack_p)
def _stack(ctx, *xs, axis):
  out_aval = ctx.avals_out[0]
  shape, dtype = tuple(out_aval.shape), np.dtype(out_aval.dtype)
  out = ctx.kernel.alloc(shape, dtype)
  for i, x in enumerate(xs):
    offsets = [0] * len(shape)
    offsets[axis] = i
    sizes = list(shape)
    sizes[axis] = 1
    ctx.kernel.store(x, _window(out, offsets, sizes, drop=(axis,)))
  return values.load_array(out, dtype)


@register(lax.tile_p)
def _tile(ctx, x, *, reps):
  """A broadcast to (r0, n0, r1, n1, ...) reshaped to (r0*n0, r1*n1, ...):
  lazy where only unit dimensions repeat, else one generic filling a
  contiguous temporary."""
  if isinstance(x, values.Scalar) or all(r == 1 for r in reps):
    return x
  bshape, dim_map = [], []
  for n, r in zip(x.shape, reps):
    if r != 1:
      bshape.append(r)
    dim_map.append(len(bshape))
    bshape.append(n)
  bshape = tuple(bshape)
  tiled = values.Array(values.reindex(x.node, dim_map, bshape), bshape,
                       x.dtype)
  return shape_rules.reshape(ctx, tiled, ctx.avals_out[0].shape)


@register(state_primitives.broadcast_to_p)
def _broadcast_to(ctx, x, *, shape):
  return broadcast(x, shape)


# -- split / unstack ------------------------------------------------------------------
@register(lax.split_p)
def _split(ctx, x, *, sizes, axis):
  buf = ctx.kernel.materialize(x)
  shape = list(x.shape)
  outs, offset = [], 0
  for size in sizes:
    size = int(size)
    offsets = [0] * len(shape)
    offsets[axis] = offset if size else 0  # an empty window may not start at the end
    win = list(shape)
    win[axis] = size
    outs.append(values.load_array(_window(buf, offsets, win), x.dtype))
    offset += size
  return outs


@register(lax.unstack_p)
def _unstack(ctx, x, *, axis):
  buf = ctx.kernel.materialize(x)
  shape = list(x.shape)
  outs = []
  for i in range(shape[axis]):
    if not ctx.outs_used[i]:
      outs.append(None)
      continue
    offsets = [0] * len(shape)
    offsets[axis] = i
    win = list(shape)
    win[axis] = 1
    view = _window(buf, offsets, win, drop=(axis,))
    if len(shape) == 1:
      outs.append(values.load_scalar(view, x.dtype))
    else:
      outs.append(values.load_array(view, x.dtype))
  return outs


# -- pad --------------------------------------------------------------------------------
@register(lax.pad_p)
def _pad(ctx, x, padding_value, *, padding_config):
  kctx = ctx.kernel
  out_aval = ctx.avals_out[0]
  shape, dtype = tuple(out_aval.shape), np.dtype(out_aval.dtype)
  in_shape = tuple(ctx.avals_in[0].shape)
  if not shape:  # nothing to pad
    return x
  out = kctx.alloc(shape, dtype)
  kctx.store(scalar_of(kctx, padding_value), out)
  # Operand element k of a dimension lands at low + k * (interior + 1);
  # negative low/high cut off the elements that land outside the output.
  src_off, dst_off, counts, steps = [], [], [], []
  for n, m, (lo, _, interior) in zip(in_shape, shape, padding_config):
    lo, step = int(lo), int(interior) + 1
    first = max(0, -(lo // step)) if lo < 0 else 0   # ceil(-lo / step)
    last = min(n - 1, (m - 1 - lo) // step) if m > 0 else -1
    src_off.append(first)
    dst_off.append(lo + first * step)
    counts.append(last - first + 1)
    steps.append(step)
  if any(c <= 0 for c in counts):  # every element cut off: all padding
    return values.load_array(out, dtype)
  dest = _window(out, dst_off, counts, steps)
  if counts == list(in_shape):
    kctx.store(_array(x, in_shape, dtype), dest)  # computed in place
  else:
    src = _window(_read_now(ctx, x), src_off, counts)
    linalg.copy(src, outs=[dest])
  return values.load_array(out, dtype)


# -- rev ----------------------------------------------------------------------------------
@register(lax.rev_p)
def _rev(ctx, x, *, dimensions):
  if isinstance(x, values.Scalar) or not dimensions:
    return x
  shape, rank = tuple(x.shape), len(x.shape)
  buf = views.with_layout(_read_now(ctx, x))
  out = ctx.kernel.alloc(shape, x.dtype)
  exprs = []
  for d in range(rank):
    e = ir.AffineDimExpr.get(d)
    if d in dimensions:
      e = ir.AffineConstantExpr.get(shape[d] - 1) - e
    exprs.append(e)
  _generic([buf], [exprs], out, rank, lambda a: a[0])
  return values.load_array(out, x.dtype)


# -- pltpu.roll ----------------------------------------------------------------------------
def _shift_mod(ctx, shift, n: int):
  """``shift mod n`` in [0, n): a Python int for a literal shift, else an
  index value computed at run time."""
  atom = ctx.eqn.invars[1]
  if isinstance(atom, jax_core.Literal):
    return int(atom.val) % n
  s = scalar_of(ctx.kernel, shift)
  v = s.value
  unsigned = types.is_unsigned(s.dtype)
  nn = const(v.type, n)
  if unsigned:
    r = arith.remui(v, nn)
  else:  # floor modulo, as jnp.roll takes it
    r = arith.remsi(v, nn)
    zero = const(v.type, 0)
    r = arith.select(arith.cmpi(arith.CmpIPredicate.slt, r, zero),
                     arith.addi(r, nn), r)
  return _to_index(r, unsigned)


@register(tpu_primitives.roll_p)
def _roll(ctx, x, shift, *, axis, stride, stride_axis):
  """out[.., j, ..] = x[.., (j - shift) mod n, ..] along ``axis`` (jnp.roll);
  with a stride, the shift grows by ``stride`` per index along
  ``stride_axis``."""
  if isinstance(x, values.Scalar):
    return x
  shape, rank = tuple(x.shape), len(x.shape)
  n = shape[axis]
  if n == 0 or any(d == 0 for d in shape):
    return x
  kctx = ctx.kernel
  s = _shift_mod(ctx, shift, n)
  if stride is None or stride % n == 0 or shape[stride_axis] == 1:
    if isinstance(s, int) and s == 0:
      return x
    buf = views.with_layout(_read_now(ctx, x))
    out = kctx.alloc(shape, x.dtype)
    outv = views.with_layout(out)

    def win(src, off, size):
      offsets, sizes = [0] * rank, list(shape)
      offsets[axis], sizes[axis] = off, size
      return views.subview(src, offsets, sizes)

    if isinstance(s, int):
      rest = n - s
    else:
      rest = arith.subi(views.as_index(n), s)
    # out[s:] = x[:n-s] and out[:s] = x[n-s:]
    linalg.copy(win(buf, 0, rest), outs=[win(outv, s, rest)])
    linalg.copy(win(buf, rest, s), outs=[win(outv, 0, s)])
    return values.load_array(out, x.dtype)
  # Strided: one generic loading x at the rotated index of each point.
  buf = _read_now(ctx, x)
  out = kctx.alloc(shape, x.dtype)
  step = int(stride) % n
  base = views.as_index(s) if isinstance(s, int) else s

  def body(_):
    idx = [_linalg_index(d) for d in range(rank)]
    nn = views.as_index(n)
    extra = arith.remui(arith.muli(idx[stride_axis], views.as_index(step)), nn)
    # (j - base - i * stride) mod n, kept non-negative
    j = arith.addi(idx[axis], views.as_index(2 * n))
    j = arith.subi(arith.subi(j, base), extra)
    idx[axis] = arith.remui(j, nn)
    return memref_d.load(buf, idx)

  _generic([], [], out, rank, body)
  return values.load_array(out, x.dtype)


# -- gather --------------------------------------------------------------------------------
def _fill_value(fill_value, dtype):
  if fill_value is not None:
    return fill_value
  if types.is_float(dtype):
    return float("nan")
  if types.is_bool(dtype):
    return True
  if types.is_unsigned(dtype):
    return int(types.iinfo(dtype).max)
  return int(types.iinfo(dtype).min)


@register(slicing.gather_p)
def _gather(ctx, x, indices, *, dimension_numbers, slice_sizes, unique_indices,
            indices_are_sorted, mode, fill_value):
  """Mosaic's one form: take_along_axis along one axis, every other axis a
  batch axis; out[p] = x[p with p[axis] := indices[p, 0]]."""
  del unique_indices, indices_are_sorted
  in_aval, idx_aval = ctx.avals_in
  out_aval = ctx.avals_out[0]
  out_shape = tuple(out_aval.shape)
  rank = len(out_shape)
  dn = dimension_numbers
  mode = slicing.GatherScatterMode.from_any(mode)
  if not (len(in_aval.shape) == rank and rank >= 1
          and tuple(idx_aval.shape[:-1]) == out_shape
          and idx_aval.shape[-1] == 1
          and tuple(slice_sizes) == (1,) * rank and not dn.offset_dims
          and tuple(dn.collapsed_slice_dims) == tuple(dn.start_index_map)
          and len(dn.collapsed_slice_dims) == 1
          and tuple(dn.operand_batching_dims)
          == tuple(dn.start_indices_batching_dims)
          and len(dn.operand_batching_dims) == rank - 1
          and mode in (slicing.GatherScatterMode.CLIP,
                       slicing.GatherScatterMode.FILL_OR_DROP,
                       slicing.GatherScatterMode.PROMISE_IN_BOUNDS)):
    # Every other form (x[idx], jnp.take, jnp.diagonal...): rules/shape.py.
    return shape_rules.gather(ctx, x, indices, dimension_numbers=dn,
                              slice_sizes=slice_sizes, mode=mode,
                              fill_value=fill_value)
  (axis,) = dn.collapsed_slice_dims
  n = int(in_aval.shape[axis])
  dtype = np.dtype(out_aval.dtype)
  idx_dtype = np.dtype(idx_aval.dtype)
  unsigned = types.is_unsigned(idx_dtype)
  fill = mode == slicing.GatherScatterMode.FILL_OR_DROP
  fill_v = _fill_value(fill_value, dtype) if fill else None

  # The index array without its trailing unit dimension, still lazy.
  if isinstance(indices, values.Scalar):
    idx_node = values.Splat(indices.value)
  else:
    idx_node = values.reindex(indices.node, list(range(rank)) + [None],
                              out_shape)
  buf = ctx.kernel.materialize(x)
  others = [d for d in range(rank) if d != axis]
  pos = tuple(values.Iota(d, np.dtype(np.int64)) for d in others)

  def build(args):
    i = _to_index(args[0], unsigned)
    coords = [_to_index(a, False) for a in args[1:]]
    nn = views.as_index(n)
    if fill:
      inb = arith.cmpi(arith.CmpIPredicate.ult, i, nn)  # negative: huge
      i = arith.select(inb, i, views.as_index(0))
    else:  # clamp into [0, n)
      i = arith.maxsi(arith.minsi(i, views.as_index(n - 1)), views.as_index(0))
    idx = list(coords)
    idx.insert(axis, i)
    v = values.from_memory(memref_d.load(buf, idx), dtype)
    if fill:
      v = arith.select(inb, v, const(v.type, fill_v))
    return v

  return values.Array(values.Op(build, (idx_node, *pos)), out_shape, dtype)


# -- masked loads and stores (pl.load / pl.store / pltpu.load / pltpu.store) --------------
def _split_args(args_tree, args):
  """The flat operands of each top-level entry of ``args_tree`` (a tuple),
  with that entry's treedef."""
  out, i = [], 0
  for child in args_tree.children():
    k = child.num_leaves
    out.append((child, list(args[i:i + k])))
    i += k
  return out


def _select_build(a):
  return arith.select(a[0], a[1], a[2])


@register(pallas_primitives.load_p)
def _masked_load(ctx, *args, args_tree, **_):
  (_, ref), (tr_tree, tr), (_, mask), (_, other) = _split_args(args_tree,
                                                                args)
  crossing = None
  if mask:  # the window may cross the ref's end (memory_rules.Crossing)
    crossing = memory_rules.resolve_masked(
        ctx, ref[0], tree_util.tree_unflatten(tr_tree, tr), mask[0])
  if crossing is None:
    out = memory_rules.get(ctx, ref[0], *tr, tree=tr_tree)
  else:
    view, key, crossing = crossing
    memory_rules.note_access(ctx, crossing.access, write=False)
    crossing.check(ctx, broadcast(mask[0], tuple(view.shape)))
    out = memory_rules.load(view, key)
  # As in interpret mode: masked-off elements are read too (their value is
  # unspecified), and replaced by ``other`` when it is given.
  if not mask or not other:
    return out
  shape = tuple(ctx.avals_out[0].shape)
  return elementwise(ctx, _select_build,
                     [broadcast(mask[0], shape), out, broadcast(other[0], shape)])


@register(pallas_primitives.swap_p, pure=False, takes_lazy_operands=True)
def _masked_swap(ctx, *args, args_tree, **_):
  (_, ref), (tr_tree, tr), (_, val), (_, mask) = _split_args(args_tree, args)
  ref, val = ref[0], val[0]
  if not mask:
    return memory_rules.swap(ctx, ref, val, *tr, tree=tr_tree)
  kctx = ctx.kernel
  transforms = tree_util.tree_unflatten(tr_tree, tr)
  if memory_rules.split_at_index_arrays(transforms)[1]:
    # Through an array of indices: interpret mode's discharge (a scatter).
    return memory_rules.swap_through_index_arrays(ctx, ref, transforms, val,
                                                  mask[0])
  crossing = memory_rules.resolve_masked(ctx, ref, transforms, mask[0])
  if crossing is None:
    view, key = memory_rules.apply_transforms(ctx, ref, tr_tree, tr)
  else:  # the window may cross the ref's end (memory_rules.Crossing)
    view, key, crossing = crossing
  # (A masked store reads the window to keep masked-off elements: the race
  # detector sees the whole window written, as TPU interpret mode does.)
  memory_rules.note_access(ctx, crossing.access if crossing else view,
                           write=True)
  shape = tuple(view.shape)
  mask = broadcast(mask[0], shape)
  if crossing is not None:
    crossing.check(ctx, mask)
  old = None
  if ctx.outs_used[0]:
    # The old value, and everything the returned value needs, is read
    # before the store.
    old = kctx.as_temp(memory_rules.load(view, key))
    val, mask = kctx.as_temp(val), kctx.as_temp(mask)
    current = old
  else:
    fixed = []
    for v in (val, mask):
      if isinstance(v, values.Array) and memory_rules.reads_differently(
          v.node, view.root, key):
        v = kctx.as_temp(v)
      fixed.append(v)
    val, mask = fixed
    current = memory_rules.load(view, key)  # read at the point written
  # Only mask-true elements change: select(mask, new, old), written in place.
  kctx.store(elementwise(ctx, _select_build, [mask, val, current]),
             view.memref)
  if crossing is not None:
    crossing.write_back()
  if old is None:
    return None
  # As interpret mode returns it: the old value where the mask is true, the
  # stored value elsewhere.
  return elementwise(ctx, _select_build, [mask, old, val])
