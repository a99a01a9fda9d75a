"""Hypothesis differential tests for the PRNG family (rules/random.py):
threefry keys built from seeds, folded with data and the grid position,
split, and drawn as bits of every unsigned width and as uniform floats, over
odd and size-1 block shapes and 0-2-D grids -- bit for bit against
interpret=True.  (The TPU stateful PRNG has no interpret-mode semantics; it
is covered against its definition in test_random.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from conftest import assert_same, call
import strategies

SMEM = pl.BlockSpec(memory_space=pltpu.SMEM)
INT32 = st.integers(-2 ** 31, 2 ** 31 - 1)


def _draw(kind, key, shape):
  if kind == "uniform":
    return jax.random.uniform(key, shape, jnp.float32)
  if kind == "bernoulli":
    return jax.random.bernoulli(key, 0.3, shape).astype(jnp.int8)
  return jax.random.bits(key, shape, kind)


@settings(max_examples=12, deadline=None)
@given(shape=strategies.shapes(1, 3, max_elems=2048),
       grid=strategies.GRIDS,
       seeds=st.tuples(INT32, INT32),
       kind=st.sampled_from([jnp.uint8, jnp.uint16, jnp.uint32, "uniform",
                             "bernoulli"]),
       n_split=st.integers(1, 3))
def test_keys_folds_splits_and_draws(shape, grid, seeds, kind, n_split):
  grid = grid[:len(shape)]

  def kernel(s_ref, o_ref):
    key = jax.random.key(s_ref[0])
    key = jax.random.fold_in(key, s_ref[1])
    for d in range(len(grid)):
      key = jax.random.fold_in(key, pl.program_id(d))
    key = jax.random.split(key, n_split)[n_split - 1]
    o_ref[...] = _draw(kind, key, shape)

  dtype = jnp.float32 if kind == "uniform" else (
      jnp.int8 if kind == "bernoulli" else kind)
  full = tuple(s * g for s, g in zip(shape, grid)) + tuple(shape[len(grid):])
  index_map = lambda *i: (*i, *([0] * (len(shape) - len(grid))))
  kw = dict(grid=grid, in_specs=[SMEM],
            out_specs=pl.BlockSpec(shape, index_map))
  args = (jnp.asarray(seeds, jnp.int32),)
  out = jax.ShapeDtypeStruct(full, dtype)
  got = call(kernel, out, *args, backend="cpu", **kw)
  want = call(kernel, out, *args, backend="interpret", **kw)
  assert_same(got, want)


@settings(max_examples=10, deadline=None)
@given(shape=strategies.shapes(1, 2, max_elems=2048),
       key_words=st.tuples(st.integers(0, 2 ** 32 - 1),
                           st.integers(0, 2 ** 32 - 1)))
def test_threefry2x32_on_data(shape, key_words):
  """The raw hash on arbitrary counters (both output words)."""
  from jax._src.random import threefry2x32 as threefry_mod
  rng = np.random.default_rng(sum(shape))
  x1, x2 = (jnp.asarray(rng.integers(0, 2 ** 32, shape, dtype=np.uint32))
            for _ in range(2))
  k1, k2 = (jnp.full(shape, w, jnp.uint32) for w in key_words)

  def fn(a, b, c, d):
    return tuple(threefry_mod.threefry2x32_p.bind(a, b, c, d))
  strategies.run_blocked(fn, (k1, k2, x1, x2))
