"""The grid: loop nest, index maps and block windows around the kernel body.

For every grid point (row-major, last dimension fastest, as on TPU) the
index maps are evaluated in compiled code, each BlockSpec operand gets its
block as a ``vmem`` view of the ``hbm`` operand -- in place when the block
lies inside the array, a padded copy at edge blocks (padding reads see the
uninitialized-memory fill; writes to it are dropped) -- and the body runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import numpy as np
from jax._src import core as jax_core
from jax._src.pallas import core as pallas_core
from jax._src.state import types as state_types
from mlir import ir
from mlir.dialects import arith, linalg, memref, scf

from pallas_cpu import abi
from pallas_cpu.lowering import buffers, fusion, race_hooks
from pallas_cpu.lowering import jaxpr as jaxpr_lowering
from pallas_cpu.lowering import memory_spaces, types, values, views
from pallas_cpu.lowering.context import KernelContext, Ref, scalar_of
from pallas_cpu.lowering.scalars import cmpi


@dataclasses.dataclass
class _Dim:
  kind: str        # "blocked" | "squeezed" | "element"
  size: int        # block size along the array dimension
  array_size: int
  pad_lo: int = 0  # Element(size, padding=(pad_lo, pad_hi))
  pad_hi: int = 0

  @property
  def extent(self) -> int:
    """Element: the padded length the index map's element offsets address
    -- the array with its padding, rounded up to whole blocks, as
    interpret mode pads it; a window starts in [0, extent - size]."""
    total = self.pad_lo + self.array_size + self.pad_hi
    return -(-total // self.size) * self.size

  @property
  def may_cross(self) -> bool:
    """Whether a block can leave the array (an edge: a padded copy)."""
    if self.kind == "blocked":
      return self.array_size % self.size != 0
    if self.kind == "element":
      return self.pad_lo > 0 or self.extent != self.array_size
    return False


def _block_dims(bm, origin: str) -> list[_Dim]:
  dims = []
  for b, n in zip(bm.block_shape, bm.array_aval.shape):
    if isinstance(b, pallas_core.Blocked):
      dims.append(_Dim("blocked", b.block_size, n))
    elif isinstance(b, pallas_core.Squeezed):
      dims.append(_Dim("squeezed", 1, n))
    elif isinstance(b, pallas_core.Element):
      # The index map gives the block's first element in the array padded
      # by (pad_lo, pad_hi): padding reads the uninitialized value, writes
      # there are dropped (interpret mode's semantics).
      lo, hi = (int(p) for p in b.padding)
      if b.block_size <= 0 or lo < 0 or hi < 0:
        raise ValueError(f"pallas_cpu: invalid block dimension {b} of "
                         f"{origin}")
      dims.append(_Dim("element", b.block_size, n, lo, hi))
    else:
      raise NotImplementedError(
          f"pallas_cpu: block dimension {b!r} of {origin} is not supported "
          "(supported: Blocked, Element, Squeezed/None; BoundedSlice and "
          "Indirect have no pallas_call semantics in interpret mode or "
          "Mosaic -- they are emit_pipeline block dimensions)")
  return dims


def _or(a, b):
  return b if a is None else a if b is None else arith.ori(a, b)


def _and(a, b):
  return b if a is None else a if b is None else arith.andi(a, b)


class BlockWindow:
  """One BlockSpec operand: its array, block geometry and per-step view.

  A block is one of:
  - a view of the operand in place (the block lies inside the array);
  - where edge blocks can occur, that view or, at an edge, a padded copy;
  - always a private copy: blocks larger than the array, inputs the kernel
    writes (on TPU it writes its VMEM copy, never the caller's array),
    inputs an output aliases with the same blocks (``alias_plan``), and
    outputs that several threads may share (each TPU core has its own).
  Copies are refreshed only when the block changes between steps: like a
  TPU pipeline, a block that stays resident keeps what the kernel wrote,
  padding included.  Outputs are written back (the in-bounds part).
  """

  def __init__(self, kctx: KernelContext, operand_index: int, array: ir.Value,
               bm, root, is_output: bool, n_inputs: int,
               private: bool = False):
    self.kctx = kctx
    self.n_inputs = n_inputs
    self.operand_index = operand_index
    self.array = array
    self.bm = bm
    self.root = root
    self.is_output = is_output
    self.dtype = np.dtype(bm.array_aval.dtype)
    self.space = memory_spaces.from_pallas(
        bm.transformed_block_aval.memory_space)
    self.whole = self.space in (memory_spaces.ANY, memory_spaces.HBM)
    if self.whole:
      return
    if 0 in tuple(bm.array_aval.shape):
      kind = "output" if is_output else "input"
      raise NotImplementedError(
          f"pallas_cpu: {kind} {bm.origin} has zero-size shape "
          f"{tuple(bm.array_aval.shape)}; blocked operands with an empty "
          f"dimension are not supported (pass it with "
          f"memory_space=pl.ANY, or skip the pallas_call)")
    # A copy's padding is filled with the uninitialized value (``fill``)
    # and its in-bounds part read from the array (``load``), unless
    # ``padding_plan`` shows the kernel never observes them.
    self.fill = self.load = True
    self.dims = _block_dims(bm, bm.origin)
    self.edge_dims = [k for k, d in enumerate(self.dims) if d.may_cross]
    self.private = private or any(d.size > d.array_size for d in self.dims)
    self.may_edge = bool(self.edge_dims) and not self.private
    self.copies = self.private or self.may_edge
    self.kept = [i for i, d in enumerate(self.dims) if d.kind != "squeezed"]
    self.block_shape = tuple(self.dims[i].size for i in self.kept)
    if self.copies:
      full = tuple(d.size for d in self.dims)
      kind = "output" if is_output else "input"
      self.pad = views.with_layout(kctx.alloc(
          full, self.dtype, self.space, name=f"the block copy of {kind} "
          f"{bm.origin}"))
      # Element offset of the block the copy holds (-1: none).
      self.resident = kctx.alloc((), np.int64)
      with kctx.init_ip:
        memref.store(arith.constant(ir.IntegerType.get_signless(64), -1),
                     self.resident, [])
    if self.may_edge:
      # Both the in-place view and the padded buffer are cast to this type.
      inner_unit = bool(self.kept) and self.kept[-1] == len(self.dims) - 1
      strides = [None] * len(self.kept)
      if inner_unit:
        strides[-1] = 1
      self.view_type = types.memref_type(
          self.block_shape, self.dtype, memory_spaces.attr(self.space), strides)

  def open(self, starts: list[ir.Value], band=None) -> ir.Value:
    """The block at ``starts`` (index values) as the kernel's memref;
    ``band=(first row, rows)``: only those rows of its first kept
    dimension (a row split, ``RowSplit``; such blocks are never copies)."""
    space = memory_spaces.attr(self.space)
    sizes = [d.size for d in self.dims]
    drop = [i for i, d in enumerate(self.dims) if d.kind == "squeezed"]
    self.starts = starts
    if band is not None:
      assert not self.copies
      d0 = self.kept[0]
      starts = list(starts)
      starts[d0] = arith.addi(views.as_index(starts[d0]), band[0])
      sizes[d0] = band[1]
    if not self.copies:
      return views.space_cast(views.subview(self.array, starts, sizes, drop=drop),
                              space)
    if self.private:
      self._fetch()
      return views.subview(self.pad, [0] * len(sizes), sizes, drop=drop)
    self.in_bounds = None
    for k in self.edge_dims:
      end = arith.addi(views.as_index(starts[k]),
                       views.as_index(self.dims[k].size))
      self.in_bounds = _and(self.in_bounds, cmpi(
          "sle", end, views.as_index(self.dims[k].array_size)))
      if self.dims[k].pad_lo:
        self.in_bounds = _and(self.in_bounds, cmpi(
            "sge", views.as_index(starts[k]), views.as_index(0)))
    if_op = scf.IfOp(self.in_bounds, [self.view_type], has_else=True)
    with ir.InsertionPoint(if_op.then_block):
      memref.store(arith.constant(ir.IntegerType.get_signless(64), -1),
                   self.resident, [])
      view = views.space_cast(views.subview(self.array, starts, sizes, drop=drop),
                              space)
      scf.YieldOp([views.with_layout(view, types.memref_strides(self.view_type))])
    with ir.InsertionPoint(if_op.else_block):
      self._fetch()
      view = views.subview(self.pad, [0] * len(sizes), sizes, drop=drop)
      scf.YieldOp([views.with_layout(view, types.memref_strides(self.view_type))])
    return if_op.results[0]

  def _fetch(self) -> None:
    """Fills the copy with the block -- padding with the uninitialized
    value -- unless it already holds it (the same block as the last step)."""
    offset = block_offset(self, self.starts)
    fresh = cmpi("ne", offset, memref.load(self.resident, []))
    if_op = scf.IfOp(fresh)
    with ir.InsertionPoint(if_op.then_block):
      if self.fill:
        self.kctx.store(buffers.uninitialized_scalar(self.kctx, self.dtype),
                        self.pad)
      if self.load:
        src, dst = self._valid_regions()
        self._note(src, write=False)
        linalg.copy(src, outs=[dst])
      memref.store(offset, self.resident, [])
      scf.YieldOp([])

  def close(self) -> None:
    """Writes an output's copied block back (the in-bounds part only)."""
    if self.whole or not self.copies or not self.is_output:
      return
    if self.private:
      src, dst = self._valid_regions()
      self._note(src, write=True)
      linalg.copy(dst, outs=[src])
      return
    true = arith.constant(ir.IntegerType.get_signless(1), 1)
    edge = arith.xori(self.in_bounds, true)
    if_op = scf.IfOp(edge)
    with ir.InsertionPoint(if_op.then_block):
      src, dst = self._valid_regions()
      self._note(src, write=True)
      linalg.copy(dst, outs=[src])
      scf.YieldOp([])

  def _note(self, window: ir.Value, *, write: bool) -> None:
    """The block copy reads (copy-in) or writes (write-back) the operand's
    window: an access of the kernel's, for the race-detecting build."""
    kind = "output" if self.is_output else "input"
    race_hooks.access(
        self.kctx, window, self.dtype, write=write,
        what=f"grid pipeline: {'write-back' if write else 'copy-in'} of "
        f"the {kind} block of {self.bm.origin!r}")

  def _valid_regions(self):
    """(array window, padded-buffer window) of the in-bounds part."""
    sizes, src_offsets, dst_offsets = [], [], []
    for d, s in zip(self.dims, self.starts):
      if d.kind == "element" and (d.may_cross or d.size > d.array_size):
        # [max(s, 0), min(s + size, n)) of the array, from max(-s, 0) in
        # the block (empty when the block lies in the padding).
        s = views.as_index(s)
        zero = views.as_index(0)
        lo = arith.minsi(arith.maxsi(s, zero), views.as_index(d.array_size))
        hi = arith.minsi(arith.addi(s, views.as_index(d.size)),
                         views.as_index(d.array_size))
        sizes.append(arith.maxsi(arith.subi(hi, lo), zero))
        src_offsets.append(lo)
        dst_offsets.append(arith.minsi(arith.maxsi(arith.subi(lo, s), zero),
                                       views.as_index(d.size)))
        continue
      if d.kind == "blocked" and (d.array_size % d.size or
                                  d.size > d.array_size):
        rest = arith.subi(views.as_index(d.array_size), views.as_index(s))
        sizes.append(arith.minsi(rest, views.as_index(d.size)))
      else:
        sizes.append(d.size)
      src_offsets.append(s)
      dst_offsets.append(0)
    src = views.subview(self.array, src_offsets, sizes)
    dst = views.subview(self.pad, dst_offsets, sizes)
    return src, dst


def block_offset(w: BlockWindow, starts) -> ir.Value:
  """The element offset (i64) of the block at ``starts``: identifies it."""
  i64 = ir.IntegerType.get_signless(64)
  # Element windows by their start in the padded array (>= 0, unique).
  strides = types.row_major_strides([d.extent if d.kind == "element"
                                     else d.array_size for d in w.dims])
  offset = arith.constant(ir.IndexType.get(), 0)
  for d, s, stride in zip(w.dims, starts, strides):
    s = views.as_index(s)
    if d.pad_lo:
      s = arith.addi(s, views.as_index(d.pad_lo))
    offset = arith.addi(offset, arith.muli(s, views.as_index(stride)))
  return arith.index_cast(i64, offset)


def build_grid(kctx: KernelContext, *, jaxpr: jax_core.Jaxpr, grid_mapping,
               index_operands: Sequence[ir.Value],
               block_operands: Sequence[ir.Value], roots: Sequence,
               scratch: Sequence[Ref], row_split: RowSplit | None = None,
               band_range: tuple[ir.Value, ir.Value] | None = None) -> None:
  """Emits the grid loop nest with index maps, windows and the body.

  With ``row_split``, each step runs the body on the row bands
  ``band_range`` of its blocks (the bands this call's thread runs), one
  after the other; index maps, bounds checks and revisit tracking stay
  those of the whole blocks."""
  gm = grid_mapping
  if row_split is not None:
    jaxpr = row_split.jaxpr
  n_in = gm.num_inputs
  n_index = len(index_operands)
  written = _written_args(jaxpr)
  plan = alias_plan(jaxpr, gm, _aliases_of(roots, n_index, n_in))
  index_refs = []
  for i, (v, a) in enumerate(zip(index_operands,
                                 gm.index_map_avals[len(gm.grid):])):
    # The kernel's SMEM copy, not the caller's array: when it writes it, or
    # an output aliases it (the copy is made once, at kernel entry, as TPU
    # copies scalar prefetch into SMEM before the first step).
    if i in written or plan.get(i) == SNAPSHOT:
      copy = kctx.alloc(ir.MemRefType(v.type).shape, a.dtype,
                        memory_spaces.SMEM)
      linalg.copy(v, outs=[copy])
      v = views.with_layout(copy)
    index_refs.append(Ref(v, ("index", i), np.dtype(a.dtype)))
  threaded = kctx.parallel_range is not None
  windows = []
  for i, (arr, bm) in enumerate(zip(block_operands, gm.block_mappings)):
    is_output = i >= n_in
    private = (not is_output and n_index + i in written) or (
        is_output and threaded and not _uses_grid_index(
            bm.index_map_jaxpr.jaxpr, kctx.parallel_range[0]))
    root = roots[i]
    how = None if is_output else plan.get(n_index + i)
    if how == SNAPSHOT:  # blocks come from the array as it was at entry
      snapshot = kctx.alloc(ir.MemRefType(arr.type).shape, bm.array_aval.dtype,
                            memory_spaces.HBM,
                            name=f"the entry copy of aliased input {bm.origin}")
      linalg.copy(arr, outs=[snapshot])
      arr = views.with_layout(snapshot)
    if how is not None:  # no longer a view of the output's storage
      private = private or how == COPY
      root = (*root, "copy")
    windows.append(BlockWindow(kctx, i, arr, bm, root, is_output=is_output,
                               n_inputs=n_in, private=private))
    # The kernel's parameter name, as interpret mode names the operand in
    # its errors.
    names = jaxpr.debug_info.arg_names if jaxpr.debug_info else None
    windows[-1].arg_name = (names[n_index + i] if names and
                            n_index + i < len(names) else "unknown")

  unfilled, unloaded = padding_plan(jaxpr, gm, windows)
  for k in unfilled:
    windows[k].fill = False
  for k in unloaded:
    windows[k].load = False

  # Per output window, the element offset of the previous step's block.
  i64 = ir.IntegerType.get_signless(64)
  last_block = {}
  for w in windows:
    if w.is_output and not w.whole:
      buf = kctx.alloc((), np.int64)
      memref.store(arith.constant(i64, -1), buf, [])
      last_block[w.operand_index] = buf

  def body(ivs: list[ir.Value]):
    ivs = [_permuted(kctx, d, iv) for d, iv in enumerate(ivs)]
    kctx.grid_ivs = list(ivs)
    kctx.program_ids = [iv for d, iv in enumerate(ivs)
                        if d not in kctx.vmapped_dims]
    i32 = ir.IntegerType.get_signless(32)
    grid_args = [values.Scalar(arith.index_cast(i32, iv), np.dtype(np.int32))
                 for iv in ivs]
    starts_per_window, ok = [], None
    for w in windows:
      if w.whole:
        starts_per_window.append(None)
        continue
      starts = _block_starts(kctx, w, grid_args, index_refs)
      starts_per_window.append(starts)
      ok = _and(ok, _check_in_bounds(kctx, w, starts))
      if w.is_output:
        _track_output_block(kctx, w, starts, last_block[w.operand_index])
    run = scf.IfOp(ok) if ok is not None else None
    with (ir.InsertionPoint(run.then_block) if run else contextlib.nullcontext()):
      bands = None
      if row_split is not None:
        bands = scf.ForOp(band_range[0], band_range[1], views.as_index(1))
      with (ir.InsertionPoint(bands.body) if bands else
            contextlib.nullcontext()):
        band = None if bands is None else (
            arith.muli(bands.induction_variable,
                       views.as_index(row_split.rows)), row_split.rows)
        refs = []
        for k, (w, starts) in enumerate(zip(windows, starts_per_window)):
          view = w.array if w.whole else w.open(
              starts, band if band and row_split.split[k] else None)
          refs.append(Ref(view, w.root, w.dtype))
        _name_refs(kctx, jaxpr, index_refs, refs, scratch, n_in)
        jaxpr_lowering.lower_jaxpr(kctx, jaxpr, [*index_refs, *refs, *scratch])
        for w in windows:
          w.close()
        if bands:
          scf.YieldOp([])
      if run:
        scf.YieldOp([])

  bounds = [(views.as_index(0), views.as_index(n)) for n in kctx.grid]
  if kctx.parallel_range is not None:
    dim, lo, hi = kctx.parallel_range
    bounds[dim] = (lo, hi)
  _loop_nest(bounds, body)


def _name_refs(kctx, jaxpr, index_refs, block_refs, scratch, n_in) -> None:
  """Records what each kernel argument is, for messages
  (``buffers.describe_ref``)."""
  arg_names = getattr(jaxpr.debug_info, "arg_names", None) or ()
  kinds = ([f"scalar prefetch operand {i}" for i in range(len(index_refs))]
           + [f"input {i}" if i < n_in else f"output {i - n_in}"
              for i in range(len(block_refs))]
           + [f"scratch operand {i}" for i in range(len(scratch))])
  for k, (ref, kind) in enumerate(zip([*index_refs, *block_refs, *scratch],
                                      kinds)):
    name = arg_names[k] if k < len(arg_names) else None
    if isinstance(name, str) and name.isidentifier():
      kind = f"{kind} '{name}'"
    buffers.name_ref(kctx, ref, kind)


def _permuted(kctx: KernelContext, dim: int, iv: ir.Value) -> ir.Value:
  """The grid index the loop's ``iv``-th iteration of ``dim`` runs: itself,
  or its image under the dimension's permutation (grid_order="random"), read
  from a constant table in the kernel."""
  perm = getattr(kctx, "permuted_dims", {}).get(dim)
  if perm is None:
    return iv
  i32 = ir.IntegerType.get_signless(32)
  t = ir.MemRefType.get([len(perm)], i32)
  name = f"pallas_cpu_grid_order_{dim}"
  with ir.InsertionPoint.at_block_begin(kctx.module.body):
    memref.GlobalOp(sym_name=name, type_=ir.TypeAttr.get(t),
                    sym_visibility="private",
                    initial_value=ir.DenseElementsAttr.get(
                        np.asarray(perm, np.int32)),
                    constant=True)
  table = memref.get_global(t, name)
  return arith.index_cast(ir.IndexType.get(), memref.load(table, [iv]))


def _loop_nest(bounds: list[tuple[ir.Value, ir.Value]], body, ivs=()):
  if not bounds:
    body(list(ivs))
    return
  lo, hi = bounds[0]
  loop = scf.ForOp(lo, hi, views.as_index(1))
  with ir.InsertionPoint(loop.body):
    _loop_nest(bounds[1:], body, (*ivs, loop.induction_variable))
    scf.YieldOp([])


def _block_starts(kctx, w: BlockWindow, grid_args, index_refs) -> list[ir.Value]:
  cj = w.bm.index_map_jaxpr
  outs = jaxpr_lowering.lower_jaxpr(kctx, cj.jaxpr, [*grid_args, *index_refs],
                                    consts=[kctx.constant(c, np.asarray(c).dtype)
                                            for c in cj.consts])
  starts = []
  for d, o in zip(w.dims, outs):
    value = scalar_of(kctx, o).value
    scale = d.size if d.kind == "blocked" else 1
    const = views.constant_int(value)
    if d.kind == "element":
      # The array element the window starts at (negative in the low
      # padding); static only when the window lies inside the array.
      if const is not None and 0 <= const - d.pad_lo <= (
          d.array_size - d.size):
        starts.append(const - d.pad_lo)
      else:
        starts.append(arith.subi(views.as_index(value),
                                 views.as_index(d.pad_lo)))
      continue
    if const is not None and 0 <= const * scale <= d.array_size - min(
        d.size, d.array_size):
      # A constant block index of a block inside the array (or the one
      # block of a dimension smaller than it): a static window offset.  An
      # edge block or an out-of-bounds index stays dynamic, to take the
      # padded copy or the run-time report like any other.
      starts.append(const * scale)
      continue
    idx = views.as_index(value)
    if scale != 1:
      idx = arith.muli(idx, views.as_index(scale))
    starts.append(idx)
  return starts


@dataclasses.dataclass(frozen=True)
class RowSplit:
  """A kernel whose grid has no parallel dimension, run as ``bands`` row
  bands of its blocks -- the runtime's parallel extent, spread over its
  threads as a parallel grid dimension is.  Every step runs the body on
  this thread's bands of the step's blocks, which is the whole step's
  work because ``fusion.row_local`` proved the body independent across
  rows; each element still sees the steps in grid order."""
  bands: int
  rows: int                  # of one band
  split: tuple[bool, ...]    # per block operand: cut into bands (else whole)
  jaxpr: jax_core.Jaxpr      # the body on band-sized blocks
  # False: the grid has a parallel dimension (the runtime's threads split
  # that), and every step runs all its bands in turn -- cache blocking: a
  # body's temporaries (softmax's exp, layer norm's centred values) are a
  # band's, not a whole block's, and stay in cache between its loops.
  threaded: bool = True


# Below this much block traffic per call, waking a thread costs more than
# the second thread saves; a band below MIN_BAND_BYTES is mostly overhead.
MIN_SPLIT_BYTES = 1 << 20
MIN_BAND_BYTES = 16 << 10
MAX_BANDS = 16


# Cache blocking: bands of at most this many bytes (all operands of a band
# together) when a step's blocks exceed it, so that a band's temporaries
# stay in the L2 cache between the body's loops.
CACHE_BAND_BYTES = 256 << 10


def cache_band_plan(jaxpr: jax_core.Jaxpr, grid_mapping,
                    aliases) -> RowSplit | None:
  """Row bands of each step's blocks for a kernel with a parallel grid
  dimension (``RowSplit(threaded=False)``), or None: as ``row_split_plan``
  requires, and moreover a body that is not position-wise (a reduction
  along the rows or a broadcast of one: a whole-block temporary), and
  steps larger than ``CACHE_BAND_BYTES``."""
  gm = grid_mapping
  n_index = gm.num_index_operands
  plan = row_split_plan(jaxpr, gm, aliases, cache=True)
  if plan is None or fusion.row_local(
      jaxpr, [False] * n_index + list(plan.split), plan.rows * plan.bands,
      same_positions=True):
    return None
  return plan


def row_split_plan(jaxpr: jax_core.Jaxpr, grid_mapping,
                   aliases, *, cache: bool = False) -> RowSplit | None:
  """The row split of a kernel with no parallel grid dimension, or None
  when it does not apply: every block in place (VMEM, ``Blocked`` or
  squeezed dimensions, no edge blocks), no scratch, no aliases, every
  output as tall (its first kept dimension) as the others, the body
  row-local (``fusion.row_local``), and enough bytes moved per call.
  ``cache``: bands for ``cache_band_plan`` (the fewest of at least 8 rows
  within ``CACHE_BAND_BYTES``, run in turn by each step)."""
  gm = grid_mapping
  if aliases or gm.num_scratch_operands or not all(
      isinstance(g, int) for g in gm.grid):
    return None
  kept_shapes, nbytes = [], []
  for bm in gm.block_mappings:
    if memory_spaces.from_pallas(
        bm.transformed_block_aval.memory_space) != memory_spaces.VMEM or (
            0 in tuple(bm.array_aval.shape)):  # (BlockWindow reports it)
      return None
    try:
      dims = _block_dims(bm, bm.origin)
    except (ValueError, NotImplementedError):
      return None
    if any(d.kind == "element" or d.size <= 0 or d.may_cross
           or d.size > d.array_size for d in dims):
      return None
    kept = tuple(d.size for d in dims if d.kind != "squeezed")
    kept_shapes.append(kept)
    nbytes.append(int(np.prod(kept, dtype=np.int64))
                  * np.dtype(bm.array_aval.dtype).itemsize)
  outs = kept_shapes[gm.num_inputs:]
  if not outs or not all(outs[0] and len(o) == len(outs[0])
                         and o[0] == outs[0][0] for o in outs):
    return None
  rows = outs[0][0]
  split = tuple(len(k) == len(outs[0]) and k[0] == rows for k in kept_shapes)
  step_bytes = sum(nbytes)
  if cache:
    if step_bytes <= CACHE_BAND_BYTES:
      return None
    bands = next((n for n in range(2, rows // 8 + 1)
                  if rows % n == 0 and step_bytes // n <= CACHE_BAND_BYTES),
                 None)
  elif step_bytes * int(np.prod(gm.grid, dtype=np.int64)) < MIN_SPLIT_BYTES:
    return None
  else:
    bands = next((n for n in range(MAX_BANDS, 1, -1)
                  if rows % n == 0 and rows // n >= 8
                  and step_bytes // n >= MIN_BAND_BYTES), None)
  if bands is None:
    return None
  n_index = gm.num_index_operands
  arg_split = [False] * n_index + list(split)
  if not fusion.row_local(jaxpr, arg_split, rows):
    return None
  try:
    body = fusion.retrace_rows(jaxpr, arg_split, rows // bands)
  except Exception:  # noqa: BLE001 - not splittable after all: run whole
    return None
  return RowSplit(bands=bands, rows=rows // bands, split=split, jaxpr=body,
                  threaded=not cache)


def padding_plan(jaxpr: jax_core.Jaxpr, grid_mapping, windows
                 ) -> tuple[set[int], set[int]]:
  """(windows whose copies need no fill, outputs whose copies need no
  load), by block operand index.

  When the body computes each output element from the elements at the
  same position of the inputs whose blocks are the outputs' (same array
  shape, block shape and index map; ``fusion.row_local`` with
  ``same_positions``), an edge block's padding only ever reaches the
  padding of the outputs, which is dropped: neither those inputs' nor the
  outputs' padding needs the uninitialized value.  An output whose first
  use writes all of it (``fusion.written_first``) needs no copy-in either.
  The edge block then costs a copy in and a copy out of its in-bounds
  part, no fills."""
  gm = grid_mapping
  n_in = gm.num_inputs
  if not any(not w.whole and w.copies for w in windows):
    return set(), set()
  outs = [w for w in windows[n_in:]]
  if not outs or any(w.whole for w in outs):
    return set(), set()
  first = outs[0].bm

  def aligned(w):
    return (not w.whole and tuple(w.bm.array_aval.shape)
            == tuple(first.array_aval.shape) and _same_blocks(w.bm, first))
  if not all(aligned(w) for w in outs) or not outs[0].block_shape:
    return set(), set()
  split = [aligned(w) for w in windows]
  n_index = gm.num_index_operands
  n_scratch = len(jaxpr.invars) - n_index - len(windows)
  arg_split = [False] * n_index + split + [False] * n_scratch
  if not fusion.row_local(jaxpr, arg_split, outs[0].block_shape[0],
                          same_positions=True):
    return set(), set()
  unfilled = {k for k, s in enumerate(split) if s}
  unloaded = {k for k in range(n_in, len(windows))
              if fusion.written_first(jaxpr, n_index + k)}
  return unfilled, unloaded


COPY = "copy"          # a private block copy, refreshed when the block changes
SNAPSHOT = "snapshot"  # the whole operand copied once, at kernel entry


def alias_plan(jaxpr: jax_core.Jaxpr, grid_mapping,
               aliases) -> dict[int, str]:
  """How the kernel reads each operand an output aliases
  (``input_output_aliases`` pairs; input indices count scalar prefetch
  operands, as pallas_call's do), by that index: ``COPY`` or ``SNAPSHOT``.

  On TPU an input block is a VMEM copy, fetched when its block index
  changes, so writes through the aliased output never reach what the kernel
  reads (a block kept over several steps is read once, not re-read after
  each step's write); interpret mode reads the input as it was at entry.
  An in-place view would see the output's writes.  Where the input's blocks
  are the output's (same block shape and index map), each block is fetched
  before any step writes it, so a private block copy is enough (``COPY``);
  otherwise a block may be read after another step wrote it, and only the
  whole operand copied at entry reads as in interpret mode (``SNAPSHOT``;
  also for scalar prefetch operands, copied to SMEM at entry on TPU).
  ``pl.ANY``/HBM inputs (no blocks: the kernel reads the one buffer, as on
  TPU) and inputs the kernel never uses are left in place."""
  gm = grid_mapping
  n_index = gm.num_index_operands
  used = _used_args(jaxpr)
  plan = {}
  for i_in, i_out in aliases:
    if i_in not in used:
      continue
    if i_in < n_index:
      plan[i_in] = SNAPSHOT
      continue
    bm = gm.block_mappings[i_in - n_index]
    if memory_spaces.from_pallas(bm.transformed_block_aval.memory_space) in (
        memory_spaces.ANY, memory_spaces.HBM):
      continue
    out_bm = gm.block_mappings[gm.num_inputs + i_out]
    plan[i_in] = COPY if _same_blocks(bm, out_bm) else SNAPSHOT
  return plan


def independent_steps(jaxpr: jax_core.Jaxpr, grid_mapping, aliases) -> bool:
  """Whether the steps of a grid share no state, so that they may run in
  any order, on any threads, with the results of grid order -- whatever
  the dimension semantics say (TPU runs an "arbitrary" grid on one core;
  it does not promise an order-dependent result).  Proved when: nothing
  outlives a step but the output blocks (no scratch operands, no aliases,
  and the body's only effects are reads of refs and writes of its outputs
  -- no DMA semaphores, PRNG state, prints or barriers that other steps
  could see), and every step writes blocks no other step touches (each
  output a VMEM ``Blocked`` window whose index map is made of distinct
  grid indices and constants, every grid index of more than one step
  among them: distinct blocks at every step)."""
  gm = grid_mapping
  if (aliases or gm.num_scratch_operands or gm.num_dynamic_grid_bounds
      or not all(isinstance(g, int) for g in gm.grid)):
    return False
  n_index, n_in = gm.num_index_operands, gm.num_inputs
  outputs = set(range(n_index + n_in, n_index + len(gm.block_mappings)))
  position = {v: k for k, v in enumerate(jaxpr.invars)}
  for e in jaxpr.effects:
    if isinstance(e, state_types.ReadEffect):
      continue
    if not isinstance(e, (state_types.WriteEffect, state_types.AccumEffect)):
      return False
    k = e.input if isinstance(e.input, int) else position.get(e.input)
    if k not in outputs:
      return False
  rank = len(gm.grid)
  for bm in gm.block_mappings[n_in:]:
    if memory_spaces.from_pallas(
        bm.transformed_block_aval.memory_space) != memory_spaces.VMEM:
      return False
    if not all(isinstance(b, (pallas_core.Blocked, pallas_core.Squeezed))
               for b in bm.block_shape):
      return False
    imap = bm.index_map_jaxpr.jaxpr
    grid_vars = imap.invars[:rank]
    used = [v for v in imap.outvars if isinstance(v, jax_core.Var)]
    if (imap.eqns or any(v not in grid_vars for v in used)
        or len(set(used)) != len(used)
        or any(n > 1 and v not in used for v, n in zip(grid_vars, gm.grid))):
      return False
  return True


def worth_threads(grid_mapping) -> bool:
  """Whether a call moves enough block bytes (``MIN_SPLIT_BYTES``, all
  steps) for a second thread to pay for its wake-up."""
  gm = grid_mapping
  if not all(isinstance(g, int) for g in gm.grid):
    return False
  step = sum(int(np.prod(bm.transformed_block_aval.shape, dtype=np.int64))
             * np.dtype(bm.array_aval.dtype).itemsize
             for bm in gm.block_mappings)
  return step * int(np.prod(gm.grid, dtype=np.int64)) >= MIN_SPLIT_BYTES


def needs_one_thread(jaxpr: jax_core.Jaxpr, grid_mapping, aliases) -> bool:
  """Whether a snapshot of an aliased operand forbids threads: each thread
  would take its own, maybe after another thread wrote the output."""
  return SNAPSHOT in alias_plan(jaxpr, grid_mapping, aliases).values()


def _aliases_of(roots, n_index: int, n_in: int) -> list[tuple[int, int]]:
  """The (input, output) alias pairs, from the block operands' roots (an
  aliased output's root is its input's, see kernel._roots)."""
  pairs = []
  for o, root in enumerate(roots[n_in:]):
    if root != ("operand", n_index + n_in + o):
      pairs.append((root[1], o))
  return pairs


def _same_blocks(a, b) -> bool:
  """Whether two block mappings select the same blocks at every step."""
  if (tuple(a.block_shape) != tuple(b.block_shape)
      or a.transformed_block_aval.memory_space
      != b.transformed_block_aval.memory_space):
    return False
  ja, jb = a.index_map_jaxpr, b.index_map_jaxpr
  if str(ja.jaxpr) != str(jb.jaxpr) or len(ja.consts) != len(jb.consts):
    return False
  return all(np.shape(x) == np.shape(y) and np.asarray(x).dtype
             == np.asarray(y).dtype and np.array_equal(x, y)
             for x, y in zip(ja.consts, jb.consts))


def _used_args(jaxpr: jax_core.Jaxpr) -> set[int]:
  """Positions of the kernel's arguments that any equation uses."""
  used = {v for e in jaxpr.eqns for v in e.invars
          if isinstance(v, jax_core.Var)}
  used |= {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  return {k for k, v in enumerate(jaxpr.invars) if v in used}


def _written_args(jaxpr: jax_core.Jaxpr) -> set[int]:
  """Indices of the kernel's ref arguments that it may write (an effect's
  ``input`` is the argument's Var, or its position)."""
  position = {v: k for k, v in enumerate(jaxpr.invars)}
  written = set()
  for e in jaxpr.effects:
    if isinstance(e, (state_types.WriteEffect, state_types.AccumEffect)):
      written.add(e.input if isinstance(e.input, int) else position.get(e.input))
  return written


def _uses_grid_index(index_map: jax_core.Jaxpr, dim: int) -> bool:
  """Whether an index map reads grid index ``dim`` (conservatively: at
  all).  An output block that ignores the threaded dimension is shared by
  the threads, so each gets a private copy, as each TPU core would."""
  v = index_map.invars[dim]
  return v in index_map.outvars or any(
      v in e.invars for e in index_map.eqns)


def _track_output_block(kctx, w: BlockWindow, starts, last: ir.Value) -> None:
  """Tells the runtime when an output's block changes between steps, so a
  non-adjacent revisit is reported (interpret mode's check)."""
  i64 = ir.IntegerType.get_signless(64)
  offset = block_offset(w, starts)
  changed = cmpi("ne", offset, memref.load(last, []))
  if_op = scf.IfOp(changed)
  with ir.InsertionPoint(if_op.then_block):
    output = w.operand_index - (w.n_inputs)
    # The output's geometry, for the message (abi.h): array dims; block
    # dims, 0 for a squeezed one (an Element dimension: its padded extent,
    # as block_offset counts it).
    geometry = (",".join(str(d.extent if d.kind == "element" else
                             d.array_size) for d in w.dims) + ";" + ",".join(
        str(d.size if d.kind != "squeezed" else 0) for d in w.dims))
    kctx.call_runtime(abi.RT_OUTPUT_BLOCK_CHANGED, [
        kctx.runtime_ctx, arith.constant(i64, output), offset,
        arith.constant(i64, kctx.site(geometry)), kctx.grid_index()])
    memref.store(offset, last, [])
    scf.YieldOp([])


def _check_in_bounds(kctx, w: BlockWindow, starts) -> ir.Value:
  """True when every block starts inside its array; reports otherwise."""
  ok = None
  i64 = ir.IntegerType.get_signless(64)
  for dim, (d, s) in enumerate(zip(w.dims, starts)):
    if d.kind == "element":
      # The window must start in [0, extent - size] of the padded array
      # (interpret mode would clamp it there); reported in those terms.
      if isinstance(s, int) and 0 <= s + d.pad_lo <= d.extent - d.size:
        continue
      s = views.as_index(s)
      if d.pad_lo:
        s = arith.addi(s, views.as_index(d.pad_lo))
      array_size = d.extent - d.size + 1
    else:
      if isinstance(s, int):
        if 0 <= s < d.array_size:
          continue  # statically inside
        s = views.as_index(s)
      array_size = d.array_size
    limit = views.as_index(array_size)
    bad = _or(cmpi("slt", s, views.as_index(0)), cmpi("sge", s, limit))
    if_op = scf.IfOp(bad)
    with ir.InsertionPoint(if_op.then_block):
      # The whole block index first (the message names it as interpret
      # mode does), then this dimension's window.
      for k, (dk, sk) in enumerate(zip(w.dims, starts)):
        sk = views.as_index(sk)
        if dk.kind == "blocked":
          sk = arith.divsi(sk, views.as_index(dk.size))
        elif dk.pad_lo:  # Element: the offset the index map gave
          sk = arith.addi(sk, views.as_index(dk.pad_lo))
        kctx.call_runtime(abi.RT_BLOCK_INDEX, [
            kctx.runtime_ctx, arith.constant(i64, k), arith.index_cast(i64, sk)])
      kind = "output" if w.is_output else "input"
      k = w.operand_index - (w.n_inputs if w.is_output else 0)
      site = kctx.site(f'{kind} "{w.arg_name}"\toperand {w.operand_index}'
                       f'\t{kind} {k}')
      kctx.call_runtime(abi.RT_BLOCK_OUT_OF_BOUNDS, [
          kctx.runtime_ctx, arith.constant(i64, site), arith.constant(i64, dim),
          arith.index_cast(i64, s), arith.constant(i64, d.size),
          arith.constant(i64, array_size), kctx.grid_index()])
      scf.YieldOp([])
    true = arith.constant(ir.IntegerType.get_signless(1), 1)
    ok = _and(ok, arith.xori(bad, true))
  return ok
