"""dot_general (every form Mosaic accepts) and transpose, against
interpret=True and jnp.

Integer products must agree bit for bit; float products sum in a different
order than XLA's dot (sequential here), so they agree within a tolerance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from conftest import check_outputs_of, assert_same, call, check_against_interpret

F32, BF16, I32, I8 = jnp.float32, jnp.bfloat16, jnp.int32, jnp.int8


def _data(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  if jnp.issubdtype(dtype, jnp.integer):
    lo, hi = (-128, 128) if dtype == I8 else (-1000, 1000)
    return jnp.asarray(rng.integers(lo, hi, shape), dtype)
  return jnp.asarray(rng.standard_normal(shape), dtype)


def _tol(out_dtype):
  if jnp.issubdtype(out_dtype, jnp.integer):
    return dict(exact=True)
  if out_dtype == BF16:
    return dict(exact=False, rtol=2e-2, atol=5e-2)
  return dict(exact=False, rtol=1e-5, atol=1e-4)


def _check(fn, *args):
  """``o = fn(*inputs)`` on whole-array blocks: against interpret and jnp."""
  want = fn(*args)
  out = jax.ShapeDtypeStruct(want.shape, want.dtype)

  def kernel(*refs):
    *ins, o_ref = refs
    o_ref[...] = fn(*[r[...] for r in ins])
  got = check_against_interpret(kernel, out, *args, **_tol(want.dtype))
  assert_same(got, want, **_tol(want.dtype))
  return got


NN = (((1,), (0,)), ((), ()))
NT = (((1,), (1,)), ((), ()))
TN = (((0,), (0,)), ((), ()))
TT = (((0,), (1,)), ((), ()))
FORMS = {"NN": (NN, (7, 130), (130, 5)), "NT": (NT, (7, 130), (5, 130)),
         "TN": (TN, (130, 7), (130, 5)), "TT": (TT, (130, 7), (5, 130))}


@pytest.mark.parametrize("dtype", [F32, BF16, I32], ids=["f32", "bf16", "i32"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_2d_forms(form, dtype):
  dims, ls, rs = FORMS[form]
  x, y = _data(ls, dtype, 1), _data(rs, dtype, 2)
  _check(lambda a, b: lax.dot_general(a, b, dims), x, y)


def test_q_at_k_transposed_and_matmul_operator():
  q, k = _data((8, 128), F32, 3), _data((16, 128), F32, 4)
  _check(lambda a, b: a @ b.T, q, k)
  _check(lambda a, b: jnp.dot(a.T, b.T), _data((128, 8), F32, 5), k)


@pytest.mark.parametrize("out", [F32, BF16], ids=["to_f32", "to_bf16"])
def test_bf16_inputs(out):
  """bf16 x bf16 accumulates in f32: to f32 (preferred_element_type), or
  rounded once to bf16 at the end."""
  x, y = _data((8, 256), BF16, 6), _data((256, 128), BF16, 7)
  got = _check(lambda a, b: jnp.dot(a, b, preferred_element_type=out), x, y)
  want = (np.asarray(x, np.float32) @ np.asarray(y, np.float32))
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             want.astype(out).astype(np.float32),
                             rtol=1e-2 if out == BF16 else 1e-5, atol=1e-3)


def test_int8_to_int32():
  """int8 x int8 -> int32 sign-extends and accumulates in i32 (no int8
  overflow: 256 products of up to 128*128)."""
  x = _data((8, 256), I8, 8).at[0, :].set(-128)
  y = _data((256, 16), I8, 9).at[:, 0].set(-128)
  got = _check(lambda a, b: lax.dot_general(a, b, NN,
                                            preferred_element_type=I32), x, y)
  assert int(got[0, 0]) == 256 * 128 * 128
  _check(lambda a, b: lax.dot_general(a, b, NT, preferred_element_type=I32),
         x, _data((16, 256), I8, 10))


def test_int32_wraps_around():
  x = jnp.full((2, 4), 2**20, I32)
  y = jnp.full((4, 3), 2**12, I32)
  got = _check(lambda a, b: a @ b, x, y)
  assert int(got[0, 0]) == np.int32(np.int64(4 * 2**32) % 2**32)


@pytest.mark.parametrize("dtype", [F32, I32], ids=["f32", "i32"])
def test_batched(dtype):
  a, b = _data((3, 7, 16), dtype, 11), _data((3, 16, 5), dtype, 12)
  _check(lambda u, v: jnp.einsum("bij,bjk->bik", u, v), a, b)
  q, k = _data((2, 8, 32), dtype, 13), _data((2, 16, 32), dtype, 14)
  _check(lambda u, v: jnp.einsum("bqd,bkd->bqk", u, v), q, k)
  # batch dimension not leading in the rhs
  _check(lambda u, v: lax.dot_general(u, v, (((2,), (0,)), ((0,), (1,)))),
         _data((3, 7, 16), dtype, 15), _data((16, 3, 5), dtype, 16))


def test_matrix_vector_forms():
  m, v = _data((8, 130), F32, 17), _data((130,), F32, 18)
  _check(lambda a, b: a @ b, m, v)                 # (M,K)x(K,) -> (M,)
  _check(lambda a, b: b @ a.T, m, v)               # (K,)x(K,M) -> (M,)
  row = _data((1, 130), BF16, 19)
  mb = _data((8, 130), BF16, 20)
  # Mosaic's special case: (M,K) x (1,K) contracting both minor dims.
  _check(lambda a, b: lax.dot_general(a, b, NT, preferred_element_type=F32),
         mb, row)


def test_vector_dot_to_scalar():
  v, w = _data((130,), F32, 21), _data((130,), F32, 22)

  def kernel(v_ref, w_ref, o_ref):
    o_ref[...] = jnp.zeros(o_ref.shape, F32)
    o_ref[0, 0] = jnp.dot(v_ref[...], w_ref[...])
    o_ref[0, 1] = jnp.dot(v_ref[...], w_ref[...]) * 2.0
  got = check_against_interpret(kernel, jax.ShapeDtypeStruct((1, 8), F32),
                                v, w, exact=False, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(got[0, :2], [v @ w, 2 * (v @ w)], rtol=1e-5)


def test_size_one_dims():
  _check(lambda a, b: a @ b, _data((1, 8), F32, 23), _data((8, 1), F32, 24))
  _check(lambda a, b: a @ b, _data((8, 1), F32, 25), _data((1, 8), F32, 26))
  _check(lambda a, b: a @ b, _data((1, 1), I32, 27), _data((1, 5), I32, 28))


def test_dot_fused_with_elementwise_consumer():
  """The dot's result feeds a lazy elementwise chain; operands may be lazy
  expressions themselves (computed inside the dot's loop body)."""
  x, y = _data((8, 64), F32, 29), _data((64, 16), F32, 30)
  _check(lambda a, b: jnp.tanh(jnp.dot(a * 2.0, jnp.exp(b))) + 1.0, x, y)
  # a splat operand: the contracting loop bound comes from the other one
  _check(lambda a, b: jnp.dot(jnp.ones((4, 64), F32), b) + a[:4, :16], x, y)


def test_unsigned_dot_raises():
  x = jnp.ones((8, 8), jnp.uint32)

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] @ x_ref[...]
  with pytest.raises(NotImplementedError, match="Unsigned integer"):
    call(kernel, jax.ShapeDtypeStruct((8, 8), jnp.uint32), x)


