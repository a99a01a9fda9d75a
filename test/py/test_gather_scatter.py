"""Gathers and scatters: ref indexing with arrays of indices, the gather and
scatter primitives on values (every mode, out-of-bounds and negative
indices), and masked loads and stores whose window crosses the ref's end --
each against interpret=True (and numpy where it is simple)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax
from jax._src.pallas import primitives as pallas_primitives
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, check_against_interpret

X = jnp.asarray(np.random.default_rng(0).standard_normal((8, 128)),
                jnp.float32)
F32 = jax.ShapeDtypeStruct


def _idx(*v):
  return jnp.asarray(v, jnp.int32)


# -- ref indexing with arrays of indices --------------------------------------
def test_ref_gather_rows_columns_and_both():
  def kernel(x_ref, i_ref, rows_ref, cols_ref, pts_ref):
    i = i_ref[...]
    rows_ref[...] = x_ref[i, :] * 2
    cols_ref[...] = x_ref[:, i]
    pts_ref[...] = x_ref[i, i + 1]
  i = _idx(3, 1, 7, 0, 3)        # duplicates too
  rows, cols, pts = check_against_interpret(
      kernel, (F32((5, 128), X.dtype), F32((8, 5), X.dtype),
               F32((5,), X.dtype)), X, i)
  assert_same(rows, X[i, :] * 2)
  assert_same(cols, X[:, i])
  assert_same(pts, X[i, i + 1])


def test_ref_scatter_rows_and_read_back_old_value():
  def kernel(x_ref, i_ref, o_ref, old_ref):
    o_ref[...] = x_ref[...]
    i = i_ref[...]
    old_ref[...] = o_ref[i, 2:6]
    o_ref[i, :] = x_ref[0:4, :] + 100
  i = _idx(6, 2, 5, 0)
  out, old = check_against_interpret(
      kernel, (F32(X.shape, X.dtype), F32((4, 4), X.dtype)), X, i)
  assert_same(out, X.at[i, :].set(X[0:4] + 100))
  assert_same(old, X[i, 2:6])


def test_ref_indexing_through_at_views_and_grid_blocks():
  """The index array after a view (``ref.at[...]``), in a blocked grid,
  with out-of-bounds and negative indices (interpret mode's numpy
  semantics: negative indices count from the end, reads clamp, writes
  past the end are dropped)."""
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 16, 128)),
                  jnp.float32)

  def kernel(i_ref, x_ref, o_ref):
    i = i_ref[...]
    v = x_ref.at[2:10][i, :]
    o_ref[...] = jnp.zeros_like(o_ref)
    o_ref.at[1:9][i, :] = v + 1.0

  i = _idx(-1, 0, 7, 9, -12)
  spec = pl.BlockSpec((None, 16, 128), lambda b: (b, 0, 0))
  check_against_interpret(kernel, F32(x.shape, x.dtype), i, x, grid=(4,),
                          in_specs=[pl.BlockSpec((5,), lambda b: (0,)), spec],
                          out_specs=spec)


def test_ref_scatter_into_scratch_with_a_grid_carry():
  def kernel(x_ref, i_ref, o_ref, acc_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)
    rows = i_ref[pl.program_id(0), :]
    acc_ref[rows, :] = acc_ref[rows, :] + x_ref[...]
    o_ref[...] = acc_ref[...]

  x = jnp.asarray(np.random.default_rng(2).standard_normal((12, 128)),
                  jnp.float32)
  i = jnp.asarray([[0, 5, 2], [7, 5, 1], [2, 3, 4], [0, 1, 6]], jnp.int32)
  check_against_interpret(
      kernel, F32((8, 128), jnp.float32), x, i, grid=(4,),
      in_specs=[pl.BlockSpec((3, 128), lambda k: (k, 0)),
                pl.BlockSpec((4, 3), lambda k: (0, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda k: (0, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32)])


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_ref_gather_scatter_fuzz(data):
  """Random index arrays (in and out of bounds, negative, duplicated
  only where the scatter's order does not matter) into a random axis."""
  n = data.draw(st.sampled_from([3, 8, 13]))
  m = data.draw(st.sampled_from([1, 7, 128]))
  k = data.draw(st.integers(1, 6))
  axis = data.draw(st.integers(0, 1))
  size = (n, m)[axis]
  idx = np.asarray(data.draw(st.lists(st.integers(-size - 2, size + 2),
                                      min_size=k, max_size=k)), np.int32)
  uniq = np.unique(idx % size, return_index=True)[1]
  sidx = idx[np.sort(uniq)]      # distinct rows after wrapping: one winner
  x = jnp.asarray(np.random.default_rng(3).standard_normal((n, m)),
                  jnp.float32)

  def kernel(x_ref, i_ref, s_ref, g_ref, o_ref):
    i = i_ref[...]
    if axis == 0:
      g_ref[...] = x_ref[i, :]
      o_ref[...] = x_ref[...]
      o_ref[s_ref[...], :] = jnp.full((len(sidx), m), -1.0, jnp.float32)
    else:
      g_ref[...] = x_ref[:, i]
      o_ref[...] = x_ref[...]
      o_ref[:, s_ref[...]] = jnp.full((n, len(sidx)), -1.0, jnp.float32)

  gshape = (k, m) if axis == 0 else (n, k)
  check_against_interpret(kernel, (F32(gshape, x.dtype), F32(x.shape, x.dtype)),
                          x, jnp.asarray(idx), jnp.asarray(sidx))


# -- the gather and scatter primitives on values ----------------------------
def test_value_gathers_jnp_forms():
  def kernel(x_ref, i_ref, a_ref, b_ref, c_ref, d_ref, e_ref):
    v, i = x_ref[...], i_ref[...]
    a_ref[...] = v[i]                                  # row gather
    b_ref[...] = jnp.take(v, i, axis=1, mode="clip")   # column gather
    c_ref[...] = jnp.diagonal(v[:, :8])[None, :]       # diagonal
    d_ref[...] = jnp.diagonal(v[:, :16], offset=3)[None, :]
    e_ref[...] = v[i, i + 2][None, :]                  # point gather
  i = _idx(3, 1, 7, 0, 2)
  outs = check_against_interpret(
      kernel, (F32((5, 128), X.dtype), F32((8, 5), X.dtype),
               F32((1, 8), X.dtype), F32((1, 8), X.dtype),
               F32((1, 5), X.dtype)), X, i)
  assert_same(outs[0], X[i])
  assert_same(outs[2], jnp.diagonal(X[:, :8])[None])


@pytest.mark.parametrize("mode", ["clip", "fill", "promise_in_bounds"])
def test_value_gather_out_of_bounds_modes(mode):
  """Starts past either end: clamped (clip/promise_in_bounds) or the fill
  value (fill, default NaN and a given one); slices wider than one row."""
  dn = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(0,),
                                  start_index_map=(0, 1))

  def kernel(x_ref, i_ref, o_ref, p_ref):
    v, i = x_ref[...], i_ref[...]
    o_ref[...] = lax.gather(v, i, dn, slice_sizes=(1, 16), mode=mode)
    p_ref[...] = lax.gather(v, i, dn, slice_sizes=(1, 16), mode=mode,
                            fill_value=-3.0)
  i = jnp.asarray([[0, 0], [7, 112], [8, 0], [-1, 5], [3, 113], [2, -1],
                   [5, 40]], jnp.int32)
  check_against_interpret(kernel, (F32((7, 16), X.dtype),
                                   F32((7, 16), X.dtype)), X, i)


