"""Memref views: the strided windows that blocks and ref indexing produce.

Every memref a kernel ref holds has a strided layout with a dynamic offset,
so a subview's type follows from its source alone: strides multiply by the
slice steps and the offset stays dynamic.
"""
from __future__ import annotations

from typing import Sequence

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


def constant_int(v: ir.Value) -> int | None:
  """The value of ``v`` if an arith.constant integer defines it."""
  owner = v.owner
  op = getattr(owner, "operation", owner)
  if isinstance(op, ir.Operation) and op.name == "arith.constant":
    attr = op.attributes["value"]
    if isinstance(attr, ir.IntegerAttr):
      return ir.IntegerAttr(attr).value
  return None


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
