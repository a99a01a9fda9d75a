"""Grid coalescing: position-wise kernels on wider blocks, fewer steps.

A kernel whose every output element is computed from the elements at the
same position of its inputs (``fusion.row_local`` with ``same_positions``),
all of whose blocks are the same blocks of same-shaped arrays, computes the
same result whatever the block width: a grid over 256x256 tiles of a
2048x2048 array is the same kernel as one over 256x2048 row blocks with a
grid dimension of one step.  The wide form reads each row of each block as
one contiguous run (8 KiB instead of eight 1 KiB pieces 8 KiB apart, which
the hardware prefetchers follow far better) and runs a eighth of the steps.

``plan`` finds the grid dimension that walks the blocks' last dimension and
returns the kernel on blocks that span it (that grid dimension becomes one
step), or None.  What must hold, so that nothing a kernel can observe
changes -- results, errors, the order of side effects:

- every block operand is a VMEM ``Blocked`` window of an array of one
  shape, with one block shape and one index map (``grid._same_blocks``); no
  scratch, no scalar prefetch, no aliases, a static grid;
- the index map's last output is exactly grid index ``g``, which no other
  output uses, and ``g`` walks every block of that dimension (the last may
  be partial: the wide block is the whole dimension, so a partial edge
  block's padded copy goes away -- a position-wise body's padding only
  ever reached the dropped padding of its outputs); every output is a grid
  index or a constant that selects a block overlapping the array at every
  step (so no out-of-bounds error, whose message names the block shape,
  can differ), and every grid index of more than one step is one of them (so
  no step revisits a block: coalescing would reorder revisits);
- the body is position-wise over all its refs (no program ids, iota,
  reductions, DMAs: ``fusion.row_local`` rejects them) and re-traces on the
  wide blocks (``fusion.retrace_blocks``).

Index maps are kept: at the grid index's only value, 0, they give block 0
of the spanning block, the whole dimension.  Out-of-bounds checks, revisit
tracking and error messages see the other dimensions as before -- but for
a dimension with a partial edge block, whose blocks shrink to a size that
divides it (``_reblocked``): every step's block then lies inside the
array and nothing is copied.
"""
from __future__ import annotations

import dataclasses

from jax._src import core as jax_core
from jax._src.pallas import core as pallas_core

from pallas_cpu.lowering import fusion, grid, memory_spaces

# Below this many bytes per operand, coalescing gains nothing worth a
# second trace of the body (small kernels' first calls are compile-bound).
MIN_BYTES = 1 << 18


@dataclasses.dataclass(frozen=True)
class Coalesced:
  jaxpr: jax_core.Jaxpr          # the body on the wide blocks
  grid_mapping: object           # grid dimension ``dim`` of one step
  dim: int                       # the coalesced grid dimension
  steps: int                     # its steps before


