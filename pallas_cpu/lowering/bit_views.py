"""Refs seen through a width-changing ``ref.bitcast(dtype)``.

A TPU ref bitcast between element widths packs along the second-minor
dimension (``jax._src.state.utils.bitcast``, Mosaic's ``tpu.memref_bitcast``):
widening by ``r``, element ``[.., q, c]`` holds elements ``[.., q*r + i, c]``
in bit slot ``i`` (bits ``[i*w, (i+1)*w)``); narrowing is the inverse.  That
is not a reinterpretation of row-major memory, so such a view is no memref.
A ``BitView`` describes it with *parts*: strided memref views of the view's
shape, each contributing a bit field to every element.  Widening turns a
part into ``r`` row-strided ones; narrowing makes ``r`` *groups* of parts
(bit slot ``i`` of every element), interleaved along the second-minor
dimension, until an indexer picks rows of one slot -- what kernels do
(``b_ref[start::step]`` with ``step`` a multiple of the ratio).  Loads of
one group are one lazy expression of shifts and ors over its parts; stores
write each part its field (read-modify-write where a part is only some bits
of its storage elements).  Interleaved groups are read and written one
strided row set at a time.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from mlir import ir
from mlir.dialects import arith, memref

from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.context import Ref
# The scalar bit helpers pltpu.bitcast uses too (same packing, same code).
from pallas_cpu.lowering.scalars import (from_bits, int_type, resize,
                                         to_bits, width)
from pallas_cpu.lowering.types import dtype_bits


def _shift(v: ir.Value, amount: int | ir.Value, left: bool) -> ir.Value:
  if isinstance(amount, int):
    if not amount:
      return v
    amount = arith.constant(v.type, amount)
  elif amount.type != v.type:
    amount = resize(amount, width(v.type))
  return arith.shli(v, amount) if left else arith.shrui(v, amount)


def _raw_dtype(dtype) -> np.dtype:
  """The dtype an Array of raw memory values of ``dtype`` storage has (one
  whose memory and register types agree)."""
  dtype = np.dtype(dtype)
  if types.converted_in_registers(dtype):  # (int4: its whole byte)
    return np.dtype(f"uint{max(8, dtype_bits(dtype))}")
  return dtype


@dataclasses.dataclass(frozen=True)
class Part:
  """Bits ``[lo, lo + bits)`` of each view element are bits
  ``[shift, shift + bits)`` of the storage element at the same position of
  ``ref`` (``shift`` is an integer of the storage width when dynamic)."""
  ref: Ref
  key: tuple
  lo: int
  shift: int | ir.Value
  bits: int

  @property
  def storage_bits(self) -> int:
    return dtype_bits(self.ref.dtype)

  @property
  def whole(self) -> bool:
    """Whether the part is its storage elements, all bits."""
    return isinstance(self.shift, int) and self.shift == 0 and (
        self.bits == self.storage_bits)


@dataclasses.dataclass(frozen=True)
class BitView:
  """A view of ``dtype`` elements, given by ``groups`` of parts: row
  ``q*G + j`` along ``dim`` (G groups) is row ``q`` of group ``j``, whose
  elements are its parts' fields, ored.  A group's parts share one shape;
  groups' extents along ``dim`` differ by at most one (the first longer)."""
  dtype: np.dtype
  groups: tuple  # of tuple[Part, ...]
  dim: int = 0
  origin: str = ""  # the bitcast, for messages
  # Why the view is a copy that cannot be written through ("": it is not).
  copied: str = ""

  @property
  def shape(self) -> tuple:
    shape = list(self.groups[0][0].ref.shape)
    if len(self.groups) > 1:
      shape[self.dim] = sum(g[0].ref.shape[self.dim] for g in self.groups)
    return tuple(shape)

  def with_groups(self, groups, dim: int = 0, **changes) -> "BitView":
    return dataclasses.replace(self, groups=tuple(map(tuple, groups)),
                               dim=dim if len(groups) > 1 else 0, **changes)


def of_ref(ref: Ref, key, origin: str) -> BitView:
  if types.is_bool(ref.dtype):
    raise NotImplementedError("pallas_cpu: ref.bitcast of a bool ref")
  bits = dtype_bits(ref.dtype)
  return BitView(ref.dtype, ((Part(ref, key, 0, 0, bits),),), origin=origin)


