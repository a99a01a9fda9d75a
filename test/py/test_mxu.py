"""The explicit MXU primitives (pltpu.matmul_push_rhs / matmul_acc_lhs /
matmul_pop) on the emulated MXU of rules/mxu.py, against jnp.dot.  No JAX
interpreter implements them, so the reference is jnp."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

F32 = jnp.float32


def _dot(a, b, out=F32):
  return jnp.dot(a.astype(out), b.astype(out), precision=lax.Precision.HIGHEST,
                 preferred_element_type=out)


def _normal(rng, shape, dtype=F32):
  return jnp.asarray(rng.standard_normal(shape), F32).astype(dtype)


def _ints(rng, shape):
  return jnp.asarray(rng.integers(-128, 128, shape), jnp.int8)


def _run(kernel, out_shape, *args, **kwargs):
  return jax.jit(pallas_cpu.pallas_call(kernel, out_shape=out_shape,
                                        **kwargs))(*args)


def _close(got, want):
  assert_same(got, want, exact=False, rtol=1e-5, atol=1e-4)


def _one_matmul(x_ref, w_ref, o_ref, *, transpose=False):
  pltpu.matmul_push_rhs(w_ref[...], 0, 0, transpose=transpose)
  pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)
  o_ref[...] = pltpu.matmul_pop(0, o_ref.shape, o_ref.dtype, 0)


def test_f32_256x256(rng):
  x, w = _normal(rng, (16, 256)), _normal(rng, (256, 256))
  got = _run(_one_matmul, jax.ShapeDtypeStruct((16, 256), F32), x, w)
  _close(got, _dot(x, w))


def test_bf16_inputs_accumulate_in_f32(rng):
  x = _normal(rng, (16, 128), jnp.bfloat16)
  w = _normal(rng, (128, 128), jnp.bfloat16)
  got = _run(_one_matmul, jax.ShapeDtypeStruct((16, 128), F32), x, w)
  _close(got, _dot(x, w))


def test_int8_accumulates_exactly_in_int32(rng):
  x, w = _ints(rng, (32, 128)), _ints(rng, (128, 128))
  got = _run(_one_matmul, jax.ShapeDtypeStruct((32, 128), jnp.int32), x, w)
  assert_same(got, _dot(x, w, jnp.int32))


def test_transposed_rhs(rng):
  x, w = _normal(rng, (8, 128)), _normal(rng, (64, 128))
  kernel = lambda *refs: _one_matmul(*refs, transpose=True)  # noqa: E731
  got = _run(kernel, jax.ShapeDtypeStruct((8, 64), F32), x, w)
  _close(got, _dot(x, w.T))


def test_two_staging_registers_and_two_mxus(rng):
  x = _normal(rng, (8, 128))
  w0, w1, w2 = (_normal(rng, (128, 128)) for _ in range(3))

  def kernel(x_ref, w0_ref, w1_ref, w2_ref, o_ref):
    pltpu.matmul_push_rhs(w0_ref[...], 0, 0)
    pltpu.matmul_push_rhs(w1_ref[...], 1, 0)
    pltpu.matmul_push_rhs(w2_ref[...], 0, 1)  # register 0 of the other MXU
    pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)
    pltpu.matmul_acc_lhs(8, x_ref[...], 0, load_staged_rhs=1)
    pltpu.matmul_acc_lhs(0, x_ref[...], 1, load_staged_rhs=0)
    o_ref[0] = pltpu.matmul_pop(0, (8, 128), F32, 0)
    o_ref[1] = pltpu.matmul_pop(8, (8, 128), F32, 0)
    o_ref[2] = pltpu.matmul_pop(0, (8, 128), F32, 1)

  got = _run(kernel, jax.ShapeDtypeStruct((3, 8, 128), F32), x, w0, w1, w2)
  _close(got, jnp.stack([_dot(x, w0), _dot(x, w1), _dot(x, w2)]))


def test_accumulate_several_products_before_a_pop(rng):
  x0, x1, x2 = (_normal(rng, (8, 128)) for _ in range(3))
  w0, w1 = _normal(rng, (128, 128)), _normal(rng, (128, 128))

  def kernel(x0_ref, x1_ref, x2_ref, w0_ref, w1_ref, o_ref):
    pltpu.matmul_push_rhs(w0_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x0_ref[...], 0, load_staged_rhs=0)
    pltpu.matmul_acc_lhs(0, x1_ref[...], 0)  # the same weights again
    pltpu.matmul_push_rhs(w1_ref[...], 0, 0)  # register 0 is empty again
    pltpu.matmul_acc_lhs(0, x2_ref[...], 0, load_staged_rhs=0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  got = _run(kernel, jax.ShapeDtypeStruct((8, 128), F32), x0, x1, x2, w0, w1)
  _close(got, _dot(x0, w0) + _dot(x1, w0) + _dot(x2, w1))


def test_accumulator_slices_by_address(rng):
  """Row slices at several addresses, overlapping ones add up; a pop may
  cover several slices and fewer columns than the RHS."""
  x = _normal(rng, (32, 128))
  w = _normal(rng, (128, 128))

  def kernel(x_ref, w_ref, o_ref, p_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[0:16], 0, load_staged_rhs=0)
    pltpu.matmul_acc_lhs(16, x_ref[16:32], 0)
    pltpu.matmul_acc_lhs(8, x_ref[0:8], 0)  # adds to rows 8..15
    o_ref[...] = pltpu.matmul_pop(0, (32, 128), F32, 0)
    pltpu.matmul_acc_lhs(40, x_ref[0:8], 0)
    p_ref[...] = pltpu.matmul_pop(40, (8, 64), F32, 0)

  got, part = _run(kernel, (jax.ShapeDtypeStruct((32, 128), F32),
                            jax.ShapeDtypeStruct((8, 64), F32)), x, w)
  want = _dot(x, w).at[8:16].add(_dot(x[0:8], w))
  _close(got, want)
  _close(part, _dot(x[0:8], w)[:, :64])


def test_weights_persist_across_grid_steps(rng):
  """The RHS is pushed and loaded at step 0 only; every step multiplies its
  block and pops it."""
  x, w = _normal(rng, (64, 128)), _normal(rng, (128, 128))

  def kernel(x_ref, w_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      pltpu.matmul_push_rhs(w_ref[...], 1, 0)
      pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=1)

    @pl.when(pl.program_id(0) > 0)
    def _():
      pltpu.matmul_acc_lhs(0, x_ref[...], 0)

    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  got = _run(kernel, jax.ShapeDtypeStruct((64, 128), F32), x, w, grid=(8,),
             in_specs=[spec, pl.BlockSpec((128, 128), lambda i: (0, 0))],
             out_specs=spec)
  _close(got, _dot(x, w))


def test_accumulate_across_grid_steps(rng):
  """A reduction over the grid: each step pushes and loads its RHS block,
  the accumulator keeps the sum between steps, the last step pops it."""
  x, w = _normal(rng, (8, 4 * 128)), _normal(rng, (4 * 128, 128))

  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)

    @pl.when(pl.program_id(0) == 3)
    def _():
      o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  got = _run(kernel, jax.ShapeDtypeStruct((8, 128), F32), x, w, grid=(4,),
             in_specs=[pl.BlockSpec((8, 128), lambda k: (0, k)),
                       pl.BlockSpec((128, 128), lambda k: (k, 0))],
             out_specs=pl.BlockSpec((8, 128), lambda k: (0, 0)))
  _close(got, _dot(x, w))


def test_acc_lhs_in_a_loop(rng):
  """MXU primitives inside a fori_loop body (a nested jaxpr the pre-scan
  sizes the state from)."""
  x, w = _normal(rng, (32, 128)), _normal(rng, (128, 128))

  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)

    def body(j, carry):
      @pl.when(j == 0)
      def _():
        pltpu.matmul_acc_lhs(0, x_ref[pl.ds(0, 8)], 0, load_staged_rhs=0)

      @pl.when(j > 0)
      def _():
        pltpu.matmul_acc_lhs(0, x_ref[pl.ds(j * 8, 8)], 0)
      return carry
    lax.fori_loop(0, 4, body, 0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  got = _run(kernel, jax.ShapeDtypeStruct((8, 128), F32), x, w)
  _close(got, sum(_dot(x[8 * j:8 * j + 8], w) for j in range(4)))


def test_pop_zeroes_the_rows(rng):
  x0, x1 = _normal(rng, (8, 128)), _normal(rng, (8, 128))
  w = _normal(rng, (128, 128))

  def kernel(x0_ref, x1_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x0_ref[...], 0, load_staged_rhs=0)
    o_ref[0] = pltpu.matmul_pop(0, (8, 128), F32, 0)
    o_ref[1] = pltpu.matmul_pop(0, (8, 128), F32, 0)  # nothing since
    pltpu.matmul_acc_lhs(0, x1_ref[...], 0)
    o_ref[2] = pltpu.matmul_pop(0, (8, 128), F32, 0)  # x1 only

  got = _run(kernel, jax.ShapeDtypeStruct((3, 8, 128), F32), x0, x1, w)
  _close(got, jnp.stack([_dot(x0, w), jnp.zeros((8, 128)), _dot(x1, w)]))


# -- errors -------------------------------------------------------------------
X = jnp.ones((8, 128), F32)
W = jnp.ones((128, 128), F32)
OUT = jax.ShapeDtypeStruct((8, 128), F32)


def test_lhs_contraction_mismatch_is_a_value_error():
  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[:, :64], 0, load_staged_rhs=0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  with pytest.raises(ValueError, match=r"matmul_acc_lhs at .*test_mxu.py.*"
                     r"the LHS is 8x64 but MXU 0's RHS is 128x128"):
    _run(kernel, OUT, X, W)


def test_load_from_a_never_pushed_register_is_a_value_error():
  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=1)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  with pytest.raises(ValueError, match=r"load_staged_rhs=1, but staging "
                     r"register 1 of MXU 0 is never pushed"):
    _run(kernel, OUT, X, W)


def test_acc_without_any_load_is_a_value_error():
  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[...], 0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  with pytest.raises(ValueError, match="no matmul_acc_lhs ever loads an RHS "
                     "into MXU 0"):
    _run(kernel, OUT, X, W)


def test_mixed_float_and_int_use_of_one_mxu_is_a_value_error():
  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), jnp.int32, 0).astype(F32)

  with pytest.raises(ValueError, match="MXU 0 is used with a int32 "
                     "accumulator"):
    _run(kernel, OUT, X, W)


def test_loading_an_empty_register_fails_at_run_time():
  """Whether a register is full depends on the path taken: checked when the
  kernel runs."""
  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)
    pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  with pytest.raises(Exception, match=r"matmul_acc_lhs: load_staged_rhs=0, "
                     r"but staging register 0 of MXU 0 is empty .*\(at "
                     r".*test_mxu.py"):
    jax.block_until_ready(_run(kernel, OUT, X, W))


def test_pushing_into_a_full_register_fails_at_run_time():
  def kernel(x_ref, w_ref, o_ref):
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_push_rhs(w_ref[...], 0, 0)
    pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  with pytest.raises(Exception, match="matmul_push_rhs: staging register 0 "
                     "of MXU 0 already holds an RHS"):
    jax.block_until_ready(_run(kernel, OUT, X, W))


def test_multiplying_before_the_load_fails_at_run_time():
  """The load exists (statically fine) but runs only at step 1."""
  def kernel(x_ref, w_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      pltpu.matmul_acc_lhs(0, x_ref[...], 0)

    @pl.when(pl.program_id(0) == 1)
    def _():
      pltpu.matmul_push_rhs(w_ref[...], 0, 0)
      pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=0)
    o_ref[...] = pltpu.matmul_pop(0, (8, 128), F32, 0)

  with pytest.raises(Exception, match=r"debug check failed at grid point "
                     r"\(0\): matmul_acc_lhs: MXU 0 has no RHS loaded"):
    jax.block_until_ready(_run(kernel, jax.ShapeDtypeStruct((16, 128), F32),
                               jnp.ones((16, 128)), W, grid=(2,),
                               in_specs=[pl.BlockSpec((8, 128),
                                                      lambda i: (i, 0)),
                                         pl.BlockSpec((128, 128),
                                                      lambda i: (0, 0))],
                               out_specs=pl.BlockSpec((8, 128),
                                                      lambda i: (i, 0))))
