"""Memref views: the strided windows that blocks and ref indexing produce.

Every memref a kernel ref holds has a strided layout with a dynamic offset,
so a subview's type follows from its source alone: strides multiply by the
slice steps and the offset stays dynamic.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from mlir import ir
from mlir.dialects import arith, memref

from pallas_cpu.lowering import types

DYN = ir.ShapedType.get_dynamic_stride_or_offset()
DYN_SIZE = ir.ShapedType.get_dynamic_size()

# An index is either a Python int (static) or an ``index``-typed ir.Value.
Index = int | ir.Value


def with_layout(buf: ir.Value, strides: Sequence[int | None] | None = None,
                space: ir.Attribute | None = None) -> ir.Value:
  """``buf`` cast to a strided layout with a dynamic offset (``strides``
  default to its own; None entries become dynamic)."""
  t = ir.MemRefType(buf.type)
  strides = types.memref_strides(t) if strides is None else strides
  new = ir.MemRefType.get(t.shape, t.element_type,
                          layout=types.strided_layout(strides),
                          memory_space=t.memory_space if space is None else space)
  if new == t:
    return buf
  return memref.CastOp(new, buf).result


def space_cast(buf: ir.Value, space: ir.Attribute | None) -> ir.Value:
  """``buf`` in memory space ``space`` (None: the default space)."""
  t = ir.MemRefType(buf.type)
  if (t.memory_space is None and space is None) or (
      t.memory_space is not None and space is not None
      and t.memory_space == space):
    return buf
  new = ir.MemRefType.get(t.shape, t.element_type, layout=t.layout,
                          memory_space=space)
  return memref.MemorySpaceCastOp(new, buf).result


def address(buf: ir.Value, elem_bytes: int = 4) -> ir.Value:
  """The address of a view's first element, as an i64 (for the runtime)."""
  i64 = ir.IntegerType.get_signless(64)
  flat = space_cast(buf, None)
  base = arith.index_cast(i64, memref.extract_aligned_pointer_as_index(flat))
  offset = memref.ExtractStridedMetadataOp(flat).offset
  if constant_int(offset) == 0:
    return base
  return arith.addi(base, arith.muli(arith.index_cast(i64, offset),
                                     arith.constant(i64, elem_bytes)))


def unranked(view: ir.Value) -> ir.Value:
  """``view`` as an unranked memref of no memory space (how the runtime's
  DMA and race-detection entry points take a strided window)."""
  flat = space_cast(view, None)
  t = ir.MemRefType(flat.type)
  return memref.CastOp(ir.UnrankedMemRefType.get(t.element_type, None),
                       flat).result


def element_offset(view: ir.Value) -> ir.Value:
  """A view's offset in elements from its buffer's start, as an i64."""
  i64 = ir.IntegerType.get_signless(64)
  offset = memref.ExtractStridedMetadataOp(space_cast(view, None)).offset
  return arith.index_cast(i64, offset)


def constant_int(v: ir.Value) -> int | None:
  """The value of ``v`` if an arith.constant integer defines it."""
  owner = v.owner
  op = getattr(owner, "operation", owner)
  if isinstance(op, ir.Operation) and op.name == "arith.constant":
    attr = op.attributes["value"]
    if isinstance(attr, ir.IntegerAttr):
      return ir.IntegerAttr(attr).value
  return None


def shape_text(shape) -> str:
  """A view's shape for messages, "?" for a size known only at run time."""
  dims = ["?" if n == DYN_SIZE else str(n) for n in shape]
  return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def sizes_of(view: ir.Value) -> list[Index]:
  """A memref's sizes: ints where static, ``memref.dim`` values where they
  are known only at run time (a DMA window of run-time size)."""
  shape = ir.MemRefType(view.type).shape
  return [n if n != DYN_SIZE else memref.dim(view, as_index(d))
          for d, n in enumerate(shape)]


def as_index(v: Index) -> ir.Value:
  if isinstance(v, int):
    return arith.constant(ir.IndexType.get(), v)
  if isinstance(v.type, ir.IndexType):
    return v
  return arith.index_cast(ir.IndexType.get(), v)