@pytest.mark.parametrize("idx_dtype", [jnp.uint8, jnp.int8, jnp.int64])
def test_value_gather_index_dtypes(idx_dtype):
  with jax.enable_x64(idx_dtype == jnp.int64):
    i = jnp.asarray([0, 5, 7, 255 if idx_dtype == jnp.uint8 else -2],
                    idx_dtype)

    def kernel(x_ref, i_ref, o_ref):
      o_ref[...] = jnp.take(x_ref[...], i_ref[...], axis=0, mode="fill",
                            fill_value=7.0)
    check_against_interpret(kernel, F32((4, 128), X.dtype), X, i)


@pytest.mark.parametrize("op", ["set", "add", "mul", "min", "max", "get"])
@pytest.mark.parametrize("mode", ["fill", "clip", "promise_in_bounds"])
def test_value_scatter_ops_and_modes(op, mode):
  """x.at[idx].op(u) with duplicate and out-of-bounds indices (dropped or
  clamped): ``set`` with unique in-range indices, the rest with any."""
  i = (_idx(5, 1, 2, 6) if op == "set" and mode != "clip"
       else _idx(5, 1, 5, 9, -1, 0))
  u = jnp.asarray(np.random.default_rng(4).standard_normal((len(i), 128)),
                  jnp.float32)

  def kernel(x_ref, i_ref, u_ref, o_ref):
    ref = x_ref[...].at[i_ref[...]]
    if op == "get":
      o_ref[...] = jnp.zeros_like(o_ref)
      o_ref[0:len(i), :] = ref.get(mode=mode, fill_value=0.5)
    else:
      o_ref[...] = getattr(ref, op)(u_ref[...], mode=mode)
  check_against_interpret(kernel, F32(X.shape, X.dtype), X, i, u)


