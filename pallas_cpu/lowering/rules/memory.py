"""Ref reads and writes: ``x_ref[idx]`` (get) and ``x_ref[idx] = v`` (swap),
through static and ``pl.ds`` dynamic slices, integer indices, reshapes,
transposes and bitcasts (an equal-width one is a memref of the new element
type; one that changes the width packs rows, see bit_views.py)."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax._src import core as jax_core
from jax._src import tree_util
from jax._src.state import indexing
from jax._src.pallas import primitives as pallas_primitives
from jax._src.pallas.mosaic import tpu_info
from jax._src.state import discharge as state_discharge
from jax._src.state import primitives as state_primitives
from jax._src.state import types as state_types
from mlir import ir
from mlir.dialects import arith, builtin, linalg, memref, scf

from pallas_cpu import abi, tpu_checks
from pallas_cpu.lowering import (bit_views, buffers, memory_spaces,
                                  race_hooks, types, values, views)
from pallas_cpu.lowering import jaxpr as jaxpr_lowering
from pallas_cpu.lowering.context import Ref, scalar_of
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.common import loop_nest


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


# What a ref operation does to its window, in TPU interpret mode's words for
# an out-of-bounds one ("Out-of-bounds read of ...").  A rule whose refs
# differ (a DMA reads one and writes the other) sets ``ctx.ref_access``
# while it resolves each.
_ACCESS = {"get": "read", "masked_load": "read", "swap": "swap",
           "masked_swap": "masked swap", "addupdate": "swap"}


def _access_site(ctx, ref, shape, transformed: bool) -> int:
  """The site id of a dynamic window's bounds report (abi.h,
  pallas_cpu_rt_index_out_of_bounds_at)."""
  access = getattr(ctx, "ref_access", None)
  if access is None:
    eqn = getattr(ctx, "eqn", None)
    name = eqn.primitive.name if eqn is not None else ""
    access = _ACCESS.get(name, "access")
  desc = _describe_view(ctx, ref, shape, transformed)
  return ctx.kernel.site(f"Out-of-bounds {access} of {desc}\t{ctx.source}")


def _describe_view(ctx, ref, shape, transformed: bool) -> str:
  if ref is None:
    return f"a ref of shape {views.shape_text(shape)}"
  desc = f"{buffers.describe_ref(ctx.kernel, ref)} of shape {tuple(ref.shape)}"
  if transformed:
    desc = f"a view of shape {views.shape_text(shape)} of {desc}"
  return desc


def _checked_start(ctx, start: ir.Value, size: int, step: int,
                   limit: views.Index, dim: int,
                   site: int | None = None) -> ir.Value:
  """A dynamic slice start, reported and clamped when the slice leaves its
  ref, so that no access ever leaves the buffer."""
  extent = (size - 1) * step + 1 if size else 0
  idx = views.as_index(start)
  lo = views.as_index(0)
  if isinstance(limit, int):
    hi = views.as_index(max(limit - extent, 0))
  else:
    hi = arith.maxsi(arith.subi(views.as_index(limit), views.as_index(extent)),
                     lo)
  bad = arith.ori(arith.cmpi(arith.CmpIPredicate.slt, idx, lo),
                  arith.cmpi(arith.CmpIPredicate.sgt, idx, hi))
  if_op = scf.IfOp(bad)
  with ir.InsertionPoint(if_op.then_block):
    _report_window(ctx, site, dim, idx, extent, limit)
    scf.YieldOp([])
  return arith.minsi(arith.maxsi(idx, lo), hi)


def _checked_window(ctx, start: views.Index, size: views.Index, step: int,
                    limit: views.Index, dim: int,
                    site: int | None) -> tuple[ir.Value, ir.Value]:
  """A window of run-time size (``pl.ds(start, n)`` with a traced ``n``:
  emit_pipeline's edge and BoundedSlice blocks): reported when the size is
  negative or the window leaves [0, limit), and clamped into it."""
  idx, n, lim = (views.as_index(start), views.as_index(size),
                 views.as_index(limit))
  zero, one, st = views.as_index(0), views.as_index(1), views.as_index(step)

  def extent_of(count):
    positive = arith.cmpi(arith.CmpIPredicate.sgt, count, zero)
    return arith.select(positive, arith.addi(arith.muli(arith.subi(
        count, one), st), one), zero)

  extent = extent_of(n)
  bad = arith.ori(
      arith.ori(arith.cmpi(arith.CmpIPredicate.slt, idx, zero),
                arith.cmpi(arith.CmpIPredicate.slt, n, zero)),
      arith.cmpi(arith.CmpIPredicate.sgt, arith.addi(idx, extent), lim))
  if_op = scf.IfOp(bad)
  with ir.InsertionPoint(if_op.then_block):
    _report_window(ctx, site, dim, idx, extent, limit)
    scf.YieldOp([])
  # (The report ends the call; the clamped window keeps the accesses made
  # meanwhile inside the buffer.)
  fits = arith.ceildivsi(lim, st)
  n = arith.minsi(arith.maxsi(n, zero), fits)
  hi = arith.maxsi(arith.subi(lim, extent_of(n)), zero)
  return arith.minsi(arith.maxsi(idx, zero), hi), n


def _report_window(ctx, site: int | None, dim: int, start: ir.Value,
                   extent: views.Index, limit: views.Index) -> None:
  """Reports a window [start, start + extent) outside [0, limit)."""
  i64 = ir.IntegerType.get_signless(64)
  kctx = ctx.kernel
  where = [] if site is None else [arith.constant(i64, site)]
  kctx.call_runtime(
      abi.RT_INDEX_OUT_OF_BOUNDS if site is None
      else abi.RT_INDEX_OUT_OF_BOUNDS_AT, [
      kctx.runtime_ctx, *where, arith.constant(i64, dim),
      arith.index_cast(i64, views.as_index(start)),
      arith.index_cast(i64, views.as_index(extent)),
      arith.index_cast(i64, views.as_index(limit)), kctx.grid_index()])


def _resolve_indexer(ctx, shape, t: indexing.NDIndexer, ref=None,
                     transformed: bool = False, *, limits=None, pad=None,
                     dma: bool = False):
  """``t`` over a view of ``shape`` as subview arguments (offsets, sizes,
  steps, dropped dims), dynamic starts bounds checked at run time, static
  ones now (``ref``, the ref the view comes from -- through other
  transforms if ``transformed`` -- names it in the message); None for the
  whole view.

  ``limits`` are the view's sizes where ``shape`` has dynamic ones (a view
  of run-time size); ``dma``: the window is a DMA's, which may have a
  run-time size, and ``pad`` the view's reach into tile padding (a
  ``Reach`` per dimension, or None), for which the second result is the
  window's."""
  limits = list(shape) if limits is None else limits
  offsets, sizes, steps, drop = [], [], [], []
  for d, idx in enumerate(t.indices):
    if isinstance(idx, indexing.Slice):
      start, size, step = (_index(ctx, idx.start), _index(ctx, idx.size),
                           int(idx.stride))
    else:
      start, size, step = _index(ctx, idx), 1, 1
      drop.append(d)
    offsets.append(start)
    sizes.append(size)
    steps.append(step)
  site = None
  new_pad = [] if pad is not None else None
  for d, start in enumerate(offsets):
    size, step = sizes[d], steps[d]
    room, valid = pad[d] if pad is not None else Reach(limits[d], None)
    if d in drop and valid is not None:
      room = valid  # an index stays inside the logical shape
    if not isinstance(size, int) and not dma:
      what = _describe_view(ctx, ref, shape, transformed)
      raise NotImplementedError(
          f"pallas_cpu: a slice of run-time size (pl.ds(start, n) with a "
          f"traced n, dimension {d}) of {what}: only DMAs take one")
    if all(isinstance(v, int) for v in (start, size, room)):
      _check_static(ctx, shape, d, offsets, sizes, steps, drop, ref,
                    transformed, limit=room)
    else:
      if site is None:
        site = _access_site(ctx, ref, shape, transformed)
      if isinstance(size, int):
        offsets[d] = _checked_start(ctx, start, size, step, room, d, site)
      else:
        offsets[d], sizes[d] = _checked_window(ctx, start, size, step, room,
                                               d, site)
    if new_pad is not None and d not in drop:
      new_pad.append(_reach_after(pad[d], offsets[d], sizes[d], step))
  if (all(isinstance(o, int) and o == 0 for o in offsets)
      and sizes == list(shape) and all(s == 1 for s in steps) and not drop):
    return None, pad  # x_ref[...]: the whole ref
  return (offsets, sizes, steps, drop), new_pad