# -- transpose ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, BF16, I32], ids=["f32", "bf16", "i32"])
def test_transpose_2d(dtype):
  x = _data((7, 130), dtype, 31)
  _check(lambda a: a.T, x)
  _check(lambda a: a.T * 2 + a.T, x)


def test_transpose_3d_and_bool():
  x = _data((2, 3, 5), F32, 32)

  def fn(a):
    return (jnp.transpose(a, (2, 0, 1)), jnp.transpose(a, (1, 2, 0)),
            jnp.transpose(a, (0, 2, 1)), jnp.transpose(a > 0, (2, 1, 0)))
  check_outputs_of(fn, x)


def test_transpose_in_place_square():
  """o = o.T reads the whole block before writing it."""
  x = _data((16, 16), F32, 33)

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]
    o_ref[...] = o_ref[...].T + 1.0
  got = check_against_interpret(kernel, jax.ShapeDtypeStruct(x.shape, F32), x)
  assert_same(got, x.T + 1.0)


# -- real kernels -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_tiled_matmul_with_vmem_accumulator(dtype):
  """The canonical Pallas TPU matmul: a (i, j, k) grid, an f32 VMEM
  accumulator zeroed at k == 0 and written back at the last k."""
  m, n, kk = 64, 256, 384
  bm, bn, bk = 32, 128, 128
  x, y = _data((m, kk), dtype, 34), _data((kk, n), dtype, 35)
  nk = kk // bk

  def kernel(x_ref, y_ref, o_ref, acc_ref):
    @pl.when(pl.program_id(2) == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    acc_ref[...] += jnp.dot(x_ref[...], y_ref[...],
                            preferred_element_type=jnp.float32)

    @pl.when(pl.program_id(2) == nk - 1)
    def _():
      o_ref[...] = acc_ref[...].astype(o_ref.dtype)

  got = check_against_interpret(
      kernel, jax.ShapeDtypeStruct((m, n), dtype), x, y,
      grid=(m // bm, n // bn, nk),
      in_specs=[pl.BlockSpec((bm, bk), lambda i, j, k: (i, k)),
                pl.BlockSpec((bk, bn), lambda i, j, k: (k, j))],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j, k: (i, j)),
      scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)], **_tol(dtype))
  want = jnp.dot(x, y, preferred_element_type=F32).astype(dtype)
  assert_same(got, want, **_tol(dtype))