def _subview(p: Part, offsets, sizes, steps, drop=()) -> Part:
  sub = views.subview(p.ref.memref, offsets, sizes, steps, drop)
  return dataclasses.replace(
      p, ref=dataclasses.replace(p.ref, memref=sub),
      key=(p.key, tuple(offsets), tuple(sizes), tuple(steps), tuple(drop)))


def _rows(shape, d: int, start, size, step):
  """Subview arguments selecting rows ``start::step`` (``size`` of them)
  along ``d`` of ``shape``."""
  rank = len(shape)
  offsets, sizes, steps = [0] * rank, list(shape), [1] * rank
  offsets[d], sizes[d], steps[d] = start, size, step
  return offsets, sizes, steps


# -- transforms -------------------------------------------------------------------
def _select_bits(view: BitView, parts, lo: int, bits: int) -> tuple:
  """The parts giving bits ``[lo, lo + bits)`` of a group's elements."""
  out = []
  for p in parts:
    a, b = max(lo, p.lo), min(lo + bits, p.lo + p.bits)
    if a >= b:
      continue
    if not isinstance(p.shift, int):
      raise NotImplementedError(
          f"pallas_cpu: {view.origin}: bitcasting a dynamically chosen bit "
          "slot of a ref again")
    out.append(Part(p.ref, (p.key, "bits", a - p.lo, b - a), a - lo,
                    p.shift + a - p.lo, b - a))
  return tuple(out)


