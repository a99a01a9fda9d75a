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


@st.composite
def reduction_cases(draw):
  dtype = draw(st.sampled_from([jnp.float32, jnp.int32, jnp.bfloat16]))
  rank = draw(st.integers(1, 3))
  shape = tuple(draw(st.sampled_from([1, 3, 8, 17, 128])) for _ in range(rank))
  axes = tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))
  kind = draw(st.sampled_from(["sum", "max", "min"]))
  return dtype, shape, axes, kind


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(reduction_cases(), st.integers(0, 2**31 - 1))
def test_random_reductions(case, seed):
  """Any axes of any rank (trailing axes take the register-accumulator path,
  others the generic one), against interpret=True."""
  dtype, shape, axes, kind = case
  fn = {"sum": jnp.sum, "max": jnp.max, "min": jnp.min}[kind]

  def kernel(x_ref, o_ref):
    o_ref[...] = fn(x_ref[...], axis=axes, keepdims=True)

  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(-50, 50, shape) if dtype == jnp.int32
                  else rng.standard_normal(shape), dtype)
  out_shape = tuple(1 if d in axes else n for d, n in enumerate(shape))
  exact = kind != "sum" or dtype == jnp.int32
  check_against_interpret(kernel, jax.ShapeDtypeStruct(out_shape, dtype), x,
                          exact=exact, rtol=2e-2 if dtype == jnp.bfloat16
                          else 1e-5, atol=1e-4)


@st.composite
def dot_cases(draw):
  m, k, n = (draw(st.sampled_from([1, 5, 8, 33, 128])) for _ in range(3))
  dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  ta, tb = draw(st.booleans()), draw(st.booleans())
  return m, k, n, dtype, ta, tb


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(dot_cases(), st.integers(0, 2**31 - 1))
def test_random_matmuls(case, seed):
  """Shapes (odd and size 1) and transposed operands, through the
  microkernel or the generic path, against interpret=True."""
  m, k, n, dtype, ta, tb = case
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.standard_normal((k, m) if ta else (m, k)), dtype)
  b = jnp.asarray(rng.standard_normal((n, k) if tb else (k, n)), dtype)

  def kernel(a_ref, b_ref, o_ref):
    av = a_ref[...].T if ta else a_ref[...]
    bv = b_ref[...].T if tb else b_ref[...]
    o_ref[...] = jnp.dot(av, bv, preferred_element_type=jnp.float32)

  check_against_interpret(kernel, jax.ShapeDtypeStruct((m, n), jnp.float32),
                          a, b, exact=False, rtol=1e-4, atol=1e-4)