def test_attention_scores_kernel():
  """softmax(q @ k.T / sqrt(d)) @ v on (8, 128) query blocks."""
  q, k, v = (_data((32, 64), F32, s) for s in (36, 37, 38))

  def kernel(q_ref, k_ref, v_ref, o_ref):
    s = lax.dot_general(q_ref[...], k_ref[...], NT) * (1.0 / 8.0)
    p = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
    p = p / jnp.sum(p, axis=1, keepdims=True)
    o_ref[...] = jnp.dot(p, v_ref[...])
  full = pl.BlockSpec((32, 64), lambda i: (0, 0))
  got = check_against_interpret(
      kernel, jax.ShapeDtypeStruct((32, 64), F32), q, k, v, grid=(4,),
      in_specs=[pl.BlockSpec((8, 64), lambda i: (i, 0)), full, full],
      out_specs=pl.BlockSpec((8, 64), lambda i: (i, 0)), **_tol(F32))
  want = jax.nn.softmax(q @ k.T / 8.0, axis=1) @ v
  assert_same(got, want, **_tol(F32))


# -- acc_ref[...] += dot(...): the fused accumulation (lowering/fusion.py) ----
def _acc_kernel_check(body, x, y, acc_shape, out_shape, want):
  """A one-step kernel with an f32 VMEM scratch accumulator ``acc`` that
  ``body(x_ref, y_ref, o_ref, acc_ref)`` updates; vs interpret and ``want``."""
  def kernel(x_ref, y_ref, o_ref, acc_ref):
    acc_ref[...] = jnp.full(acc_ref.shape, 0.5, jnp.float32)
    body(x_ref, y_ref, o_ref, acc_ref)
  got = check_against_interpret(
      kernel, jax.ShapeDtypeStruct(out_shape, F32), x, y,
      scratch_shapes=[pltpu.VMEM(acc_shape, F32)], **_tol(F32))
  assert_same(got, want, **_tol(F32))


