"""Reductions (sum/max/min/prod/and/or, argmax/argmin) against interpret=True
and jnp.

Integer sums, max/min, and/or and argmax/argmin must agree bit for bit;
float sums keep a fixed order here (64 strided partial results and a tree,
rules/reductions.py) and XLA its own, so they agree within a tolerance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.experimental import pallas as pl

from conftest import check_outputs_of, assert_same, call, check_against_interpret

F32, BF16, I32 = jnp.float32, jnp.bfloat16, jnp.int32


def _data(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  if jnp.issubdtype(dtype, jnp.integer):
    x = rng.integers(-1000, 1000, shape)
    if x.size >= 4:
      info = np.iinfo(np.dtype(dtype))
      flat = x.reshape(-1)
      flat[:2] = [info.min, info.max]  # the identities must not leak
    return jnp.asarray(x, dtype)
  return jnp.asarray(rng.standard_normal(shape) * 3, dtype)


def _tol(dtype, fn_name):
  """Exact unless the result is a float sum."""
  if fn_name in ("sum", "mean") and jnp.issubdtype(dtype, jnp.floating):
    return dict(exact=False, rtol=2e-2 if dtype == BF16 else 1e-5,
                atol=2e-2 if dtype == BF16 else 1e-4)
  return dict(exact=True)


REDUCERS = {"sum": jnp.sum, "max": jnp.max, "min": jnp.min}
SHAPES = [(7, 130), (1, 128), (8, 1)]


@pytest.mark.parametrize("dtype", [F32, BF16, I32], ids=["f32", "bf16", "i32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", sorted(REDUCERS))
def test_reduce_2d_each_axis(op, shape, dtype):
  """Both axes and keepdims patterns in one kernel (one compile)."""
  x = _data(shape, dtype)
  red = REDUCERS[op]

  def fn(v):
    return red(v, axis=0), red(v, axis=1, keepdims=True), red(v, keepdims=True)

  wants = fn(x)
  outs = tuple(jax.ShapeDtypeStruct(w.shape, w.dtype) for w in wants)

  def kernel(x_ref, *o_refs):
    for o_ref, r in zip(o_refs, fn(x_ref[...])):
      o_ref[...] = r
  got = check_against_interpret(kernel, outs, x, **_tol(dtype, op))
  assert_same(got, wants, **_tol(dtype, op))


def test_reduce_3d_axis_subsets():
  """Every axis and non-adjacent/all-axes subsets of a rank-3 operand."""
  x = _data((3, 8, 130), F32, seed=1)

  def fn(v):
    return (jnp.max(v, axis=0), jnp.min(v, axis=1, keepdims=True),
            jnp.max(v, axis=2), jnp.min(v, axis=(0, 2)),
            jnp.sum(v, axis=(0, 1, 2), keepdims=True))
  wants = fn(x)
  outs = tuple(jax.ShapeDtypeStruct(w.shape, w.dtype) for w in wants)

  def kernel(x_ref, *o_refs):
    for o_ref, r in zip(o_refs, fn(x_ref[...])):
      o_ref[...] = r
  got = check_against_interpret(kernel, outs, x, **_tol(F32, "sum"))
  assert_same(got[:4], wants[:4])
  assert_same(got[4], wants[4], **_tol(F32, "sum"))
  got_int = check_against_interpret(
      kernel, tuple(jax.ShapeDtypeStruct(w.shape, I32) for w in wants),
      x.astype(I32))
  assert_same(got_int, fn(x.astype(I32)))


@pytest.mark.parametrize("dtype", [F32, I32], ids=["f32", "i32"])
def test_full_reduction_to_scalar(dtype):
  """Rank-0 results are scalars: stored into a ref element and used in
  scalar arithmetic."""
  x = _data((7, 130), dtype, seed=2)

  def kernel(x_ref, o_ref):
    v = x_ref[...]
    o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)
    o_ref[0, 0] = jnp.sum(v)
    o_ref[0, 1] = jnp.max(v)
    o_ref[0, 2] = jnp.min(v) + jnp.max(v[0])
    o_ref[1, :] = v[1, :8] - jnp.min(v)

  out = jax.ShapeDtypeStruct((2, 8), dtype)
  got = check_against_interpret(kernel, out, x, **_tol(dtype, "sum"))
  want = jnp.zeros((2, 8), dtype)
  want = want.at[0, 0].set(x.sum()).at[0, 1].set(x.max())
  want = want.at[0, 2].set(x.min() + x[0].max()).at[1].set(x[1, :8] - x.min())
  assert_same(got, want, **_tol(dtype, "sum"))


def test_fused_operand_and_gridded_rows():
  """A lazy operand is computed inside the reduction (sum of exp); blocks
  of (8, 128) over a (2, 2) grid give per-block partial reductions."""
  x = _data((16, 256), F32, seed=3)
  spec = pl.BlockSpec((8, 128), lambda i, j: (i, j))

  def kernel(x_ref, o_ref):
    v = x_ref[...]
    o_ref[...] = jnp.broadcast_to(
        jnp.sum(jnp.exp(v * 0.5) - 1.0, axis=1, keepdims=True), (8, 128))
  got = check_against_interpret(
      kernel, jax.ShapeDtypeStruct(x.shape, F32), x, grid=(2, 2),
      in_specs=[spec], out_specs=spec, exact=False, rtol=1e-5)
  blocks = (jnp.exp(x * 0.5) - 1.0).reshape(2, 8, 2, 128).sum(axis=3)
  want = jnp.repeat(blocks.reshape(16, 2), 128, axis=1)
  assert_same(got, want, exact=False, rtol=1e-5)


def test_operands_without_a_load_on_the_reduced_axis():
  """Splats, iotas and broadcasts along the reduced axis: the loop bound
  comes from a materialized copy (linalg needs an operand spanning it)."""
  x = _data((8, 128), F32, seed=13)

  def kernel(x_ref, a_ref, b_ref, c_ref):
    a_ref[...] = jnp.sum(jnp.full((8, 128), 0.5, F32), axis=1)
    b_ref[...] = jnp.argmax(lax.broadcasted_iota(I32, (8, 128), 1) % 7, axis=1)
    c_ref[...] = jnp.max(jnp.broadcast_to(x_ref[2:3, :], (8, 128)) * 2.0,
                         axis=0)
  outs = (jax.ShapeDtypeStruct((8,), F32), jax.ShapeDtypeStruct((8,), I32),
          jax.ShapeDtypeStruct((128,), F32))
  got = check_against_interpret(kernel, outs, x)
  assert_same(got, (jnp.full((8,), 64.0, F32), jnp.full((8,), 6, I32),
                    x[2] * 2.0))


def test_float_max_min_propagate_nan_and_infinities():
  x = np.array(_data((8, 128), F32, seed=4))
  x[0, 5] = np.nan
  x[1, :] = -np.inf          # identity of max is the answer
  x[2, :] = np.inf
  x[3, 7] = np.nan
  x[3, 9] = np.inf
  x[4, :] = -0.0
  x[5, 3] = 0.0
  x = jnp.asarray(x)

  def fn(v):
    return jnp.max(v, axis=1), jnp.min(v, axis=1), jnp.max(v, axis=0)
  check_outputs_of(fn, x)


def test_bf16_reduce_sum_accumulates_in_f32():
  """lax.reduce_sum on bf16 (jnp.sum would convert to f32 first) -- XLA
  accumulates wider than bf16; so do we (within bf16 rounding)."""
  x = _data((8, 128), BF16, seed=5)

  def kernel(x_ref, o_ref):
    o_ref[...] = lax.reduce_sum_p.bind(x_ref[...], axes=(1,),
                                       out_sharding=None)
  got = check_against_interpret(kernel, jax.ShapeDtypeStruct((8,), BF16), x,
                                exact=False, rtol=2e-2, atol=0.25)
  want = np.asarray(x, np.float32).sum(axis=1).astype(jnp.bfloat16)
  assert_same(got, want, exact=True)  # f32 accumulation, one rounding


def test_prod():
  x = jnp.asarray(np.random.default_rng(6).uniform(0.5, 1.5, (8, 16)), F32)
  xi = jnp.asarray(np.random.default_rng(6).integers(-3, 4, (8, 16)), I32)

  def kernel(x_ref, i_ref, o_ref, oi_ref):
    o_ref[...] = jnp.prod(x_ref[...], axis=1)
    oi_ref[...] = jnp.prod(i_ref[...], axis=0)
  got = check_against_interpret(
      kernel, (jax.ShapeDtypeStruct((8,), F32),
               jax.ShapeDtypeStruct((16,), I32)), x, xi, exact=False,
      rtol=1e-5)
  assert_same(got[1], jnp.prod(xi, axis=0))


def test_all_any():
  rng = np.random.default_rng(7)
  x = rng.standard_normal((8, 130)).astype(np.float32)
  x[0, :] = np.abs(x[0]) + 1   # all positive row
  x[1, :] = -np.abs(x[1]) - 1  # no positive element
  x[:, 3] = np.abs(x[:, 3]) + 1  # all positive column
  x = jnp.asarray(x)

  def fn(v):
    p = v > 0
    return (jnp.all(p, axis=1).astype(I32), jnp.any(p, axis=1).astype(I32),
            jnp.all(p, axis=0).astype(I32), jnp.any(p, axis=0).astype(I32),
            jnp.all(p, keepdims=True).astype(I32),
            jnp.any(p, keepdims=True).astype(I32))
  check_outputs_of(fn, x)


def test_bitwise_and_or_reductions_on_ints():
  x = jnp.asarray(np.random.default_rng(8).integers(0, 2**31 - 1, (4, 16)),
                  I32)

  def kernel(x_ref, a_ref, o_ref):
    a_ref[...] = lax.reduce_and_p.bind(x_ref[...], axes=(1,))
    o_ref[...] = lax.reduce_or_p.bind(x_ref[...], axes=(0,))
  out = (jax.ShapeDtypeStruct((4,), I32), jax.ShapeDtypeStruct((16,), I32))
  got = check_against_interpret(kernel, out, x)
  assert_same(got, (np.bitwise_and.reduce(np.asarray(x), axis=1),
                    np.bitwise_or.reduce(np.asarray(x), axis=0)))


# -- argmax / argmin ------------------------------------------------------------
def _arg_data(dtype):
  rng = np.random.default_rng(9)
  if dtype == I32:
    x = rng.integers(-5, 5, (8, 130))   # many ties
    x[0, :] = np.iinfo(np.int32).min
    x[1, :] = np.iinfo(np.int32).max
    return jnp.asarray(x, I32)
  x = rng.integers(-5, 5, (8, 130)).astype(np.float32)  # many ties
  x[0, :] = -np.inf               # all -inf: index 0
  x[1, :] = np.inf
  x[2, 7] = np.nan                # the first NaN wins
  x[2, 20] = np.nan
  x[3, :] = np.nan
  x[4, 100] = np.inf
  x[5, 0] = np.nan
  x[6, :] = 0.0
  x[6, 40] = -0.0
  x[:, 129] = np.where(np.arange(8) == 7, np.nan, x[:, 129])
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("dtype", [F32, BF16, I32], ids=["f32", "bf16", "i32"])
def test_argmax_argmin(dtype):
  x = _arg_data(dtype)

  def fn(v):
    return (jnp.argmax(v, axis=1), jnp.argmin(v, axis=1),
            jnp.argmax(v, axis=0), jnp.argmin(v, axis=0),
            jnp.argmax(v, axis=1, keepdims=True))
  check_outputs_of(fn, x)


def test_argmax_1d_to_scalar_and_3d():
  x = _arg_data(F32)
  x3 = jnp.asarray(np.random.default_rng(10).integers(0, 4, (3, 5, 16)), F32)

  def kernel(x_ref, x3_ref, s_ref, a_ref, b_ref):
    s_ref[0] = jnp.argmax(x_ref[4, :]).astype(jnp.int32)
    s_ref[1] = jnp.argmin(x_ref[2, :]).astype(jnp.int32)
    a_ref[...] = jnp.argmax(x3_ref[...], axis=1)
    b_ref[...] = jnp.argmin(x3_ref[...], axis=0)
  outs = (jax.ShapeDtypeStruct((2,), I32), jax.ShapeDtypeStruct((3, 16), I32),
          jax.ShapeDtypeStruct((5, 16), I32))
  got = check_against_interpret(kernel, outs, x, x3)
  assert_same(got, (jnp.array([jnp.argmax(x[4]), jnp.argmin(x[2])], I32),
                    jnp.argmax(x3, axis=1), jnp.argmin(x3, axis=0)))


# -- a real kernel ----------------------------------------------------------------
def test_row_softmax_kernel():
  x = _data((32, 128), F32, seed=11)
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))

  def kernel(x_ref, o_ref):
    v = x_ref[...]
    m = jnp.max(v, axis=-1, keepdims=True)
    e = jnp.exp(v - m)
    o_ref[...] = e / jnp.sum(e, axis=-1, keepdims=True)
  got = check_against_interpret(kernel, jax.ShapeDtypeStruct(x.shape, F32), x,
                                grid=(4,), in_specs=[spec], out_specs=spec,
                                exact=False, rtol=1e-5)
  assert_same(got, jax.nn.softmax(x, axis=-1), exact=False, rtol=1e-5,
              atol=1e-7)


def test_sum_of_a_whole_grid_into_smem_scalar():
  """A scalar reduction result stored into an SMEM output, per grid step."""
  from jax.experimental.pallas import tpu as pltpu
  x = _data((32, 128), I32, seed=12)

  def kernel(x_ref, o_ref):
    o_ref[pl.program_id(0)] = jnp.sum(x_ref[...] % 7)
  got = call(kernel, jax.ShapeDtypeStruct((4,), I32), x, grid=(4,),
             in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
             out_specs=pl.BlockSpec(memory_space=pltpu.SMEM))
  assert_same(got, (x % 7).reshape(4, -1).sum(axis=1))
