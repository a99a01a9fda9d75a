"""Hypothesis strategies and the blocked-kernel harness shared by the
differential tests (test_differential*.py).

Kernels apply a function to each block of their inputs; blocks tile the
inputs exactly (no edge blocks: a layout op would move an edge block's
unspecified padding into its valid part).  Results are compared with
interpret=True bit for bit: floats by their bit patterns, so -0.0 and NaN
payloads must survive data movement too."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_cpu import testing

from conftest import call

# Odd sizes and size 1; 130 makes a lane dimension one past a vreg tile.
SIZES = [1, 3, 7, 9, 17]
MINOR_SIZES = [1, 3, 7, 17, 128, 130]
GRIDS = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def shapes(min_rank: int = 1, max_rank: int = 3, *, max_elems: int = 4096):
  """Shapes whose minor dimension may be lane-sized, the rest small."""
  @st.composite
  def strategy(draw):
    rank = draw(st.integers(min_rank, max_rank))
    if rank == 0:
      return ()
    lead = [draw(st.sampled_from(SIZES)) for _ in range(rank - 1)]
    minor = draw(st.sampled_from(MINOR_SIZES))
    return (*lead, minor)
  return strategy().filter(lambda s: math.prod(s) <= max_elems)


def random_array(rng: np.random.Generator, shape, dtype) -> jax.Array:
  """Values of ``dtype``: integers over their whole range (extremes, 0 and
  -1 included), floats normal with zeros of both signs, infinities and NaN
  planted at the start."""
  dtype = np.dtype(dtype)
  shape = tuple(shape)
  if dtype == np.bool_:
    return jnp.asarray(rng.integers(0, 2, shape).astype(bool))
  if jnp.issubdtype(dtype, jnp.integer):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    specials = [0, 1, info.max, info.min]
    if info.min < 0:
      specials.append(-1)
  else:
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0]
    x = np.asarray(jnp.asarray(x).astype(dtype))
  x = np.array(x, dtype=dtype)
  flat = x.reshape(-1)
  k = min(len(specials), flat.size)
  flat[:k] = [dtype.type(v) for v in specials[:k]]
  return jnp.asarray(x)


def random_bits(rng: np.random.Generator, shape, dtype) -> jax.Array:
  """Uniformly random bit patterns of ``dtype`` (NaNs and infs included).

  16-bit float NaNs get the canonical payload (sign kept): XLA's CPU
  backend, behind interpret mode, moves 16-bit floats through f32 and
  canonicalizes their NaNs, where pallas_cpu keeps every bit."""
  dtype = np.dtype(dtype)
  shape = tuple(shape)
  raw = rng.integers(0, 2 ** 8, (*shape, dtype.itemsize), dtype=np.uint8)
  x = raw.view(dtype).reshape(shape)
  if dtype.itemsize == 2 and jnp.issubdtype(dtype, jnp.floating):
    x = canonical_nans(x)
  return jnp.asarray(x)


def canonical_nans(x: np.ndarray) -> np.ndarray:
  """``x`` (a 16-bit float array) with every NaN quiet and payload-free."""
  u = np.asarray(x).view(np.uint16).copy()
  bf16 = x.dtype == jnp.bfloat16
  quiet = 0x7FC0 if bf16 else 0x7E00
  nan = (u & 0x7FFF) > (0x7F80 if bf16 else 0x7C00)   # np.isnan warns on sNaN
  u[nan] = (u[nan] & 0x8000) | quiet
  return u.view(x.dtype)


def assert_same_bits(got, want, *, nan_payloads=True):
  """Equal shapes, dtypes and bit patterns; with ``nan_payloads=False`` any
  NaN matches any NaN (``pallas_cpu.testing.assert_same``)."""
  testing.assert_same(got, want, nan_payloads=nan_payloads)


def _tiled(shape, grid):
  return (*(n * g for n, g in zip(shape, grid)), *shape[len(grid):])


def run_blocked(fn, args, grid=(), *, scalars=(), check=assert_same_bits):
  """``fn`` applied to each block of ``args`` on the compiled backend and
  in interpret mode, compared with ``check``; returns the compiled result.

  ``args`` are the blocks of one grid point; the kernel's inputs repeat
  them (with different values) ``grid[d]`` times along dimension ``d``, and
  its outputs are ``fn``'s results tiled the same way.  The grid is cut to
  the smallest rank of any block.  ``scalars`` (int32 values) go to SMEM
  whole and reach ``fn`` as trailing scalar arguments."""
  blocks = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
  scalar_avals = [jax.ShapeDtypeStruct((), jnp.int32) for _ in scalars]
  outs = jax.eval_shape(fn, *blocks, *scalar_avals)
  single = not isinstance(outs, (tuple, list))
  outs = [outs] if single else list(outs)
  rank = min([len(b.shape) for b in blocks] + [len(o.shape) for o in outs])
  grid = tuple(grid[:rank])
  rng = np.random.default_rng(len(grid) + 7)
  inputs = []
  for a in args:
    reps = (*grid, *([1] * (a.ndim - len(grid))))
    tiled = np.tile(np.asarray(a), reps)
    if tiled.size and grid and math.prod(grid) > 1:
      # blocks differ, so an index map or block offset mix-up shows
      tiled = _shuffle_blocks(tiled, a.shape, grid, rng)
    inputs.append(jnp.asarray(tiled))

  def index_map(rank):
    return lambda *i: (*i, *([0] * (rank - len(grid))))

  in_specs = [pl.BlockSpec(a.shape, index_map(a.ndim)) for a in args]
  in_specs += [pl.BlockSpec(memory_space=pltpu.SMEM)] * (1 if scalars else 0)
  out_specs = [pl.BlockSpec(o.shape, index_map(len(o.shape))) for o in outs]
  out_shapes = [jax.ShapeDtypeStruct(_tiled(o.shape, grid), o.dtype)
                for o in outs]
  n = len(args)

  def kernel(*refs):
    ins = [r[...] for r in refs[:n]]
    rest = refs[n:]
    if scalars:
      s_ref, rest = rest[0], rest[1:]
      ins += [s_ref[k] for k in range(len(scalars))]
    res = fn(*ins)
    for r, v in zip(rest, [res] if single else res):
      r[...] = v

  extra = [jnp.asarray(scalars, jnp.int32)] if scalars else []
  kw = dict(grid=grid, in_specs=in_specs,
            out_specs=out_specs[0] if single else out_specs)
  out_shape = out_shapes[0] if single else out_shapes
  got = call(kernel, out_shape, *inputs, *extra, backend="cpu", **kw)
  want = call(kernel, out_shape, *inputs, *extra, backend="interpret", **kw)
  check(got, want)
  return got


def _shuffle_blocks(tiled, block, grid, rng):
  """Blocks of the tiled array, each a different permutation of the given
  block's elements (so every block holds the same special values)."""
  out = tiled.copy()
  for pos in np.ndindex(*grid):
    sl = tuple(slice(p * b, (p + 1) * b) for p, b in zip(pos, block))
    blk = out[sl]
    out[sl] = rng.permutation(blk.reshape(-1)).reshape(blk.shape)
  return out