def test_value_scatter_int_and_bool_and_partial_windows():
  """Integer and bool operands; lax.scatter_add with windows that run past
  the end (dropped whole in fill mode, as XLA does; clamped in clip)."""
  dn = lax.ScatterDimensionNumbers(update_window_dims=(1,),
                                   inserted_window_dims=(0,),
                                   scatter_dims_to_operand_dims=(0, 1))
  xi = jnp.arange(8 * 32, dtype=jnp.int32).reshape(8, 32)
  i = jnp.asarray([[1, 0], [2, 20], [3, 29], [4, -1], [1, 4]], jnp.int32)
  u = jnp.ones((5, 4), jnp.int32) * 1000

  def kernel(x_ref, i_ref, u_ref, a_ref, b_ref, c_ref):
    x, i, u = x_ref[...], i_ref[...], u_ref[...]
    a_ref[...] = lax.scatter_add(x, i, u, dn, mode="fill")
    b_ref[...] = lax.scatter_add(x, i, u, dn, mode="clip")
    m = x > 100
    c_ref[...] = m.at[i[:, 0]].set(False).astype(jnp.int32)
  outs = check_against_interpret(
      kernel, (F32(xi.shape, xi.dtype),) * 3, xi, i, u)
  assert_same(outs[0], lax.scatter_add(xi, i, u, dn, mode="fill"))
  assert_same(outs[1], lax.scatter_add(xi, i, u, dn, mode="clip"))


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_value_gather_scatter_fuzz(data):
  """jnp advanced indexing and .at[] on values of random shape."""
  shape = data.draw(st.sampled_from([(5, 7), (3, 4, 9), (16, 128)]))
  axis = data.draw(st.integers(0, len(shape) - 1))
  k = data.draw(st.integers(1, 5))
  idx = np.asarray(data.draw(st.lists(
      st.integers(-shape[axis] - 3, shape[axis] + 3), min_size=k,
      max_size=k)), np.int32)
  mode = data.draw(st.sampled_from(["fill", "clip", "promise_in_bounds"]))
  x = jnp.asarray(np.random.default_rng(5).standard_normal(shape),
                  jnp.float32)
  g_shape = jnp.take(x, idx, axis=axis).shape

  def kernel(x_ref, i_ref, g_ref, s_ref):
    v, i = x_ref[...], i_ref[...]
    sl = (slice(None),) * axis + (i,)
    g_ref[...] = v.at[sl].get(mode=mode)
    s_ref[...] = v.at[sl].add(jnp.take(v, i, axis=axis, mode="clip"),
                              mode=mode)
  check_against_interpret(kernel, (F32(g_shape, x.dtype),
                                   F32(shape, x.dtype)), x, jnp.asarray(idx))


# -- masked loads and stores whose window crosses the ref's end ----------------
def test_masked_load_and_store_crossing_the_end():
  """The tail of a 1-D array walked in windows of 8: the last window
  crosses the end; its mask covers the in-bounds part only."""
  n = 21
  x = jnp.arange(n, dtype=jnp.float32) + 0.5

  def kernel(x_ref, o_ref, p_ref):
    o_ref[...] = jnp.full_like(o_ref, -1.0)
    p_ref[...] = jnp.zeros_like(p_ref)

    @pl.loop(0, 3)
    def _(k):
      s = k * 8
      m = s + jnp.arange(8) < n
      v = pallas_primitives.load(x_ref, (pl.ds(s, 8),), mask=m, other=9.0)
      pallas_primitives.store(o_ref, (pl.ds(s, 8),), v * 2, mask=m)
      p_ref[pl.ds(s, 8)] = v   # the window with `other` past the end

  out, p = check_against_interpret(kernel, (F32((n,), jnp.float32),
                                            F32((24,), jnp.float32)), x)
  assert_same(out, x * 2)
  assert_same(p, jnp.concatenate([x, jnp.full((3,), 9.0, jnp.float32)]))