def bitcast(view: BitView, dtype) -> BitView:
  """``view.bitcast(dtype)``: second-minor packing when widths differ."""
  dtype = np.dtype(dtype)
  src, dst = dtype_bits(view.dtype), dtype_bits(dtype)
  shape = view.shape
  if src == dst:
    return dataclasses.replace(view, dtype=dtype)
  if len(shape) < 2:
    raise NotImplementedError(
        f"pallas_cpu: {view.origin}: a ref bitcast that changes the element "
        f"width needs rank >= 2 (the second-minor dimension packs), got "
        f"shape {shape}")
  d, groups = len(shape) - 2, view.groups
  if len(groups) > 1 and view.dim != d:
    raise NotImplementedError(
        f"pallas_cpu: {view.origin}: bitcasting again a narrowed ref whose "
        "rows were transposed")
  if src > dst:  # each group splits into its bit slots
    ratio = src // dst
    return view.with_groups(
        [_select_bits(view, g, i * dst, dst) for g in groups
         for i in range(ratio)], d, dtype=dtype)
  ratio = dst // src
  if shape[d] % ratio:
    raise ValueError(
        f"pallas_cpu: {view.origin}: bitcasting {view.dtype} to {dtype} packs "
        f"{ratio} rows of the second-minor dimension, but it has {shape[d]}")
  if len(groups) == 1:  # rows i::ratio become bit slot i
    rows = shape[d] // ratio
    return view.with_groups([[
        dataclasses.replace(_subview(p, *_rows(shape, d, i, rows, ratio)),
                            lo=p.lo + i * src)
        for i in range(ratio) for p in groups[0]]], dtype=dtype)
  # Interleaved groups: ``ratio`` consecutive ones form the slots of one.
  extents = {g[0].ref.shape[d] for g in groups}
  if len(groups) % ratio or len(extents) != 1:
    raise NotImplementedError(
        f"pallas_cpu: {view.origin}: widening rows of a narrowed ref that "
        "are not whole groups of the widening ratio")
  return view.with_groups(
      [[dataclasses.replace(p, lo=p.lo + i * src)
        for i in range(ratio) for p in groups[t * ratio + i]]
       for t in range(len(groups) // ratio)], d, dtype=dtype)


def index(ctx, view: BitView, offsets, sizes, steps, drop) -> BitView:
  """An NDIndexer (already resolved against ``view.shape`` and bounds
  checked) applied to every part; rows of interleaved groups are mapped to
  the groups' rows.  Rows no group structure describes (a dynamic start
  that does not pick one bit slot) are read from a copy of the whole view,
  which cannot be written through."""
  groups, d = view.groups, view.dim
  if len(groups) == 1:
    return view.with_groups(
        [[_subview(p, offsets, sizes, steps, drop) for p in groups[0]]])
  g_count = len(groups)
  a, n, s = offsets[d], sizes[d], steps[d]
  if n == 1:
    s = g_count  # one row: the step never applies
  new_dim = d - sum(1 for x in drop if x < d)
  if isinstance(a, int):
    period = g_count // math.gcd(s, g_count)
    out = []
    for j in range(max(1, min(period, n))):  # n == 0: one empty group
      row = a + s * j
      offs, szs, stps = list(offsets), list(sizes), list(steps)
      offs[d], szs[d] = row // g_count, -(-(n - j) // period)
      stps[d] = s * period // g_count
      out.append([_subview(p, offs, szs, stps, drop)
                  for p in groups[row % g_count]])
    return view.with_groups(out, new_dim)
  slot_parts = _dynamic_slot(view)
  if slot_parts is not None and s % g_count == 0:
    whole, w = slot_parts, dtype_bits(view.dtype)
    idx, k = views.as_index(a), views.as_index(g_count)
    offs, stps = list(offsets), list(steps)
    offs[d], stps[d] = arith.divui(idx, k), s // g_count
    int_t = int_type(whole.storage_bits)
    shift = arith.muli(arith.index_cast(int_t, arith.remui(idx, k)),
                       arith.constant(int_t, w))
    part = dataclasses.replace(whole, shift=shift, bits=w,
                               key=(whole.key, "slot", id(shift)))
    return view.with_groups([[_subview(part, offs, sizes, stps, drop)]])
  reason = (f"{view.origin}: rows from a dynamic start with step {steps[d]} "
            f"of a ref bitcast to the narrower {view.dtype} (a step that is "
            f"a multiple of {g_count} into a plainly narrowed ref would be "
            "one bit slot)")
  return index(ctx, _copy(ctx, view, reason), offsets, sizes, steps, drop)


def _dynamic_slot(view: BitView) -> Part | None:
  """When group ``j`` is bit slot ``j`` of one storage view (a narrowing
  of a plain ref, not indexed since), that storage as a whole part: then a
  row start known only at run time picks the slot by a shift."""
  w = dtype_bits(view.dtype)
  first = view.groups[0][0]
  for j, g in enumerate(view.groups):
    if len(g) != 1:
      return None
    p = g[0]
    if (p.ref.memref != first.ref.memref or p.lo != 0 or p.bits != w
        or not isinstance(p.shift, int) or p.shift != j * w):
      return None
  if len(view.groups) * w != first.storage_bits:
    return None
  return dataclasses.replace(first, shift=0, bits=first.storage_bits)


def _copy(ctx, view: BitView, reason: str) -> BitView:
  buf = views.with_layout(ctx.kernel.materialize(load(ctx, view)))
  ref = Ref(buf, None, view.dtype)
  part = Part(ref, ("copy", id(buf)), 0, 0, dtype_bits(view.dtype))
  return BitView(view.dtype, ((part,),), origin=view.origin, copied=reason)


def transpose(view: BitView, permutation) -> BitView:
  perm = [int(p) for p in permutation]

  def t(p: Part) -> Part:
    return dataclasses.replace(
        p, ref=dataclasses.replace(p.ref, memref=views.transpose(
            p.ref.memref, perm)), key=(p.key, "transpose", tuple(perm)))
  return view.with_groups([[t(p) for p in g] for g in view.groups],
                          perm.index(view.dim))


def reshape(view: BitView, shape) -> BitView:
  if len(view.groups) > 1:
    raise NotImplementedError(
        f"pallas_cpu: {view.origin}: reshaping a ref bitcast to a narrower "
        "dtype")

  def r(p: Part) -> Part:
    return dataclasses.replace(
        p, ref=dataclasses.replace(p.ref, memref=views.reshape(p.ref.memref,
                                                               shape)),
        key=(p.key, "reshape", tuple(shape)))
  return view.with_groups([[r(p) for p in view.groups[0]]])


# -- loads ------------------------------------------------------------------------
def _combine(dtype, parts, raw: list[ir.Value]) -> ir.Value:
  """An element (register value) from its parts' raw memory values."""
  w = dtype_bits(dtype)
  acc = None
  for p, v in zip(parts, raw):
    field = resize(_shift(to_bits(v), p.shift, left=False), p.bits)
    field = _shift(resize(field, w), p.lo, left=True)
    acc = field if acc is None else arith.ori(acc, field)
  if types.is_subbyte(dtype):  # i4: the register value itself
    return acc
  mem = from_bits(acc, types.memory_element_type(dtype))
  return values.from_memory(mem, dtype)


def _load_group(dtype, parts) -> values.Value:
  shape = parts[0].ref.shape
  if not shape:
    raw = [memref.load(p.ref.memref, []) for p in parts]
    return values.Scalar(_combine(dtype, parts, raw), np.dtype(dtype))
  rank = len(shape)
  leaves = tuple(values.Load(p.ref.memref, values.identity_map(rank),
                             p.ref.root, p.key) for p in parts)
  return values.Array(values.Op(lambda a: _combine(dtype, parts, a), leaves),
                      shape, np.dtype(dtype))


def _group_rows(view: BitView, buf: ir.Value):
  """For each group, the rows of the view-shaped ``buf`` it holds."""
  shape, g_count = view.shape, len(view.groups)
  for j, g in enumerate(view.groups):
    rows = g[0].ref.shape[view.dim]
    yield g, views.subview(buf, *_rows(shape, view.dim, j, rows, g_count))


def load(ctx, view: BitView) -> values.Value:
  """The view's value: lazy for one group (one fused expression over its
  parts); interleaved groups are computed into a temporary row set by row
  set."""
  if len(view.groups) == 1:
    return _load_group(view.dtype, view.groups[0])
  kctx = ctx.kernel
  buf = kctx.alloc(view.shape, view.dtype)
  for g, rows in _group_rows(view, views.with_layout(buf)):
    kctx.store(_load_group(view.dtype, g), rows)
  return values.load_array(buf, view.dtype)


# -- stores -----------------------------------------------------------------------
def store(ctx, view: BitView, val: values.Value, reads_differently) -> None:
  """Writes ``val`` (of the view's shape, or a scalar) through the view.
  ``reads_differently(node, root, key)`` tells whether evaluating ``node``
  while writing a part in place would read memory the write changes."""
  kctx = ctx.kernel
  if view.copied:
    raise NotImplementedError(f"pallas_cpu: writing through {view.copied}")
  if len(view.groups) == 1:
    _store_group(ctx, view.dtype, view.groups[0], val, reads_differently)
    return
  if isinstance(val, values.Scalar):
    for g in view.groups:
      _store_group(ctx, view.dtype, g, val, reads_differently)
    return
  # A copy (or an immutable temporary), so no write below changes it.
  buf = views.with_layout(kctx.materialize(val))
  for g, rows in _group_rows(view, buf):
    _store_group(ctx, view.dtype, g, values.load_array(rows, val.dtype),
                 reads_differently)


def _store_group(ctx, dtype, parts, val, reads_differently) -> None:
  kctx = ctx.kernel
  if isinstance(val, values.Array):
    if len(parts) > 1:
      # Each part is a separate write; a value that reads this storage must
      # not see the first parts already written.
      if values.roots_read(val.node) & {p.ref.root for p in parts}:
        val = kctx.as_temp(val)
    elif reads_differently(val.node, parts[0].ref.root, parts[0].key):
      val = kctx.as_temp(val)
  shape = parts[0].ref.shape
  v_node = (values.Splat(val.value) if isinstance(val, values.Scalar)
            else val.node)
  for p in parts:
    storage_t = ir.MemRefType(p.ref.memref.type).element_type
    sw = p.storage_bits
    # Sub-byte storage: fields are set in its i4 register value, stored
    # extended to its byte.
    sub = types.is_subbyte(p.ref.dtype)

    def stored(bits, t=storage_t, sub=sub, dt=p.ref.dtype):
      return values.to_memory(bits, dt) if sub else from_bits(bits, t)

    def old_bits(raw, sub=sub, dt=p.ref.dtype):
      return values.from_memory(raw, dt) if sub else to_bits(raw)

    def field(v, p=p, sw=sw):
      bits = to_bits(values.to_memory(v, dtype))
      return resize(resize(_shift(bits, p.lo, left=False), p.bits), sw)

    if p.whole:
      def build(a, field=field, stored=stored):
        return stored(field(a[0]))
      args = (v_node,)
    else:
      def build(a, p=p, field=field, stored=stored, old_bits=old_bits, sw=sw):
        mask = _shift(arith.constant(int_type(sw), (1 << p.bits) - 1), p.shift,
                      left=True)
        keep = arith.andi(old_bits(a[1]),
                          arith.xori(mask, arith.constant(int_type(sw), -1)))
        new = _shift(field(a[0]), p.shift, left=True)
        return stored(arith.ori(keep, new))
      old = values.Load(p.ref.memref, values.identity_map(len(shape)),
                        p.ref.root, p.key)
      args = (v_node, old)
    kctx.store(values.Array(values.Op(build, args), shape,
                            _raw_dtype(p.ref.dtype)), p.ref.memref)