def subview(src: ir.Value, offsets: Sequence[Index], sizes: Sequence[Index],
            steps: Sequence[int] | None = None,
            drop: Sequence[int] = ()) -> ir.Value:
  """A window of ``src``; dimensions in ``drop`` (size 1) are squeezed out.

  A source without a dynamic-offset strided layout is cast to one first
  (``with_layout``), so the result type is always predictable.
  """
  _, src_offset = ir.MemRefType(src.type).get_strides_and_offset()
  if src_offset != DYN:
    src = with_layout(src)
  t = ir.MemRefType(src.type)
  rank = t.rank
  steps = list(steps) if steps is not None else [1] * rank
  # The step of a window of one element is immaterial; left in, it makes
  # the stride of that kept unit dimension differ from the source's, and
  # MLIR cannot then tell which unit dimensions a rank-reducing subview
  # drops (x_ref.at[i, pl.ds(j, 1, stride=3), :] aborted in
  # SubViewOp::getDroppedDims).
  steps = [1 if isinstance(n, int) and n == 1 else s
           for s, n in zip(steps, sizes)]
  src_strides = types.memref_strides(t)
  static_offsets, dyn_offsets = [], []
  for o in offsets:
    if isinstance(o, int):
      static_offsets.append(o)
    else:
      static_offsets.append(DYN)
      dyn_offsets.append(as_index(o))
  static_sizes, dyn_sizes = [], []
  for s in sizes:
    if isinstance(s, int):
      static_sizes.append(s)
    else:
      static_sizes.append(DYN_SIZE)
      dyn_sizes.append(as_index(s))
  out_shape, out_strides = [], []
  for d in range(rank):
    if d in drop:
      continue
    out_shape.append(static_sizes[d])
    s = src_strides[d]
    out_strides.append(None if s is None else s * steps[d])
  result = ir.MemRefType.get(out_shape, t.element_type,
                             layout=types.strided_layout(out_strides),
                             memory_space=t.memory_space)
  return memref.SubViewOp(result, src, dyn_offsets, dyn_sizes, [],
                          static_offsets, static_sizes, list(steps)).result


def reshape(src: ir.Value, shape) -> ir.Value:
  """``ref.reshape(shape)``: a view of a contiguous window with another
  shape (collapsed to one dimension, then expanded)."""
  t = ir.MemRefType(src.type)
  size = int(np.prod(t.shape))
  shape = list(shape)
  if -1 in shape:
    known = int(np.prod([d for d in shape if d != -1]))
    shape[shape.index(-1)] = size // known
  if int(np.prod(shape)) != size:
    raise ValueError(f"cannot reshape a ref of shape {t.shape} to {shape}")
  strides = types.memref_strides(t)
  if strides != types.row_major_strides(t.shape):
    raise NotImplementedError(
        f"pallas_cpu: reshaping a non-contiguous ref view (shape {t.shape}, "
        f"strides {strides})")
  if list(t.shape) == shape:
    return src
  flat = src
  if t.rank != 1:
    flat_t = ir.MemRefType.get([size], t.element_type,
                               layout=types.strided_layout([1]),
                               memory_space=t.memory_space)
    flat = memref.CollapseShapeOp(flat_t, src, ir.ArrayAttr.get([
        ir.ArrayAttr.get([ir.IntegerAttr.get(ir.IntegerType.get_signless(64),
                                             d) for d in range(t.rank)])])
    ).result
  if len(shape) == 1:
    return flat
  out_t = ir.MemRefType.get(shape, t.element_type,
                            layout=types.strided_layout(
                                types.row_major_strides(shape)),
                            memory_space=t.memory_space)
  reassociation = ir.ArrayAttr.get([ir.ArrayAttr.get([
      ir.IntegerAttr.get(ir.IntegerType.get_signless(64), d)
      for d in range(len(shape))])])
  return memref.ExpandShapeOp(out_t, flat, reassociation, [], shape).result


def transpose(src: ir.Value, permutation) -> ir.Value:
  """``ref.T`` / a transposed ref: the same memory with permuted strides."""
  t = ir.MemRefType(src.type)
  perm = [int(p) for p in permutation]
  strides = types.memref_strides(t)
  out_t = ir.MemRefType.get([t.shape[p] for p in perm], t.element_type,
                            layout=types.strided_layout([strides[p]
                                                         for p in perm]),
                            memory_space=t.memory_space)
  return memref.TransposeOp(out_t, src, ir.AffineMapAttr.get(
      ir.AffineMap.get_permutation(perm))).result