def _check_static(ctx, shape, d, offsets, sizes, steps, drop, ref,
                  transformed, limit: int | None = None) -> None:
  """Raises IndexError when the static window along dimension ``d`` leaves
  the view (MLIR would reject the subview; a dynamic index is reported at
  run time instead).  Negative indices do not count from the end, as in
  Mosaic."""
  start, size, step = offsets[d], sizes[d], steps[d]
  limit = shape[d] if limit is None else limit
  extent = (size - 1) * step + 1 if size else 0
  if 0 <= start and start + extent <= limit:
    return
  items = []
  for k, (o, n, st) in enumerate(zip(offsets, sizes, steps)):
    o_text = str(o) if isinstance(o, int) else "<traced>"
    if k in drop:
      items.append(o_text)
    elif o == 0 and n == shape[k] and st == 1:
      items.append(":")
    else:
      items.append(f"pl.ds({o_text}, {n}" + (f", stride={st})" if st != 1
                                              else ")"))
  what = "index" if d in drop else "slice"
  if ref is None:
    desc = f"a ref of shape {tuple(shape)}"
  else:
    name = buffers.describe_ref(ctx.kernel, ref)
    desc = f"{name} of shape {tuple(ref.shape)}"
    if transformed:
      desc = f"a view of shape {tuple(shape)} of {desc}"
  note = " (negative indices do not count from the end)" if start < 0 else ""
  raise IndexError(
      f"pallas_cpu: static {what} out of bounds: [{', '.join(items)}] on "
      f"{desc}: dimension {d}: [{start}, {start + extent}) is not inside "
      f"[0, {limit}){note}")