def test_masked_crossing_window_2d_without_other_and_pltpu_forms():
  """Rows past the end without ``other`` read interpret mode's
  uninitialized value (NaN); pltpu.load/store on a view that crosses; the
  swap's returned old value."""
  x = jnp.asarray(np.random.default_rng(6).standard_normal((10, 128)),
                  jnp.float32)

  def kernel(x_ref, o_ref, p_ref, q_ref):
    s = pl.program_id(0) * 0 + 6
    m = (s + lax.broadcasted_iota(jnp.int32, (8, 128), 0)) < 10
    p_ref[...] = pallas_primitives.load(x_ref, (pl.ds(s, 8), slice(None)),
                                        mask=m)
    o_ref[...] = x_ref[...]
    pltpu.store(o_ref.at[pl.ds(s, 8)], p_ref[...] + 1, mask=m)
    q_ref[...] = pltpu.load(o_ref.at[pl.ds(s, 8), :], mask=m)

  check_against_interpret(kernel, (F32((10, 128), jnp.float32),
                                   F32((8, 128), jnp.float32),
                                   F32((8, 128), jnp.float32)), x, grid=(1,))


def test_masked_crossing_window_inside_is_in_place_and_strided():
  """Windows that do not cross (the common case) and a strided crossing
  window (no interpret reference for strides: numpy's)."""
  x = jnp.arange(20, dtype=jnp.float32)

  def kernel(s_ref, x_ref, o_ref):
    s = s_ref[0]
    m = s + 3 * jnp.arange(4) < 20
    o_ref[...] = pallas_primitives.load(
        x_ref, (pl.ds(s, 4, stride=3),), mask=m, other=-1.0)

  for s in (0, 8, 11):
    got = pallas_cpu.pallas_call(
        kernel, out_shape=F32((4,), jnp.float32), backend="cpu",
        in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM),
                  pl.BlockSpec((20,), lambda: (0,))])(_idx(s), x)
    pos = s + 3 * np.arange(4)
    want = np.where(pos < 20, np.asarray(x)[np.minimum(pos, 19)], -1.0)
    assert_same(got, jnp.asarray(want, jnp.float32))


def test_masked_crossing_window_with_a_true_mask_past_the_end_is_an_error():
  def kernel(x_ref, o_ref):
    s = pl.program_id(0) + 4
    o_ref[...] = pallas_primitives.load(x_ref, (pl.ds(s, 8),),
                                        mask=jnp.arange(8) < 7, other=0.0)
  x = jnp.arange(10, dtype=jnp.float32)
  f = pallas_cpu.pallas_call(kernel, out_shape=F32((8,), jnp.float32),
                             grid=(1,), backend="cpu")
  with pytest.raises(Exception, match=r"ref index out of bounds"):
    jax.block_until_ready(f(x))

  def kernel(x_ref, o_ref):   # unmasked: still the existing error
    s = pl.program_id(0) + 4
    o_ref[...] = x_ref[pl.ds(s, 8)]
  f = pallas_cpu.pallas_call(kernel, out_shape=F32((8,), jnp.float32),
                             grid=(1,), backend="cpu")
  with pytest.raises(Exception, match=r"ref index out of bounds"):
    jax.block_until_ready(f(x))


def test_masked_gather_and_scatter_through_index_arrays():
  i = _idx(3, 1, 7, 0)

  def kernel(x_ref, i_ref, g_ref, o_ref):
    rows = i_ref[...][:, None]
    cols = lax.broadcasted_iota(jnp.int32, (1, 128), 1)
    m = jnp.arange(4)[:, None] < 3
    g_ref[...] = pallas_primitives.load(x_ref, (rows, cols), mask=m,
                                        other=0.0)
    o_ref[...] = jnp.zeros_like(o_ref)
    pallas_primitives.store(o_ref, (rows, cols), x_ref[0:4, :], mask=m)
  check_against_interpret(kernel, (F32((4, 128), X.dtype),
                                   F32(X.shape, X.dtype)), X, i)
