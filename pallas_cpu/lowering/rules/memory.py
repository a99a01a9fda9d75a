"""Ref reads and writes: ``x_ref[idx]`` (get) and ``x_ref[idx] = v`` (swap),
through static and ``pl.ds`` dynamic slices and integer indices."""
from __future__ import annotations

from jax._src import tree_util
from jax._src.state import indexing
from jax._src.state import primitives as state_primitives
from mlir import ir

from pallas_cpu.lowering import values, views
from pallas_cpu.lowering.context import Ref, scalar_of
from pallas_cpu.lowering.registry import register


def _index(ctx, i) -> views.Index:
  if isinstance(i, int):
    return i
  if isinstance(i, values.Scalar):
    return views.as_index(i.value)
  if isinstance(i, values.Array):
    if i.shape == ():
      return views.as_index(scalar_of(ctx.kernel, i).value)
    raise NotImplementedError(
        "pallas_cpu: indexing a ref with an array of indices (gather/scatter) "
        "is not supported yet")
  raise TypeError(f"unexpected index {i!r}")


def _static(i):
  """The Python int of a literal index (jaxpr literals arrive as Scalars
  built from constants, so static ints come from the indexer itself)."""
  return i if isinstance(i, int) else None


def apply_transforms(ctx, ref: Ref, tree, flat_args) -> tuple[Ref, tuple]:
  """The view of ``ref`` that the transform tree selects, and a key that
  is equal for equal views of the same storage."""
  transforms = tree_util.tree_unflatten(tree, flat_args)
  view, key = ref.memref, (ref.root, ref.memref)
  for t in transforms:
    if not isinstance(t, indexing.NDIndexer):
      raise NotImplementedError(
          f"pallas_cpu: ref transform {type(t).__name__} is not supported yet")
    offsets, sizes, steps, drop = [], [], [], []
    for d, idx in enumerate(t.indices):
      if isinstance(idx, indexing.Slice):
        offsets.append(_index(ctx, idx.start))
        sizes.append(int(idx.size))
        steps.append(int(idx.stride))
      else:
        offsets.append(_index(ctx, idx))
        sizes.append(1)
        steps.append(1)
        drop.append(d)
    shape = ir.MemRefType(view.type).shape
    if (all(o == 0 for o in offsets) and sizes == list(shape)
        and all(s == 1 for s in steps) and not drop):
      continue  # x_ref[...]: the whole ref
    view = views.subview(view, offsets, sizes, steps, drop)
    key = (key, tuple(offsets), tuple(sizes), tuple(steps), tuple(drop))
  return Ref(view, ref.root, ref.dtype), key


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
