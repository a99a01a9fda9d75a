"""Every dtype Mosaic handles, through the common primitives: results equal
interpret=True bit for bit (single ops; float chains round per op).  float8
values include NaN, inf and overflowing inputs in the conversions."""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from conftest import check_against_interpret

SHAPE, SPEC = (16, 256), pl.BlockSpec((8, 128), lambda i, j: (i, j))
DTYPES = ["float16", "bfloat16", "float32", "float64", "int8", "int16",
          "int32", "int64", "uint8", "uint16", "uint32", "bool",
          # float8: bytes in memory, f32 in registers, every result rounded.
          "float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz"]


def _x64(dtype):
  return jax.enable_x64(True) if "64" in dtype else contextlib.nullcontext()


def _data(seed, dtype):
  rng = np.random.default_rng(seed)
  dt = jnp.dtype(dtype)
  if dt == jnp.bool_:
    return jnp.asarray(rng.integers(0, 2, SHAPE).astype(bool))
  if jnp.issubdtype(dt, jnp.floating):
    return jnp.asarray(rng.standard_normal(SHAPE) * 4, dt)
  info = jnp.iinfo(dt)
  lo, hi = max(info.min, -1000), min(info.max, 1000)
  return jnp.asarray(rng.integers(lo, hi, SHAPE), dt)


def _run(fn, out_dtype, *args):
  def kernel(*refs):
    *ins, o_ref = refs
    o_ref[...] = fn(*[r[...] for r in ins])
  return check_against_interpret(
      kernel, jax.ShapeDtypeStruct(SHAPE, out_dtype), *args, grid=(2, 2),
      in_specs=[SPEC] * len(args), out_specs=SPEC)


@pytest.mark.parametrize("dtype", DTYPES)
def test_arithmetic_and_comparison(dtype):
  with _x64(dtype):
    x, y = _data(1, dtype), _data(2, dtype)
    if dtype == "bool":
      _run(jnp.logical_xor, dtype, x, y)
      _run(lambda a, b: a & b, dtype, x, y)
    else:
      _run(jnp.add, dtype, x, y)
      _run(jnp.multiply, dtype, x, y)
      _run(jnp.maximum, dtype, x, y)
    _run(lambda a, b: a < b, "bool", x, y)
    _run(lambda a, b: jnp.where(a == b, a, b), dtype, x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conversions_to_and_from_f32_and_i32(dtype):
  with _x64(dtype):
    x = _data(3, dtype)
    _run(lambda a: a.astype(jnp.float32), "float32", x)
    _run(lambda a: a.astype(jnp.int32), "int32", x)
    f = (_data(4, "float32") * 50).at[0, :6].set(
        jnp.asarray([jnp.nan, jnp.inf, -jnp.inf, 1e6, -1e6, 1e-9]))
    _run(lambda a: a.astype(dtype), dtype, f)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_transcendental_other_float_widths(dtype):
  with _x64(dtype):
    x = _data(5, dtype)
    def kernel(x_ref, o_ref):
      o_ref[...] = jnp.tanh(x_ref[...]) + jnp.exp(x_ref[...] * 0.25)
    check_against_interpret(kernel, jax.ShapeDtypeStruct(SHAPE, dtype), x,
                            grid=(2, 2), in_specs=[SPEC], out_specs=SPEC,
                            exact=False, rtol=2e-3 if dtype == "float16"
                            else 1e-12, atol=1e-12)
