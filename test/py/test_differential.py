"""Hypothesis-generated kernels vs interpret=True: random shapes (odd sizes,
size-1 dims), blocks (edge blocks included), grids and elementwise programs."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.experimental import pallas as pl

from conftest import check_against_interpret

UNARY_F = [jnp.negative, jnp.abs, lambda a: a * a, jnp.floor]
BINARY_F = [jnp.add, jnp.subtract, jnp.multiply, jnp.maximum, jnp.minimum]
UNARY_I = [jnp.negative, jnp.abs, jnp.invert, lambda a: a >> 3]
BINARY_I = [jnp.add, jnp.subtract, jnp.multiply, jnp.maximum, jnp.bitwise_xor,
            lambda a, b: jax.lax.div(a, b), lambda a, b: jax.lax.rem(a, b)]


@st.composite
def programs(draw):
  dtype = draw(st.sampled_from([jnp.float32, jnp.int32]))
  unary, binary = (UNARY_F, BINARY_F) if dtype == jnp.float32 else (UNARY_I,
                                                                    BINARY_I)
  # A straight-line program over two inputs: each step applies one op to
  # earlier values, so values are reused (and must be materialized once).
  steps = draw(st.lists(
      st.tuples(st.booleans(), st.integers(0, len(binary) - 1),
                st.integers(0, 100), st.integers(0, 100)),
      min_size=1, max_size=5))
  rows = draw(st.integers(1, 40))
  cols = draw(st.sampled_from([1, 7, 128, 130, 256]))
  brow = draw(st.sampled_from([b for b in (1, 8, 16) if b <= max(rows, 8)]))
  bcol = draw(st.sampled_from([cols] if cols < 128 else [128, cols]))
  return dtype, unary, binary, steps, (rows, cols), (brow, bcol)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.integers(0, 2**31 - 1))
def test_random_elementwise_kernels(program, seed):
  dtype, unary, binary, steps, shape, block = program

  def body(x, y):
    vals = [x, y]
    for is_binary, op, a, b in steps:
      u, v = vals[a % len(vals)], vals[b % len(vals)]
      vals.append(binary[op](u, v) if is_binary else unary[op % len(unary)](u))
    return vals[-1]

  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = body(x_ref[...], y_ref[...])

  rng = np.random.default_rng(seed)
  if dtype == jnp.float32:
    x, y = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(2))
  else:
    x, y = (jnp.asarray(rng.integers(-50, 50, shape), dtype) for _ in range(2))
  grid = tuple(pl.cdiv(s, b) for s, b in zip(shape, block))
  spec = pl.BlockSpec(block, lambda i, j: (i, j))
  out_dtype = jax.eval_shape(body, x, y).dtype
  check_against_interpret(
      kernel, jax.ShapeDtypeStruct(shape, out_dtype), x, y, grid=grid,
      in_specs=[spec, spec], out_specs=spec,
      # float chains may differ from XLA in FMA contraction (README)
      exact=dtype != jnp.float32, rtol=1e-5, atol=1e-5)