def plan(jaxpr: jax_core.Jaxpr, grid_mapping, aliases) -> Coalesced | None:
  """The coalesced kernel, or None when it does not apply (see above)."""
  gm = grid_mapping
  if (aliases or gm.num_scratch_operands or gm.num_index_operands
      or gm.num_dynamic_grid_bounds):
    return None
  if not all(isinstance(g, int) for g in gm.grid) or jaxpr.constvars:
    return None
  bms = tuple(gm.block_mappings)
  if not bms or len(jaxpr.invars) != len(bms):
    return None
  first = bms[0]
  shape = tuple(first.array_aval.shape)
  if len(shape) < 2 or any(
      tuple(bm.array_aval.shape) != shape or bm.transforms
      or not grid._same_blocks(bm, first) for bm in bms):
    return None
  if memory_spaces.from_pallas(
      first.transformed_block_aval.memory_space) != memory_spaces.VMEM:
    return None
  try:
    dims = grid._block_dims(first, first.origin)
  except (ValueError, NotImplementedError):
    return None
  if any(d.kind == "element" or d.size <= 0 or d.array_size <= 0
         for d in dims):
    return None
  last = first.block_shape[-1]
  if not isinstance(last, pallas_core.Blocked):
    return None
  g = _last_dim_grid_index(first.index_map_jaxpr, len(gm.grid))
  if g is None or g in gm.vmapped_dims or not _in_bounds(first, gm.grid,
                                                         dims):
    return None
  steps = gm.grid[g]
  # The grid index walks every block of the dimension, the last maybe
  # partial: the wide block is the whole dimension (no edge block left).
  if steps < 2 or steps != -(-shape[-1] // last.block_size):
    return None
  block = tuple(v.aval.shape for v in jaxpr.invars)
  kept = tuple(b.block_size for b in first.block_shape
               if isinstance(b, pallas_core.Blocked))
  if len(set(block)) != 1 or block[0] != kept:
    return None
  old = block[0]
  block_shape, new_grid = _reblocked(first, gm.grid, g, shape)
  new = tuple(b.block_size for b in block_shape
              if isinstance(b, pallas_core.Blocked))
  if first.array_aval.size * first.array_aval.dtype.itemsize < MIN_BYTES:
    return None
  if len(old) < 2 or not fusion.row_local(
      jaxpr, [True] * len(bms), old[0], same_positions=True):
    return None
  try:
    body = fusion.retrace_blocks(jaxpr, [True] * len(bms), new)
  except Exception:  # noqa: BLE001 - not re-traceable: run the kernel as is
    return None
  new_bms = tuple(
      bm.replace(block_shape=block_shape,
                 transformed_block_aval=bm.transformed_block_aval.update(
                     inner_aval=bm.transformed_block_aval.inner_aval.update(
                         shape=new)))
      for bm in bms)
  new_gm = dataclasses.replace(gm, grid=new_grid, block_mappings=new_bms)
  return Coalesced(jaxpr=body, grid_mapping=new_gm, dim=g, steps=steps)


def _reblocked(bm, grid_shape, g: int, shape) -> tuple[tuple, tuple]:
  """(block shape, grid) of the coalesced kernel: the last dimension whole
  (grid index ``g`` of one step); along another dimension walked by a grid
  index, with a partial edge block, blocks of the largest size that
  divides the array dimension, down to half the written size (2000 rows
  in blocks of 256: 8 blocks of 250), the grid index taking as many steps
  -- no padded copy left.  Position-wise, the body cannot tell."""
  imap = bm.index_map_jaxpr.jaxpr
  block_shape = list(bm.block_shape)
  new_grid = list(grid_shape)
  block_shape[-1] = pallas_core.Blocked(shape[-1])
  new_grid[g] = 1
  for k, (b, out) in enumerate(zip(bm.block_shape[:-1], imap.outvars[:-1])):
    if (not isinstance(b, pallas_core.Blocked) or isinstance(
        out, jax_core.Literal) or shape[k] % b.block_size == 0):
      continue
    size = next((c for c in range(b.block_size, b.block_size // 2, -1)
                 if shape[k] % c == 0), None)
    if size is None:
      continue  # (an edge block along k stays, as written)
    block_shape[k] = pallas_core.Blocked(size)
    new_grid[imap.invars.index(out)] = shape[k] // size
  return tuple(block_shape), tuple(new_grid)


def _last_dim_grid_index(index_map: jax_core.ClosedJaxpr,
                         rank: int) -> int | None:
  """The grid index ``g`` when the index map's last output is exactly that
  grid index and no other output (or equation) uses it; else None."""
  jaxpr = index_map.jaxpr
  if len(jaxpr.invars) != rank or not jaxpr.outvars:
    return None
  out = jaxpr.outvars[-1]
  if not isinstance(out, jax_core.Var) or out not in jaxpr.invars:
    return None
  g = jaxpr.invars.index(out)
  if any(o is out for o in jaxpr.outvars[:-1]):
    return None
  if any(v is out for e in jaxpr.eqns for v in e.invars):
    return None
  return g


def _in_bounds(bm, grid_shape, dims) -> bool:
  """Whether every output of the index map is a distinct grid index or an
  integer constant, every grid index of more than one step is one of them,
  and every block it selects overlaps the array (a partial edge block
  does)."""
  jaxpr = bm.index_map_jaxpr.jaxpr
  if jaxpr.eqns or len(jaxpr.outvars) != len(dims):
    return False
  # Every grid index of more than one step selects blocks, each its own
  # dimension: every step visits another block (no revisit, whose
  # ordering the coalesced grid would change).
  used = [v for v in jaxpr.outvars if isinstance(v, jax_core.Var)]
  if len(set(used)) != len(used) or any(
      n > 1 and v not in used for v, n in zip(jaxpr.invars, grid_shape)):
    return False
  for out, d in zip(jaxpr.outvars, dims):
    blocks = -(-d.array_size // d.size)  # the last one maybe partial
    if isinstance(out, jax_core.Literal):
      if not 0 <= int(out.val) < blocks:
        return False
    elif out in jaxpr.invars:
      if grid_shape[jaxpr.invars.index(out)] > blocks:
        return False
    else:
      return False
  return True