def test_accumulate_reads_old_value_taken_before_the_update():
  """A value read from the accumulator before the update and used after it
  must keep the old contents (the fused write happens at the dot)."""
  x, y = _data((16, 32), F32, 40), _data((32, 16), F32, 41)

  def body(x_ref, y_ref, o_ref, acc_ref):
    old = acc_ref[...] * 2.0
    acc_ref[...] += jnp.dot(x_ref[...], y_ref[...])
    o_ref[...] = old + acc_ref[...]
  _acc_kernel_check(body, x, y, (16, 16), (16, 16), 1.0 + (0.5 + x @ y))


def test_accumulate_into_a_slice_with_dynamic_index():
  x, y = _data((8, 32), F32, 42), _data((32, 16), F32, 43)

  def body(x_ref, y_ref, o_ref, acc_ref):
    i = jnp.int32(1) + (x_ref[0, 0] > 1e9).astype(jnp.int32)  # 1, traced
    acc_ref[pl.ds(i * 8, 8), :] += jnp.dot(x_ref[...], y_ref[...])
    o_ref[...] = acc_ref[...]
  want = jnp.full((24, 16), 0.5, F32).at[8:16].add(x @ y)
  _acc_kernel_check(body, x, y, (24, 16), (24, 16), want)


def test_accumulate_with_operand_reading_the_accumulator():
  """acc += acc @ y: the product reads the accumulator -- not fused."""
  x, y = _data((16, 16), F32, 44), _data((16, 16), F32, 45)

  def body(x_ref, y_ref, o_ref, acc_ref):
    acc_ref[...] = x_ref[...]
    acc_ref[...] += jnp.dot(acc_ref[...], y_ref[...])
    o_ref[...] = acc_ref[...]
  _acc_kernel_check(body, x, y, (16, 16), (16, 16), x + x @ y)


def test_accumulate_add_order_and_product_used_twice():
  """d + acc (operands swapped) is fused; a product also used elsewhere is
  not (it needs its own buffer)."""
  x, y = _data((16, 32), F32, 46), _data((32, 16), F32, 47)

  def body(x_ref, y_ref, o_ref, acc_ref):
    d = jnp.dot(x_ref[...], y_ref[...])
    acc_ref[...] = d + acc_ref[...]
    p = jnp.dot(x_ref[...], y_ref[...])
    acc_ref[...] += p
    o_ref[...] = acc_ref[...] + p
  want = 0.5 + 3 * (x @ y)
  _acc_kernel_check(body, x, y, (16, 16), (16, 16), want)


def test_accumulate_through_a_width_changing_ref_bitcast_is_not_fused():
  x, y = _data((16, 32), F32, 48), _data((32, 16), F32, 49)

  def kernel(x_ref, y_ref, o_ref, acc_ref):
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.int16)
    wide = acc_ref.bitcast(jnp.float32)  # (32, 16) i16 -> (16, 16) f32
    wide[...] += jnp.dot(x_ref[...], y_ref[...])
    o_ref[...] = wide[...]
  # interpret=True cannot write through a ref bitcast (JAX's discharge rule
  # lacks it): compared with jnp only.
  got = call(kernel, jax.ShapeDtypeStruct((16, 16), F32), x, y,
             scratch_shapes=[pltpu.VMEM((32, 16), jnp.int16)])
  assert_same(got, x @ y, **_tol(F32))


@pytest.mark.parametrize("view", ["last_dim_indexed", "strided_columns"])
def test_accumulate_into_a_view_with_non_unit_column_stride(view):
  """The microkernel writes rows of C contiguously: a view whose columns
  are not adjacent (acc[:, :, 1], acc[:, ::2]) is not fused."""
  x, y = _data((16, 32), F32, 52), _data((32, 24), F32, 53)
  acc_shape = (16, 24, 2) if view == "last_dim_indexed" else (16, 48)

  def body(x_ref, y_ref, o_ref, acc_ref):
    if view == "last_dim_indexed":
      acc_ref[:, :, 1] += jnp.dot(x_ref[...], y_ref[...])
    else:
      acc_ref[:, pl.ds(1, 24, stride=2)] += jnp.dot(x_ref[...], y_ref[...])
    o_ref[...] = acc_ref[...].reshape(16, 48)
  want = jnp.full(acc_shape, 0.5, F32)
  want = (want.at[:, :, 1].add(x @ y) if view == "last_dim_indexed"
          else want.at[:, 1::2].add(x @ y)).reshape(16, 48)
  _acc_kernel_check(body, x, y, acc_shape, (16, 48), want)