def _bitcast_ref(view: Ref, dtype) -> Ref | None:
  """An equal-width ``ref.bitcast`` as a memref of the new element type, or
  None where the widths differ.  Memref has no element-type cast; an
  unrealized cast suffices because both types lower to the same LLVM
  descriptor (reconcile-unrealized-casts drops it)."""
  if types.is_bool(view.dtype) or types.is_bool(dtype):
    raise NotImplementedError("pallas_cpu: ref.bitcast from or to bool")
  if types.dtype_bits(view.dtype) != types.dtype_bits(dtype):
    return None
  t = ir.MemRefType(view.memref.type)
  elem = types.memory_element_type(dtype)
  memref = view.memref
  if t.element_type != elem:
    new_t = ir.MemRefType.get(t.shape, elem, layout=t.layout,
                              memory_space=t.memory_space)
    memref = builtin.UnrealizedConversionCastOp([new_t], [memref]).result
  return Ref(memref, view.root, np.dtype(dtype), view.sem_id)


def resolve(ctx, ref: Ref, transforms):
  """The view the transforms select: a ``Ref`` (a memref view), or a
  ``bit_views.BitView`` past a bitcast that changes the element width; and
  a key that is equal for equal views of the same storage."""
  view, key, _ = _resolve(ctx, ref, transforms, dma=False)
  return view, key


def _resolve(ctx, ref: Ref, transforms, *, dma: bool):
  """``resolve``; for a DMA's window (``dma``) also its reach into tile
  padding: a ``Reach`` per dimension of the view, or None."""
  view, key = ref, (ref.root, ref.memref)
  pad = _tile_padding(ref) if dma else None
  for n_before, t in enumerate(transforms):
    if pad is not None and not isinstance(t, indexing.NDIndexer):
      pad = _reach_through(view, t, pad)
    if isinstance(t, state_types.BitcastTransform):
      origin = f"ref.bitcast from {view.dtype} to {np.dtype(t.dtype)}"
      if isinstance(view, Ref):
        cast = _bitcast_ref(view, t.dtype)
        if cast is not None:
          view, key = cast, (key, "bitcast", np.dtype(t.dtype).name)
          continue
        view = bit_views.of_ref(view, key, origin)
      view = bit_views.bitcast(view, t.dtype)
      continue
    if isinstance(t, state_types.ReshapeTransform):
      if isinstance(view, Ref):
        view = dataclasses.replace(view, memref=views.reshape(view.memref,
                                                              t.shape))
        key = (key, "reshape", tuple(t.shape))
      else:
        view = bit_views.reshape(view, t.shape)
      continue
    if isinstance(t, state_types.TransposeTransform):
      if isinstance(view, Ref):
        view = dataclasses.replace(view, memref=views.transpose(
            view.memref, t.permutation))
        key = (key, "transpose", tuple(t.permutation))
      else:
        view = bit_views.transpose(view, t.permutation)
      continue
    if not isinstance(t, indexing.NDIndexer):
      raise NotImplementedError(
          f"pallas_cpu: ref transform {type(t).__name__} is not supported yet")
    limits = (views.sizes_of(view.memref) if isinstance(view, Ref)
              else list(view.shape))
    sub, pad = _resolve_indexer(ctx, view.shape, t, ref, n_before > 0,
                                limits=limits, pad=pad, dma=dma)
    if sub is None:
      continue
    if isinstance(view, Ref):
      offsets, sizes, steps, drop = sub
      view = dataclasses.replace(view, memref=views.subview(
          view.memref, offsets, sizes, steps, drop))
      key = (key, tuple(offsets), tuple(sizes), tuple(steps), tuple(drop))
    else:
      view = bit_views.index(ctx, view, *sub)
  return view, key, pad


# -- DMA windows in a buffer's tile padding -------------------------------------
# On TPU every buffer outside SMEM is stored in whole tiles
# (``tpu_info.infer_tiling``: (8, 128) elements for 32-bit types), so a DMA
# may reach past the array's logical end into the padding of its last tile.
# emit_pipeline relies on it: the block at the edge of an array whose size
# is not a multiple of the block is rounded up to the tiling
# (pipeline._create_blocked_slice), and so are BoundedSlice blocks.  Mosaic
# does this; TPU interpret mode does it under buffer_bounds="padded" (its
# default, "logical", raises).  Here such a DMA reads the uninitialized
# value where its source lies past the logical end and drops what it would
# write past the destination's (runtime/dma.cc, PadDma); its semaphore
# counts the whole window, as on TPU.  A window past the padded shape is
# out of bounds.


class Reach(NamedTuple):
  """One dimension of a DMA window's view: ``room``, how far a window in it
  may reach (past the view's end only where that is tile padding), and
  ``valid``, how many of its leading elements exist (None: all of them)."""
  room: views.Index
  valid: views.Index | None