def pack_case(rng: np.random.Generator, shape, unpacked, packed):
  """Inputs and expected output of ``pltpu.pack_elementwise`` (no
  interpret-mode lowering: a numpy model of its TPU semantics, source ``i``
  in bits ``[i*w, (i+1)*w)``): returns (sources stacked on a leading axis,
  packed words, number of sources)."""
  ub = np.dtype(unpacked).itemsize * 8
  pb = {np.dtype(jnp.int4): 4}.get(np.dtype(packed),
                                   np.dtype(packed).itemsize * 8)
  n = ub // pb
  if jnp.issubdtype(unpacked, jnp.floating):
    src = jnp.asarray(rng.standard_normal((n, *shape)), unpacked)
  else:
    info = np.iinfo(unpacked)
    src = jnp.asarray(rng.integers(info.min, info.max, (n, *shape),
                                   endpoint=True), unpacked)
  narrow = src.astype(packed)
  if pb == 4:
    parts = np.asarray(narrow.astype(jnp.int32)).astype(np.uint32) & 0xF
  else:
    uint = {8: jnp.uint8, 16: jnp.uint16}[pb]
    parts = np.asarray(narrow.view(uint).astype(jnp.uint32))
  packed_data = np.zeros(shape, np.uint32)
  for i in range(n):
    packed_data |= parts[i] << (i * pb)
  return src, jnp.asarray(packed_data.astype(f"uint{ub}")), n