def test_accumulate_into_a_transposed_ref_view():
  x, y = _data((16, 32), F32, 54), _data((32, 24), F32, 55)

  def kernel(x_ref, y_ref, o_ref, acc_ref):
    acc_ref[...] = jnp.full(acc_ref.shape, 0.5, F32)
    acc_ref.T[...] += jnp.dot(x_ref[...], y_ref[...])
    o_ref[...] = acc_ref[...]
  # interpret=True has no discharge rule for a transposed ref: jnp only.
  got = call(kernel, jax.ShapeDtypeStruct((24, 16), F32), x, y,
             scratch_shapes=[pltpu.VMEM((24, 16), F32)])
  assert_same(got, 0.5 + (x @ y).T, **_tol(F32))


def _aliased_acc_check(kernel, n_out, want):
  """``kernel(acc_in, x, y, o, ...)`` with ``o`` aliasing ``acc_in`` (both
  ANY, the same storage): vs interpret and ``want``."""
  acc, x, y = (_data(s, F32, 56 + i)
               for i, s in enumerate([(16, 16), (16, 32), (32, 16)]))
  anys = pl.BlockSpec(memory_space=pl.ANY)
  outs = (jax.ShapeDtypeStruct((16, 16), F32),) * n_out
  got = check_against_interpret(
      kernel, outs, acc, x, y, in_specs=[anys, pl.BlockSpec(), pl.BlockSpec()],
      out_specs=(anys,) + (pl.BlockSpec(),) * (n_out - 1),
      input_output_aliases={0: 0}, **_tol(F32))
  assert_same(got, want(acc, x, y), **_tol(F32))


def test_accumulate_with_an_aliased_ref_written_before_the_dot():
  """o += dot while acc_in (the same buffer) is written between o's read
  and the dot: the sum must use the value read first -- not fused."""
  def kernel(acc_in, x_ref, y_ref, o_ref):
    a = o_ref[...]
    acc_in[...] = jnp.full(acc_in.shape, 7.0, F32)
    o_ref[...] = a + jnp.dot(x_ref[...], y_ref[...])
  _aliased_acc_check(kernel, 1, lambda acc, x, y: (acc + x @ y,))


def test_accumulate_with_an_aliased_ref_read_after_the_dot():
  """A read of the aliased input between the dot and the store sees the
  old contents (a fused write at the dot would show it the new ones)."""
  def kernel(acc_in, x_ref, y_ref, o_ref, t_ref):
    a = o_ref[...]
    d = jnp.dot(x_ref[...], y_ref[...])
    t = acc_in[...]
    o_ref[...] = a + d
    t_ref[...] = t
  _aliased_acc_check(kernel, 2, lambda acc, x, y: (acc + x @ y, acc))


@pytest.mark.parametrize("how", ["jit", "when", "fori", "run_scoped"])
def test_accumulate_inside_a_nested_body_after_an_outer_read(how):
  """The fused update sits in a sub-jaxpr; a value read from the
  accumulator outside, before it, keeps the old contents."""
  x, y = _data((16, 32), F32, 60), _data((32, 16), F32, 61)

  def update(x_ref, y_ref, acc_ref):
    acc_ref[...] += jnp.dot(x_ref[...], y_ref[...])

  def body(x_ref, y_ref, o_ref, acc_ref):
    old = acc_ref[...] * 2.0
    if how == "jit":
      jax.jit(update)(x_ref, y_ref, acc_ref)
    elif how == "when":
      pl.when(x_ref[0, 0] < 1e9)(lambda: update(x_ref, y_ref, acc_ref))
    elif how == "fori":
      lax.fori_loop(0, 2, lambda i, c: update(x_ref, y_ref, acc_ref), None)
    else:
      pl.run_scoped(lambda s: update(x_ref, y_ref, acc_ref),
                    pltpu.VMEM((8, 8), F32))
    o_ref[...] = old + acc_ref[...]
  times = 2 if how == "fori" else 1
  _acc_kernel_check(body, x, y, (16, 16), (16, 16),
                    1.0 + 0.5 + times * (x @ y))