def _tile_padding(ref: Ref) -> list[Reach] | None:
  """A kernel ref's reach per dimension: up to the tile-padded size, with
  the logical size valid; None when no dimension is padded (nor for SMEM,
  semaphores and 64-bit types, which TPU does not tile)."""
  t = ir.MemRefType(ref.memref.type)
  space = (ir.StringAttr(t.memory_space).value
           if t.memory_space is not None else None)
  if (ref.sem_id is not None or space in (memory_spaces.SMEM,
                                          memory_spaces.SEMAPHORE)
      or not t.shape or any(s < 0 for s in t.shape)
      or types.dtype_bits(ref.dtype) > 32):
    return None
  # (The tiling of the TPU the kernel was traced for: emit_pipeline rounds
  # its edge blocks with the same function.)
  try:
    tiling = tpu_info.infer_tiling(jax_core.ShapedArray(t.shape, ref.dtype))
  except ValueError:  # no TPU known to tile for: logical bounds
    return None
  pad = [Reach(-(-n // k) * k, n) if k and n % k else Reach(n, None)
         for n, k in zip(t.shape, tiling)]
  if all(r.valid is None for r in pad):
    return None
  return pad


def _fold(op, *args):
  """``op`` of index values, folded when every argument is an int."""
  if all(isinstance(a, int) for a in args):
    return {"sub": lambda a, b: a - b, "min": min, "max": max,
            "ceildiv": lambda a, b: -(-a // b),
            "ge": lambda a, b: a >= b}[op](*args)
  a = [views.as_index(x) for x in args]
  if op == "ge":
    return arith.cmpi(arith.CmpIPredicate.sge, *a)
  return {"sub": arith.subi, "min": arith.minsi, "max": arith.maxsi,
          "ceildiv": arith.ceildivsi}[op](*a)


def _reach_after(reach: Reach, start, size, step) -> Reach:
  """The reach of a window [start, start + size*step) of a dimension:
  clamp(ceil((valid - start) / step), 0, size) of its elements exist, and
  a window that runs to the end of those (step 1) may reach on into the
  padding after it, as far as the dimension's own room."""
  if reach.valid is None:
    return Reach(size, None)
  valid = _fold("min", _fold("max", _fold("ceildiv", _fold(
      "sub", reach.valid, start), step), 0), size)
  if step != 1:
    return Reach(size, valid)
  to_end = _fold("ge", size, _fold("sub", reach.valid, start))
  if isinstance(to_end, bool):
    room = _fold("sub", reach.room, start) if to_end else size
  else:
    room = arith.select(to_end, views.as_index(_fold("sub", reach.room,
                                                     start)),
                        views.as_index(size))
  return Reach(room, valid)


def _reach_through(view, t, pad: list[Reach]) -> list[Reach] | None:
  """A DMA window's reach past a transform that is not an indexer: kept by
  an equal-width bitcast, permuted by a transpose; a reshape of a window
  that may reach into padding is not supported (its rows would mix data
  and padding), one that does not has none."""
  if isinstance(t, state_types.TransposeTransform):
    return [pad[p] for p in t.permutation]
  if isinstance(t, state_types.BitcastTransform) and isinstance(view, Ref) \
      and types.dtype_bits(view.dtype) == types.dtype_bits(t.dtype):
    return pad
  sizes = views.sizes_of(view.memref) if isinstance(view, Ref) else view.shape
  if all(r.valid is None or (isinstance(r.valid, int) and r.valid == n)
         for r, n in zip(pad, sizes)):
    return None  # nothing past the end: the view's own bounds from here
  raise NotImplementedError(
      f"pallas_cpu: a {type(t).__name__} of a DMA window that may reach "
      "past its array's end into tile padding")


def dma_window(ctx, x) -> tuple[Ref, list | None]:
  """A DMA's source or destination (a Ref or a TransformedRef) as a view,
  whose sizes may be known only at run time, and how many of its elements
  lie inside the ref's logical shape per dimension (None: all of them;
  see "DMA windows in a buffer's tile padding")."""
  if isinstance(x, state_types.TransformedRef):
    ref, transforms = x.ref, x.transforms
  else:
    ref, transforms = x, ()
  view, _, pad = _resolve(ctx, ref, transforms, dma=True)
  if isinstance(view, bit_views.BitView):
    raise NotImplementedError(
        f"pallas_cpu: {view.origin} changes the element width, which only "
        "plain ref loads and stores (ref[...], ref[...] = v) support; not "
        "DMAs, masked loads/stores or other ref uses")
  if pad is None:
    return view, None
  sizes = views.sizes_of(view.memref)
  valid = [n if r.valid is None else r.valid for r, n in zip(pad, sizes)]
  if all(isinstance(v, int) and v == n for v, n in zip(valid, sizes)):
    return view, None
  return view, valid


def apply_indexers(ctx, ref: Ref, transforms) -> tuple[Ref, tuple]:
  """``resolve`` for uses that need a memref (DMAs, masked loads and
  stores, semaphores)."""
  view, key = resolve(ctx, ref, transforms)
  if isinstance(view, bit_views.BitView):
    raise NotImplementedError(
        f"pallas_cpu: {view.origin} changes the element width, which only "
        "plain ref loads and stores (ref[...], ref[...] = v) support; not "
        "DMAs, masked loads/stores or other ref uses")
  return view, key


# -- masked accesses whose window crosses the ref's end ------------------------
# ``pl.load(ref, (pl.ds(start, n),), mask=m)`` / ``pl.store(..., mask=m)``
# with start + n > len: interpret mode allows it (it pads the ref with the
# uninitialized value, reads see the padding, writes there are dropped); TPU
# does not.  Here such a window is a private copy of the window: filled with
# the uninitialized value, the in-bounds part copied in (and back, for a
# store) -- masked-off elements past the end are never read or written in
# the ref.  A mask that is true past the end is a run-time "ref index out of
# bounds" error, as an unmasked access is.
# TPU compatibility: Mosaic does not bounds-check dynamic windows, so on a
# TPU such an access reaches past the ref.  Only a traced start can cross
# (JAX rejects static windows past the end at trace time), so the check is
# at run time: under tpu_checks="warn" (pallas_cpu/tpu_checks.py) the first
# window that crosses at a site warns (TpuCompatibilityWarning, once per
# site in the process), under "error" it fails the call, under "off" no
# code is generated.


@dataclasses.dataclass
class Crossing:
  """A masked access's window that may cross its ref's end."""
  access: Ref                 # the in-bounds part of the window, in the ref
  inside: ir.Value            # i1: the window lies inside the ref
  copy: ir.Value              # the in-bounds part of the private copy
  dims: list                  # (window dim, kept dim, start, extent, limit,
                              #  in-bounds count)
  shape: tuple                # the window's (the view's) shape
  site: int                   # the bounds report's site (_access_site)
  tpu_site: int | None = None  # the TPU check's site; None: tpu_checks off

  def check(self, ctx, mask: values.Value) -> None:
    """Reports (at run time) a mask that is true past the ref's end;
    ``mask`` has the view's shape."""
    kctx = ctx.kernel
    if_op = scf.IfOp(arith.xori(self.inside, _true()))
    with ir.InsertionPoint(if_op.then_block):
      flag = kctx.alloc((), np.int8)
      i8 = ir.IntegerType.get_signless(8)
      for d, kept, start, extent, limit, count in self.dims:
        memref.store(arith.constant(i8, 0), flag, [])

        def body(ivs, kept=kept, count=count):
          m = (mask.value if isinstance(mask, values.Scalar)
               else values.evaluate_at(mask.node, ivs))
          past = arith.cmpi(arith.CmpIPredicate.sge, ivs[kept], count)
          hit = scf.IfOp(arith.andi(m, past))
          with ir.InsertionPoint(hit.then_block):
            memref.store(arith.constant(i8, 1), flag, [])
            scf.YieldOp([])
        loop_nest([views.as_index(n) for n in self.shape], body)
        found = arith.cmpi(arith.CmpIPredicate.ne, memref.load(flag, []),
                           arith.constant(i8, 0))
        report = scf.IfOp(found)
        with ir.InsertionPoint(report.then_block):
          _report_window(ctx, self.site, d, start, extent, limit)
          scf.YieldOp([])
      if self.tpu_site is not None:
        self._check_for_tpu(ctx)
      scf.YieldOp([])

  def _check_for_tpu(self, ctx) -> None:
    """Reports (at run time: the window is not inside) each dimension
    whose window crosses the ref's end, as tpu_checks says (abi.h,
    pallas_cpu_rt_crossing_window_at)."""
    kctx = ctx.kernel
    i64 = ir.IntegerType.get_signless(64)
    mode = abi.TPU_CHECK_MODES[tpu_checks.mode_of(kctx.params)]
    for d, _, start, extent, limit, _ in self.dims:
      end = arith.addi(start, views.as_index(extent))
      crosses = scf.IfOp(arith.cmpi(arith.CmpIPredicate.sgt, end,
                                    views.as_index(limit)))
      with ir.InsertionPoint(crosses.then_block):
        kctx.call_runtime(abi.RT_CROSSING_WINDOW_AT, [
            kctx.runtime_ctx, arith.constant(i64, self.tpu_site),
            arith.constant(i64, d), arith.index_cast(i64, start),
            arith.constant(i64, extent), arith.constant(i64, limit),
            arith.constant(i64, mode), kctx.grid_index()])
        scf.YieldOp([])

  def write_back(self) -> None:
    """After a store: the in-bounds part of the copy goes to the ref."""
    if_op = scf.IfOp(arith.xori(self.inside, _true()))
    with ir.InsertionPoint(if_op.then_block):
      linalg.copy(self.copy, outs=[self.access.memref])
      scf.YieldOp([])


def _tpu_site(ctx, ref, shape, transformed: bool) -> int | None:
  """The site of a crossing window's TPU check; None when the checks are
  off (no check generated: the mode selects the code, hence the kernel
  id)."""
  if tpu_checks.mode_of(ctx.kernel.params) == "off":
    return None
  eqn = getattr(ctx, "eqn", None)
  store = eqn is not None and eqn.primitive.name == "masked_swap"
  desc = _describe_view(ctx, ref, shape, transformed)
  tpu = ("on a TPU this store's window would reach past the ref's end "
         "(Mosaic does not bounds-check dynamic windows; only the mask "
         "keeps the write inside)" if store else
         "on a TPU this load would read past the ref's end (Mosaic does "
         "not bounds-check dynamic windows)")
  return ctx.kernel.site(f"masked {'store to' if store else 'load of'} "
                         f"{desc}\t{ctx.source}\t{tpu}")


def _true() -> ir.Value:
  return arith.constant(ir.IntegerType.get_signless(1), 1)


def _is_constant_true(v) -> bool:
  node = v.node if isinstance(v, values.Array) else None
  value = v.value if isinstance(v, values.Scalar) else (
      node.value if isinstance(node, values.Splat) else None)
  if value is None:
    return False
  op = getattr(value.owner, "operation", value.owner)
  if not (isinstance(op, ir.Operation) and op.name == "arith.constant"):
    return False
  attr = op.attributes["value"]
  if isinstance(attr, ir.BoolAttr):
    return ir.BoolAttr(attr).value
  return views.constant_int(value) in (1, -1)


def _is_whole(ctx, t: indexing.NDIndexer) -> bool:
  """Whether an indexer selects the whole view it indexes."""
  return len(t.indices) == len(t.shape) and all(
      isinstance(i, indexing.Slice) and _index(ctx, i.start) == 0
      and int(i.stride) == 1 and _index(ctx, i.size) == n
      for i, n in zip(t.indices, t.shape))


def resolve_masked(ctx, ref: Ref, transforms, mask):
  """For a masked load or store: (view, key, Crossing) where the window
  the last indexer selects (any after it select the whole of it) may
  cross the ref's end; None where it cannot (the caller resolves the
  transforms as usual), or where the mask is statically all true (an
  unmasked access)."""
  transforms = list(transforms)
  k = len(transforms) - 1
  while k >= 0 and isinstance(transforms[k], indexing.NDIndexer) and \
      _is_whole(ctx, transforms[k]):
    k -= 1
  if (mask is None or _is_constant_true(mask) or k < 0
      or not isinstance(transforms[k], indexing.NDIndexer)
      or split_at_index_arrays(transforms)[1]
      or any(isinstance(t, state_types.BitcastTransform)
             for t in transforms[:k])):
    return None
  t = transforms[k]
  if not _may_cross(ctx, t):
    return None
  before, key = resolve(ctx, ref, transforms[:k])
  return _crossing_window(ctx, before, key, t, ref, k > 0)


def _may_cross(ctx, t: indexing.NDIndexer) -> bool:
  for idx, limit in zip(t.indices, t.shape):
    if not isinstance(idx, indexing.Slice):
      continue
    if not isinstance(_index(ctx, idx.size), int):
      return False  # a dynamic size: not a crossing window
    if not int(idx.size):
      continue
    start = _index(ctx, idx.start)
    if not isinstance(start, int):
      return True
    extent = (int(idx.size) - 1) * int(idx.stride) + 1
    if 0 <= start <= limit and start + extent > limit:
      return True
  return False


def _checked_crossing_start(ctx, start: ir.Value, extent: int, limit: int,
                            dim: int, site: int) -> ir.Value:
  """A crossing window's dynamic start: reported (and clamped) when
  negative or past the end."""
  idx = views.as_index(start)
  lo, hi = views.as_index(0), views.as_index(limit)
  bad = arith.ori(arith.cmpi(arith.CmpIPredicate.slt, idx, lo),
                  arith.cmpi(arith.CmpIPredicate.sgt, idx, hi))
  if_op = scf.IfOp(bad)
  with ir.InsertionPoint(if_op.then_block):
    _report_window(ctx, site, dim, idx, extent, limit)
    scf.YieldOp([])
  return arith.minsi(arith.maxsi(idx, lo), hi)


def _crossing_window(ctx, view: Ref, key, t: indexing.NDIndexer, ref,
                     transformed: bool):
  """The window ``t`` selects, where it may cross the view's end: the view
  in place when inside (checked at run time), else a private copy; None
  when no dimension can cross (static windows inside)."""
  kctx = ctx.kernel
  shape = view.shape
  site = _access_site(ctx, ref, shape, transformed)
  offsets, sizes, steps, drop = [], [], [], []
  for d, idx in enumerate(t.indices):
    if isinstance(idx, indexing.Slice):
      start, size, step = _index(ctx, idx.start), int(idx.size), int(idx.stride)
    else:
      start, size, step = _index(ctx, idx), 1, 1
      drop.append(d)
    offsets.append(start)
    sizes.append(size)
    steps.append(step)
  cross = []
  for d in range(len(offsets)):
    extent = (sizes[d] - 1) * steps[d] + 1 if sizes[d] else 0
    start, limit = offsets[d], shape[d]
    if d in drop or not sizes[d]:
      can_cross = False
    elif isinstance(start, int):
      can_cross = 0 <= start <= limit and start + extent > limit
    else:
      can_cross = True
    if can_cross:
      cross.append(d)
    elif isinstance(start, int):
      _check_static(ctx, shape, d, offsets, sizes, steps, drop, ref,
                    transformed)
    else:
      offsets[d] = _checked_start(ctx, start, sizes[d], steps[d], limit, d,
                                  site)
  if not cross:
    return None
  # Crossing dims: a negative start is still an error (reported, clamped);
  # the in-bounds count is clamp(ceil((limit - start) / step), 0, size).
  # A static start past the end: never inside (no in-place window, whose
  # static bounds MLIR would reject).
  never_inside = any(isinstance(offsets[d], int) for d in cross)
  inside, counts, dims = None, list(sizes), []
  clipped = list(offsets)
  kept = [d for d in range(len(sizes)) if d not in drop]
  for d in cross:
    extent = (sizes[d] - 1) * steps[d] + 1
    limit = shape[d]
    if isinstance(offsets[d], int):
      start = views.as_index(offsets[d])
    else:
      start = _checked_crossing_start(ctx, offsets[d], extent, limit, d,
                                      site)
    offsets[d] = clipped[d] = start
    rest = arith.subi(views.as_index(limit), start)
    n = arith.divsi(arith.addi(rest, views.as_index(steps[d] - 1)),
                    views.as_index(steps[d]))
    counts[d] = arith.minsi(n, views.as_index(sizes[d]))
    ok = arith.cmpi(arith.CmpIPredicate.sle,
                    arith.addi(start, views.as_index(extent)),
                    views.as_index(limit))
    inside = ok if inside is None else arith.andi(inside, ok)
    dims.append((d, kept.index(d), start, extent, limit, counts[d]))
  win_shape = [sizes[d] for d in kept]
  mt = ir.MemRefType(view.memref.type)
  space = mt.memory_space
  space_name = ir.StringAttr(space).value if space is not None else "vmem"
  copy = views.with_layout(kctx.alloc(win_shape, view.dtype, space_name,
                                      name="the window copy of a masked "
                                      f"access at {ctx.source}"))
  access = views.subview(view.memref, clipped, counts, steps, drop)
  copy_part = views.subview(copy, [0] * len(kept), [counts[d] for d in kept])
  common = types.memref_type(win_shape, view.dtype, space,
                             [None] * len(win_shape))

  def fetch():
    kctx.store(buffers.uninitialized_scalar(kctx, view.dtype), copy)
    linalg.copy(access, outs=[copy_part])
    return views.with_layout(copy, [None] * len(win_shape))

  if never_inside:
    inside = arith.constant(ir.IntegerType.get_signless(1), 0)
    window = fetch()
  else:
    if_op = scf.IfOp(inside, [common], has_else=True)
    with ir.InsertionPoint(if_op.then_block):
      inplace = views.subview(view.memref, offsets, sizes, steps, drop)
      scf.YieldOp([views.with_layout(inplace, [None] * len(win_shape))])
    with ir.InsertionPoint(if_op.else_block):
      scf.YieldOp([fetch()])
    window = if_op.results[0]
  new_view = dataclasses.replace(view, memref=window)
  new_key = (key, "masked window", id(copy))
  crossing = Crossing(dataclasses.replace(view, memref=access), inside,
                      copy_part, dims, tuple(win_shape), site,
                      _tpu_site(ctx, ref, shape, transformed))
  return new_view, new_key, crossing


def load(view: Ref, key) -> values.Value:
  """The value of a memref view (lazy; a scalar load now at rank 0)."""
  if not view.shape:
    return values.load_scalar(view.memref, view.dtype)
  return values.load_array(view.memref, view.dtype, root=view.root, key=key)


def _load_any(ctx, view, key) -> values.Value:
  if isinstance(view, bit_views.BitView):
    return bit_views.load(ctx, view)
  return load(view, key)


def note_access(ctx, view, *, write: bool) -> None:
  """Tells the race-detecting build of a read or write of ``view``."""
  if not race_hooks.enabled(ctx.kernel):
    return
  parts = ([p.ref for g in view.groups for p in g]
           if isinstance(view, bit_views.BitView) else [view])
  for part in parts:
    name = buffers.describe_ref(ctx.kernel, part)
    race_hooks.access(ctx.kernel, part.memref, part.dtype, write=write,
                      what=f"{'write' if write else 'read'} of {name} at "
                      f"{ctx.source}")


def _is_index_array(i) -> bool:
  return isinstance(i, values.Array) and i.shape != ()


def split_at_index_arrays(transforms) -> tuple[list, list]:
  """The transforms before the first indexer holding an array of indices
  (a view), and the rest (a gather/scatter), empty when there is none."""
  transforms = list(transforms)
  for k, t in enumerate(transforms):
    if isinstance(t, indexing.NDIndexer) and any(
        _is_index_array(i) for i in t.indices):
      return transforms[:k], transforms[k:]
  return transforms, []


def _leaf_avals(leaves):
  return [jax_core.ShapedArray(tuple(v.shape), v.dtype) for v in leaves]


def indexed_read(ctx, value: values.Value, rest) -> values.Value:
  """``value`` (a view's contents) through ``rest``, transforms that index
  with arrays: lowered from the discharge rule interpret mode runs
  (``state.discharge.transform_array``: numpy indexing, a ``gather``), so
  out-of-bounds and negative indices behave exactly as there."""
  leaves, tree = tree_util.tree_flatten(rest)

  def fn(x, *flat):
    return state_discharge.transform_array(
        x, tree_util.tree_unflatten(tree, flat))
  return jaxpr_lowering.lower_fun(
      ctx, fn, value, *leaves, avals_in=_leaf_avals([value, *leaves]))


def indexed_write(ctx, value: values.Value, rest, val: values.Value,
                  mask: values.Value | None = None):
  """(the old value at ``rest``, ``value`` with ``val`` written at
  ``rest``): ``transform_swap_array``, interpret mode's discharge of a swap
  through array indices (a ``scatter``: later duplicates win, out-of-bounds
  updates dropped as there).  With a ``mask`` (``pl.store``), masked-off
  elements keep their old value and the old value is returned where the
  mask is true, the stored one elsewhere, as ``masked_swap``'s discharge
  does."""
  leaves, tree = tree_util.tree_flatten(rest)
  extra = [] if mask is None else [mask]

  def fn(x, v, *flat):
    m, flat = (flat[0], flat[1:]) if extra else (None, flat)
    t = tree_util.tree_unflatten(tree, flat)
    if m is None:
      return state_discharge.transform_swap_array(x, t, v)
    old = state_discharge.transform_array(x, t)
    _, new_x = state_discharge.transform_swap_array(x, t,
                                                    jnp.where(m, v, old))
    return jnp.where(m, old, v), new_x
  old, new = jaxpr_lowering.lower_fun(
      ctx, fn, value, val, *extra, *leaves,
      avals_in=_leaf_avals([value, val, *extra, *leaves]),
      multiple_results=True)
  return old, new


def swap_through_index_arrays(ctx, ref: Ref, transforms, val,
                              mask: values.Value | None = None):
  """``o_ref[idx] = v`` (``pl.store(o_ref, (idx,), v, mask=m)``) through an
  array of indices: the whole view before the index array is rewritten
  with the scattered value (``indexed_write``); the old value if used."""
  kctx = ctx.kernel
  before, rest = split_at_index_arrays(transforms)
  view, key = resolve(ctx, ref, before)
  note_access(ctx, view, write=False)
  old, new = indexed_write(ctx, _load_any(ctx, view, key), rest, val, mask)
  old = kctx.as_temp(old) if ctx.outs_used[0] else None
  note_access(ctx, view, write=True)
  _store_any(ctx, view, key, new)
  return old


@register(state_primitives.get_p)
def get(ctx, ref, *idx, tree):
  """``ref[idx]`` (also the unmasked part of masked loads, rules/layout.py);
  an index array (``x_ref[idx_ref[...], :]``) reads the view before it and
  gathers from it."""
  before, rest = split_at_index_arrays(tree_util.tree_unflatten(tree, idx))
  view, key = resolve(ctx, ref, before)
  note_access(ctx, view, write=False)
  value = _load_any(ctx, view, key)
  if rest:
    return indexed_read(ctx, value, rest)
  return value


def reads_differently(node, root, key) -> bool:
  """Whether evaluating ``node`` reads ``root`` anywhere but exactly at the
  point it would write through ``key`` -- then writing in place is unsafe."""
  if isinstance(node, values.Load):
    return node.root == root and (
        node.key != key or node.index_map != values.identity_map(
            len(node.index_map)))
  if isinstance(node, values.Op):
    return any(reads_differently(a, root, key) for a in node.args)
  return False


@register(state_primitives.swap_p, pure=False, takes_lazy_operands=True)
def swap(ctx, ref, val, *idx, tree):
  """``ref[idx] = val``, returning the old value when it is used (also
  unmasked stores, rules/layout.py)."""
  kctx = ctx.kernel
  transforms = tree_util.tree_unflatten(tree, idx)
  if split_at_index_arrays(transforms)[1]:
    return swap_through_index_arrays(ctx, ref, transforms, val)
  view, key = resolve(ctx, ref, transforms)
  old = None
  if ctx.outs_used[0]:
    note_access(ctx, view, write=False)
    old = kctx.as_temp(_load_any(ctx, view, key))
  note_access(ctx, view, write=True)
  _store_any(ctx, view, key, val)
  return old


def _store_any(ctx, view, key, val) -> None:
  """Writes ``val`` into a view, computing it first where it reads the
  view's storage anywhere else than where it writes."""
  if isinstance(view, bit_views.BitView):
    bit_views.store(ctx, view, val, reads_differently)
    return
  if isinstance(val, values.Array) and reads_differently(val.node, view.root,
                                                         key):
    val = ctx.kernel.as_temp(val)
  ctx.kernel.store(val, view.memref)


@register(pallas_primitives.run_scoped_p, barrier=True)
def _run_scoped(ctx, *consts, jaxpr, collective_axes, ref_transforms=None,
                **_):
  """Scoped scratch: buffers refilled with the uninitialized value on every
  entry, semaphores zero (storage itself is hoisted)."""
  if collective_axes:
    raise NotImplementedError("pallas_cpu: run_scoped with collective_axes")
  if ref_transforms and any(ref_transforms):
    raise NotImplementedError("pallas_cpu: run_scoped with ref transforms")
  kctx = ctx.kernel
  refs = []
  for i, v in enumerate(jaxpr.invars):
    name = f"run_scoped ref {i} at {ctx.source}"
    ref = buffers.allocate_ref(kctx, v.aval, ("scoped", id(v)), name)
    if ref.sem_id is not None:
      # Zero at kernel entry, and checked (and zeroed in "warn"/"off"
      # modes) when the scope ends -- not zeroed when it opens: another
      # device may signal it before this one gets there (a barrier).
      buf = kctx.semaphore_arrays.pop(ref.sem_id)
      refs.append((ref, buf))
    else:
      refs.append((ref, kctx.site(name)))
  outs = jaxpr_lowering.lower_jaxpr(kctx, jaxpr, [r for r, _ in refs],
                                    consts=consts, parent=ctx.source)
  # The scope ends: its buffers are free for reuse (on TPU too), so a DMA
  # still using one is an error; its semaphores must be settled.
  grid_index = kctx.grid_index()
  for ref, owner in refs:
    if ref.sem_id is None:
      buffers.buffer_exit(kctx, ref, owner, grid_index)
  for ref, owner in refs:
    if ref.sem_id is not None:
      buffers.semaphore_exit(kctx, owner, ref.sem_id, scoped=True,
                             grid_index=grid_index)
  return outs
