"""Elementwise primitives across dtypes, against interpret=True.

Single ops whose math is exact must agree bit for bit; transcendental
functions agree within a few ulps (libm vs XLA's own approximations)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from conftest import assert_same, check_against_interpret

SHAPE, BLOCK = (16, 256), (8, 128)
GRID = (2, 2)
SPEC = pl.BlockSpec(BLOCK, lambda i, j: (i, j))
FLOATS = [jnp.float32, jnp.bfloat16]
INTS = [jnp.int32]


def _data(seed, dtype, *, positive=False, small=False):
  rng = np.random.default_rng(seed)
  if jnp.issubdtype(dtype, jnp.integer):
    lo, hi = (-40, 40) if small else (-10**6, 10**6)
    x = rng.integers(0 if positive else lo, hi, SHAPE)
    x[0, :4] = [0, 1, -1 if not positive else 2, hi - 1]
    return jnp.asarray(x, dtype)
  x = rng.standard_normal(SHAPE) * 3
  if positive:
    x = np.abs(x) + 1e-3
  x[0, :6] = [0.0, -0.0, 1.0, -1.0, 0.5, 2.5] if not positive else [
      1.0, 2.0, 0.5, 4.0, 1e-3, 1e3]
  return jnp.asarray(x, dtype)


def _run(fn, dtype_out, *args, exact=True, rtol=1e-6, atol=1e-6):
  def kernel(*refs):
    *ins, o_ref = refs
    o_ref[...] = fn(*[r[...] for r in ins])
  return check_against_interpret(
      kernel, jax.ShapeDtypeStruct(SHAPE, dtype_out), *args, grid=GRID,
      in_specs=[SPEC] * len(args), out_specs=SPEC, exact=exact, rtol=rtol,
      atol=atol)


BINARY_EXACT = {
    "add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply,
    "max": jnp.maximum, "min": jnp.minimum,
}


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("op", sorted(BINARY_EXACT))
def test_binary_exact(op, dtype):
  x, y = _data(1, dtype), _data(2, dtype)
  _run(BINARY_EXACT[op], dtype, x, y)


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_div_rem(dtype):
  x, y = _data(1, dtype), _data(2, dtype, positive=True)
  _run(lax_div := jax.lax.div, dtype, x, y)
  del lax_div
  _run(jax.lax.rem, dtype, x, y)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint32])
def test_integer_div_rem_by_zero_and_overflow(dtype):
  """XLA semantics: x/0 == -1, x%0 == x, INT_MIN/-1 == INT_MIN; no trap."""
  x = _data(1, jnp.int32).astype(dtype)
  y = _data(2, jnp.int32, small=True).astype(dtype)  # has zeros
  if dtype == jnp.int32:
    x = x.at[0, 4].set(np.iinfo(np.int32).min)
    y = y.at[0, 4].set(-1)
  _run(jax.lax.div, dtype, x, y)
  _run(jax.lax.rem, dtype, x, y)
  _run(lambda a, b: a // jnp.where(b == 0, 1, b), dtype, x, y)


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("op", ["neg", "abs", "sign", "square"])
def test_unary_exact(op, dtype):
  fn = {"neg": jnp.negative, "abs": jnp.abs, "sign": jnp.sign,
        "square": jnp.square}[op]
  _run(fn, dtype, _data(3, dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["floor", "ceil", "round"])
def test_rounding(op, dtype):
  fn = {"floor": jnp.floor, "ceil": jnp.ceil, "round": jnp.round}[op]
  _run(fn, dtype, _data(3, dtype))


# Negative powers only for floats: lax rejects them for integers.
@pytest.mark.parametrize("dtype,y", [(d, y) for d in FLOATS + INTS
                                     for y in (0, 1, 2, 3, 5, -2)
                                     if y >= 0 or d in FLOATS])
def test_integer_pow(dtype, y):
  x = _data(4, dtype, small=True) if jnp.issubdtype(dtype, jnp.integer) else (
      _data(4, dtype, positive=y < 0))
  exact = y in (0, 1, 2) or jnp.issubdtype(dtype, jnp.integer)
  _run(lambda a: jax.lax.integer_pow(a, y), dtype, x, exact=exact, rtol=1e-6
       if dtype == jnp.float32 else 1e-2)


TRANSCENDENTAL = {
    "exp": (jnp.exp, False), "log": (jnp.log, True), "tanh": (jnp.tanh, False),
    "logistic": (jax.nn.sigmoid, False), "sqrt": (jnp.sqrt, True),
    "rsqrt": (jax.lax.rsqrt, True),
}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", sorted(TRANSCENDENTAL))
def test_transcendental(op, dtype):
  fn, positive = TRANSCENDENTAL[op]
  x = _data(5, dtype, positive=positive)
  # f32: libm is correctly rounded to <1 ulp, XLA's approximations to a few
  # ulps; bf16 is computed in f32 and rounded once, XLA may round twice.
  rtol = 4e-6 if dtype == jnp.float32 else 2e-2  # bf16: 2 ulps
  _run(fn, dtype, x, exact=False, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons(op, dtype):
  fn = getattr(jax.lax, op)
  x, y = _data(6, dtype, small=True), _data(7, dtype, small=True)
  y = y.at[1].set(x[1])  # equal elements too
  _run(fn, jnp.bool_, x, y)


def test_nan_comparisons_and_max():
  x = _data(6, jnp.float32).at[0, :3].set(jnp.nan)
  y = _data(7, jnp.float32).at[0, 2:5].set(jnp.nan)
  for op in ["eq", "ne", "lt", "ge"]:
    _run(getattr(jax.lax, op), jnp.bool_, x, y)
  _run(jnp.maximum, jnp.float32, x, y)
  _run(jnp.minimum, jnp.float32, x, y)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint32, jnp.bool_])
@pytest.mark.parametrize("op", ["and", "or", "xor", "not"])
def test_logical_bitwise(op, dtype):
  x = _data(8, jnp.int32) if dtype != jnp.bool_ else _data(8, jnp.int32) > 0
  y = _data(9, jnp.int32) if dtype != jnp.bool_ else _data(9, jnp.int32) > 0
  x, y = x.astype(dtype), y.astype(dtype)
  if op == "not":
    _run(jnp.invert, dtype, x)
  else:
    _run(getattr(jnp, f"bitwise_{op}"), dtype, x, y)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint32])
@pytest.mark.parametrize("op", ["shift_left", "shift_right_logical",
                                "shift_right_arithmetic"])
def test_shifts_including_overflowing_amounts(op, dtype):
  x = _data(10, jnp.int32).astype(dtype)
  s = jnp.asarray(np.random.default_rng(11).integers(0, 40, SHAPE), dtype)
  _run(getattr(jax.lax, op), dtype, x, s)


CONVERT_DTYPES = [jnp.float32, jnp.bfloat16, jnp.int32, jnp.uint32, jnp.int8,
                  jnp.bool_]


@pytest.mark.parametrize("src,dst", [(s, d) for s in CONVERT_DTYPES
                                     for d in CONVERT_DTYPES if s != d])
def test_convert_element_type(src, dst):
  if jnp.issubdtype(src, jnp.floating):
    x = _data(12, jnp.float32) * 1e3
    x = x.at[0, :4].set(jnp.asarray([jnp.nan, jnp.inf, -jnp.inf, 3e9]))
    x = x.astype(src)
  elif src == jnp.bool_:
    x = _data(12, jnp.int32) > 0
  else:
    x = _data(12, jnp.int32).astype(src)
  _run(lambda a: a.astype(dst), dst, x)


@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_select_n_and_where(dtype):
  x, y = _data(13, dtype), _data(14, dtype)
  c = _data(15, jnp.int32) > 0
  _run(lambda c, a, b: jnp.where(c, a, b), dtype, c, x, y)
  w = jnp.asarray(np.random.default_rng(0).integers(0, 3, SHAPE), jnp.int32)
  _run(lambda w, a, b: jax.lax.select_n(w, a, b, a * 2), dtype, w, x, y)


def test_scalar_operands_and_broadcasts():
  x = _data(16, jnp.float32)

  def fn(a):
    row = a[0:1, :]                        # (1, 128): size-1 broadcasting
    col = jnp.sum(a[:, 0:1] * 0, axis=1, keepdims=True) if False else a[:, 0:1]
    return a * 2.0 + row - col + jax.lax.broadcasted_iota(jnp.float32, a.shape, 1)
  _run(fn, jnp.float32, x, exact=False)


@pytest.mark.parametrize("fn", [jnp.tanh, jnp.sin, jnp.tan, jax.lax.erf,
                                jax.lax.erf_inv, jnp.expm1, jnp.log1p,
                                jnp.sqrt, jnp.negative, jnp.abs, jnp.round,
                                jnp.floor, jnp.ceil, jnp.sign],
                         ids=lambda f: getattr(f, "__name__", str(f)))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16],
                         ids=["f32", "bf16"])
def test_signed_zeros(fn, dtype):
  """+-0 in, the sign XLA gives out (assert_same compares signs of zeros)."""
  x = jnp.array([[-0.0, 0.0] * 64] * 8, dtype)

  def kernel(x_ref, o_ref):
    o_ref[...] = fn(x_ref[...])
  want = fn(x)
  got = check_against_interpret(kernel, jax.ShapeDtypeStruct(x.shape, dtype), x)
  assert_same(got, want)