def test_accumulate_batched_product_into_a_slice():
  x, y = _data((3, 16, 32), F32, 62), _data((3, 32, 24), F32, 63)

  def body(x_ref, y_ref, o_ref, acc_ref):
    acc_ref[1] += jnp.einsum("bik,bkj->bij", x_ref[...], y_ref[...])
    o_ref[...] = acc_ref[...].reshape(6, 16, 24)
  want = jnp.full((2, 3, 16, 24), 0.5, F32).at[1].add(
      jnp.einsum("bik,bkj->bij", x, y)).reshape(6, 16, 24)
  _acc_kernel_check(body, x, y, (2, 3, 16, 24), (6, 16, 24), want)


def test_accumulate_into_a_bf16_accumulator():
  """A bf16 accumulator is not fused (the sum rounds to bf16)."""
  x, y = _data((16, 32), BF16, 64), _data((32, 24), BF16, 65)

  def kernel(x_ref, y_ref, o_ref, acc_ref):
    acc_ref[...] = jnp.full(acc_ref.shape, 0.5, BF16)
    acc_ref[...] += jnp.dot(x_ref[...], y_ref[...])
    o_ref[...] = acc_ref[...].astype(F32)
  check_against_interpret(kernel, jax.ShapeDtypeStruct((16, 24), F32), x, y,
                          scratch_shapes=[pltpu.VMEM((16, 24), BF16)],
                          **_tol(BF16))


@pytest.mark.parametrize("m,k,n", [(9, 129, 33), (13, 514, 45), (16, 256, 64),
                                   (8, 2, 40)])
@pytest.mark.parametrize("form", ["NN", "NT", "TN"])
def test_bf16_microkernel_edges(m, k, n, form):
  """bf16 x bf16 -> f32 at the microkernel's edges: odd k (no k pairs), k
  over one 256-deep chunk, partial row tiles and column panels, transposed
  operands (pairs gathered with a stride, or the widening path)."""
  dims = {"NN": NN, "NT": NT, "TN": TN}[form]
  a_shape = (k, m) if form == "TN" else (m, k)
  b_shape = (n, k) if form == "NT" else (k, n)
  x, y = _data(a_shape, BF16, 50), _data(b_shape, BF16, 51)
  _check(lambda a, b: lax.dot_general(a, b, dims,
                                      preferred_element_type=F32), x, y)


def test_accumulate_product_computed_before_the_read():
  """d = dot(x, y); acc_ref[...] += d (fused too) -- and with a write to the
  accumulator between the product and the read (not fused)."""
  x, y = _data((16, 32), F32, 52), _data((32, 16), F32, 53)

  def body(x_ref, y_ref, o_ref, acc_ref):
    d = jnp.dot(x_ref[...], y_ref[...])
    acc_ref[...] += d
    e = jnp.dot(x_ref[...], y_ref[...])
    acc_ref[0:8, :] = acc_ref[0:8, :] * 2.0
    acc_ref[...] += e
    o_ref[...] = acc_ref[...]
  xy = x @ y
  want = (0.5 + xy).at[0:8].multiply(2.0) + xy
  _acc_kernel_check(body, x, y, (16, 16), (16, 16), want)


