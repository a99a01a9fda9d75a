"""Ref reads and writes: ``x_ref[idx]`` (get) and ``x_ref[idx] = v`` (swap),
through static and ``pl.ds`` dynamic slices and integer indices."""
from __future__ import annotations

import numpy as np
from jax._src import tree_util
from jax._src.state import indexing
from jax._src.pallas import primitives as pallas_primitives
from jax._src.state import primitives as state_primitives
from jax._src.state import types as state_types
from mlir import ir
from mlir.dialects import arith, scf

from pallas_cpu.lowering import values, views
from pallas_cpu.lowering.context import Ref, scalar_of
from pallas_cpu.lowering.registry import register


def _index(ctx, i) -> views.Index:
  """An index as a Python int when it is known at compile time (literals
  reach rules as constants), else as an ``index`` value."""
  if isinstance(i, (int, np.integer)):
    return int(i)
  if isinstance(i, values.Scalar):
    const = views.constant_int(i.value)
    return const if const is not None else views.as_index(i.value)
  if isinstance(i, values.Array):
    if i.shape == ():
      return views.as_index(scalar_of(ctx.kernel, i).value)
    raise NotImplementedError(
        "pallas_cpu: indexing a ref with an array of indices (gather/scatter) "
        "is not supported yet")
  raise TypeError(f"unexpected index {i!r}")



def apply_transforms(ctx, ref: Ref, tree, flat_args) -> tuple[Ref, tuple]:
  """The view of ``ref`` that the transform tree selects, and a key that
  is equal for equal views of the same storage."""
  return apply_indexers(ctx, ref, tree_util.tree_unflatten(tree, flat_args))


def view_of(ctx, x) -> tuple[Ref, tuple]:
  """A Ref or a TransformedRef (``ref.at[...]``) as a view."""
  if isinstance(x, state_types.TransformedRef):
    return apply_indexers(ctx, x.ref, x.transforms)
  return apply_indexers(ctx, x, ())


def _checked_start(ctx, start: ir.Value, size: int, step: int, limit: int,
                   dim: int) -> ir.Value:
  """A dynamic slice start, reported and clamped when the slice leaves its
  ref, so that no access ever leaves the buffer."""
  extent = (size - 1) * step + 1 if size else 0
  idx = views.as_index(start)
  lo, hi = views.as_index(0), views.as_index(max(limit - extent, 0))
  bad = arith.ori(arith.cmpi(arith.CmpIPredicate.slt, idx, lo),
                  arith.cmpi(arith.CmpIPredicate.sgt, idx, hi))
  if_op = scf.IfOp(bad)
  with ir.InsertionPoint(if_op.then_block):
    i64 = ir.IntegerType.get_signless(64)
    kctx = ctx.kernel
    kctx.call_runtime("pallas_cpu_rt_index_out_of_bounds", [
        kctx.runtime_ctx, arith.constant(i64, dim), arith.index_cast(i64, idx),
        arith.constant(i64, extent), arith.constant(i64, limit),
        kctx.grid_index()])
    scf.YieldOp([])
  return arith.minsi(arith.maxsi(idx, lo), hi)


def apply_indexers(ctx, ref: Ref, transforms) -> tuple[Ref, tuple]:
  view, key = ref.memref, (ref.root, ref.memref)
  for t in transforms:
    if isinstance(t, state_types.ReshapeTransform):
      view = views.reshape(view, t.shape)
      key = (key, "reshape", tuple(t.shape))
      continue
    if isinstance(t, state_types.TransposeTransform):
      view = views.transpose(view, t.permutation)
      key = (key, "transpose", tuple(t.permutation))
      continue
    if not isinstance(t, indexing.NDIndexer):
      raise NotImplementedError(
          f"pallas_cpu: ref transform {type(t).__name__} is not supported yet")
    offsets, sizes, steps, drop = [], [], [], []
    shape = ir.MemRefType(view.type).shape
    for d, idx in enumerate(t.indices):
      if isinstance(idx, indexing.Slice):
        start, size, step = _index(ctx, idx.start), int(idx.size), int(idx.stride)
      else:
        start, size, step = _index(ctx, idx), 1, 1
        drop.append(d)
      if not isinstance(start, int):
        start = _checked_start(ctx, start, size, step, shape[d], d)
      offsets.append(start)
      sizes.append(size)
      steps.append(step)
    if (all(o == 0 for o in offsets) and sizes == list(shape)
        and all(s == 1 for s in steps) and not drop):
      continue  # x_ref[...]: the whole ref
    view = views.subview(view, offsets, sizes, steps, drop)
    key = (key, tuple(offsets), tuple(sizes), tuple(steps), tuple(drop))
  return Ref(view, ref.root, ref.dtype, ref.sem_id), key


def _load(view: Ref, key) -> values.Value:
  if not view.shape:
    return values.load_scalar(view.memref, view.dtype)
  return values.load_array(view.memref, view.dtype, root=view.root, key=key)


@register(state_primitives.get_p)
def _get(ctx, ref, *idx, tree):
  view, key = apply_transforms(ctx, ref, tree, idx)
  return _load(view, key)


def _reads_differently(node, root, key) -> bool:
  """Whether evaluating ``node`` reads ``root`` anywhere but exactly at the
  point it would write through ``key`` -- then writing in place is unsafe."""
  if isinstance(node, values.Load):
    return node.root == root and (
        node.key != key or node.index_map != values.identity_map(
            len(node.index_map)))
  if isinstance(node, values.Op):
    return any(_reads_differently(a, root, key) for a in node.args)
  return False


@register(state_primitives.swap_p, pure=False, takes_lazy_operands=True)
def _swap(ctx, ref, val, *idx, tree):
  kctx = ctx.kernel
  view, key = apply_transforms(ctx, ref, tree, idx)
  old = None
  if ctx.outs_used[0]:
    old = kctx.as_temp(_load(view, key))
  if isinstance(val, values.Array) and _reads_differently(val.node, view.root,
                                                          key):
    val = kctx.as_temp(val)
  kctx.store(val, view.memref)
  return old


@register(pallas_primitives.run_scoped_p, barrier=True)
def _run_scoped(ctx, *consts, jaxpr, collective_axes, ref_transforms=None,
                **_):
  """Scoped scratch: buffers refilled with the uninitialized value and
  semaphores zero on every entry (storage itself is hoisted)."""
  from pallas_cpu.lowering import jaxpr as jaxpr_lowering
  from pallas_cpu.lowering import kernel as kernel_lowering
  if collective_axes:
    raise NotImplementedError("pallas_cpu: run_scoped with collective_axes")
  if ref_transforms and any(ref_transforms):
    raise NotImplementedError("pallas_cpu: run_scoped with ref transforms")
  kctx = ctx.kernel
  refs = []
  for i, v in enumerate(jaxpr.invars):
    name = f"run_scoped ref {i} at {ctx.source}"
    ref = kernel_lowering.allocate_ref(kctx, v.aval, ("scoped", id(v)), name)
    if ref.sem_id is not None:  # zero again on each entry
      kctx.store(kctx.constant(0, "int32"), ref.memref)
    refs.append(ref)
  return jaxpr_lowering.lower_jaxpr(kctx, jaxpr, refs, consts=consts,
                                    parent=ctx.source)