# -- every matmul kernel of the runtime ------------------------------------------
# runtime/matmul.cc picks its kernel from the CPU's features; a cap lets this
# machine run the lower ones too (what an AVX2-only machine runs).
def _matmul_kernel_cap(cap: int) -> int:
  import ctypes
  from pallas_cpu import runtime_lib
  fn = runtime_lib.library().pallas_cpu_rt_matmul_kernel
  fn.restype, fn.argtypes = ctypes.c_int64, [ctypes.c_int64]
  return fn(cap)


_KERNELS = ["baseline", "avx2", "avx512", "avx512bf16", "amx"]
_BEST = _matmul_kernel_cap(-1)


@pytest.fixture
def matmul_kernel(request):
  level = _KERNELS.index(request.param)
  try:
    assert _matmul_kernel_cap(level) == level
    yield request.param
  finally:
    _matmul_kernel_cap(len(_KERNELS))


# (m, k, n); the lowering sends products of at least 64 lhs elements to the
# runtime.  (64, 96, 48): whole AMX tiles (A read in place).
_SHAPES = [(9, 129, 33), (13, 514, 45), (16, 256, 64), (130, 70, 200),
           (1, 64, 1), (70, 2, 64), (64, 96, 48)]


def _matmul_cases():
  for m, k, n in _SHAPES:
    for form in ("NN", "NT", "TN", "TT"):
      for dtypes in ((F32, F32), (BF16, BF16), (F32, BF16), (BF16, F32)):
        yield m, k, n, form, dtypes


def _run_products(cases):
  """Each case as a kernel computing acc (+)= x . y twice (written, then
  accumulated), against numpy in f64; returns the outputs."""
  outs = []
  for i, (m, k, n, form, (da, db)) in enumerate(cases):
    dims = {"NN": NN, "NT": NT, "TN": TN, "TT": TT}[form]
    a_shape = (k, m) if form in ("TN", "TT") else (m, k)
    b_shape = (n, k) if form in ("NT", "TT") else (k, n)
    x, y = _data(a_shape, da, 60 + i), _data(b_shape, db, 90 + i)

    def kernel(x_ref, y_ref, o_ref, acc_ref):
      prod = lambda: lax.dot_general(x_ref[...], y_ref[...], dims,
                                     preferred_element_type=F32)
      acc_ref[...] = prod()
      acc_ref[...] += prod()
      o_ref[...] = acc_ref[...]
    got = call(kernel, jax.ShapeDtypeStruct((m, n), F32), x, y,
               scratch_shapes=[pltpu.VMEM((m, n), F32)])
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xa = xa.T if form in ("TN", "TT") else xa
    ya = ya.T if form in ("NT", "TT") else ya
    np.testing.assert_allclose(np.asarray(got), 2 * (xa @ ya), rtol=1e-5,
                               atol=1e-4 * np.sqrt(k),
                               err_msg=f"{m}x{k}x{n} {form} {da} {db}")
    outs.append(np.asarray(got))
  return outs


@pytest.mark.parametrize("matmul_kernel", _KERNELS[:_BEST + 1], indirect=True)
def test_every_matmul_kernel(matmul_kernel):
  """Every kernel this machine can run: f32, bf16 and mixed operands, every
  transposition, shapes at and across the register tiles' and k chunks'
  edges, written and accumulated products."""
  _run_products(list(_matmul_cases()))


@pytest.mark.skipif(_BEST < _KERNELS.index("avx512"),
                    reason="needs a CPU with AVX-512 (compares it with AVX2)")
def test_avx512_kernel_gives_the_avx2_kernels_bits():
  """The AVX-512 and AVX2 kernels sum in the same order (k chunks of 256,
  FMAs): f32 products agree bit for bit, so results do not depend on the
  machine's vector width."""
  cases = [c for c in _matmul_cases() if c[4] == (F32, F32)]
  try:
    _matmul_kernel_cap(_KERNELS.index("avx2"))
    want = _run_products(cases)
    _matmul_kernel_cap(_KERNELS.index("avx512"))
    got = _run_products(cases)
  finally:
    _matmul_kernel_cap(len(_KERNELS))
  for g, w in zip(got, want):
    assert_same(g, w)
