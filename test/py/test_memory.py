"""Ref reads and writes, VMEM scratch across grid steps, scalar prefetch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.state import utils as state_utils
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, call, check_against_interpret

X = jnp.asarray(np.random.default_rng(0).standard_normal((32, 256)),
                jnp.float32)


def test_static_dynamic_and_integer_indexing():
  def kernel(x_ref, o_ref):
    i = pl.program_id(0)
    o_ref[...] = jnp.zeros((8, 128), jnp.float32)
    o_ref[0:2, :] = x_ref[6:8, :]                       # static slices
    o_ref[pl.ds(2, 2), :] = x_ref[pl.ds(i, 2), :] * 2   # dynamic start
    o_ref[4, :] = x_ref[5, :] + x_ref[i, :]             # integer indices
    o_ref[5, pl.ds(0, 64)] = x_ref[0, pl.ds(64, 64)]
    o_ref[6:8, ::2] = x_ref[0:2, 1::2]                  # strided

  spec = pl.BlockSpec((8, 128), lambda i, j: (i, j))
  check_against_interpret(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X,
                          grid=(4, 2), in_specs=[spec], out_specs=spec)


def test_read_after_overlapping_write():
  """o[1:] = o[:-1] must not smear: the value is read before the write."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]
    o_ref[1:, :] = o_ref[:-1, :] + 1
    o_ref[:, 1:] = o_ref[:, :-1]

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  check_against_interpret(kernel, jax.ShapeDtypeStruct((32, 128), X.dtype),
                          X[:, :128], grid=(4,), in_specs=[spec],
                          out_specs=spec)


def test_swap_returns_old_value():
  def kernel(x_ref, o_ref, p_ref):
    o_ref[...] = x_ref[...]
    old = o_ref.swap(x_ref[...] * 2) if hasattr(o_ref, "swap") else None
    p_ref[...] = old + 1

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  shape = jax.ShapeDtypeStruct((32, 128), X.dtype)
  check_against_interpret(kernel, (shape, shape), X[:, :128], grid=(4,),
                          in_specs=[spec], out_specs=[spec, spec])


def test_vmem_scratch_accumulates_across_grid_steps():
  """Scratch persists across grid steps: a row-sum over the second grid
  dimension, written at its last step (the TPU reduction pattern)."""
  def kernel(x_ref, o_ref, acc_ref):
    k = pl.program_id(1)

    @pl.when(k == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    acc_ref[...] += x_ref[...]

    @pl.when(k == pl.num_programs(1) - 1)
    def _():
      o_ref[...] = acc_ref[...]

  out = check_against_interpret(
      kernel, jax.ShapeDtypeStruct((32, 128), X.dtype), X, grid=(4, 2),
      in_specs=[pl.BlockSpec((8, 128), lambda i, k: (i, k))],
      out_specs=pl.BlockSpec((8, 128), lambda i, k: (i, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32)], exact=False)
  assert_same(out, X[:, :128] + X[:, 128:], exact=False)


def test_scalar_prefetch_drives_index_maps():
  """A gather of row blocks chosen by a prefetched index vector."""
  order = jnp.asarray([3, 0, 2, 1, 3], jnp.int32)

  def kernel(idx_ref, x_ref, o_ref):
    o_ref[...] = x_ref[...] + idx_ref[pl.program_id(0)].astype(jnp.float32)

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(5,),
      in_specs=[pl.BlockSpec((8, 256), lambda i, idx: (idx[i], 0))],
      out_specs=pl.BlockSpec((8, 256), lambda i, idx: (i, 0)))
  out = check_against_interpret(
      kernel, jax.ShapeDtypeStruct((40, 256), X.dtype), order, X,
      grid_spec=grid_spec)
  want = jnp.concatenate([X[8 * int(j):8 * int(j) + 8] + float(j)
                          for j in order])
  assert_same(out, want)


def test_whole_array_blocks_and_default_specs():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...].astype(jnp.int32) + 1

  check_against_interpret(kernel, jax.ShapeDtypeStruct(X.shape, jnp.int32),
                          X * 10)


def test_reshaped_and_transposed_refs():
  """ref.reshape(...) and ref.T views of contiguous refs, read and written."""
  x = jnp.arange(2 * 8 * 128, dtype=jnp.float32).reshape(2, 8, 128)

  def kernel(x_ref, o_ref, t_ref):
    o_ref[...] = x_ref.reshape(16, 128)[1::2, :]
    o_ref.reshape(8, 2, 64)[:, 0, :] = x_ref[0, :, 0:64] * 2
    t_ref[...] = x_ref.at[1].T[...]

  out, t = pallas_cpu.pallas_call(
      kernel, out_shape=(jax.ShapeDtypeStruct((8, 128), jnp.float32),
                         jax.ShapeDtypeStruct((128, 8), jnp.float32)))(x)
  want = x.reshape(16, 128)[1::2, :].reshape(8, 2, 64).at[:, 0, :].set(
      x[0, :, 0:64] * 2).reshape(8, 128)
  assert_same(out, want)
  assert_same(t, x[1].T)


# -- ref.bitcast ---------------------------------------------------------------
# A width-changing ref bitcast packs along the second-minor dimension
# (jax._src.state.utils.bitcast, which interpret mode's discharge rule uses).
# The data is random bits, NaNs included.  XLA may quiet NaN payloads in
# float ops, interpret mode's included: results are compared with interpret
# mode as values (any NaN equals any NaN) and with the spec, computed on
# unsigned integers of the same widths, bit for bit.


def _uint(dtype):
  return jnp.dtype(f"uint{jnp.dtype(dtype).itemsize * 8}")


def _as_bits(x):
  return jax.lax.bitcast_convert_type(x, _uint(x.dtype))


def _from_bits(x, dtype):
  return jax.lax.bitcast_convert_type(x, jnp.dtype(dtype))


def _spec_bitcast(x, dtype):
  """The TPU ref-bitcast semantics, on bit patterns."""
  return _from_bits(state_utils.bitcast(_as_bits(x), _uint(dtype)), dtype)


def _random_bits(shape, dtype, seed=0):
  bits = np.random.default_rng(seed).integers(
      0, 2 ** (jnp.dtype(dtype).itemsize * 8), shape, dtype=np.uint64)
  return _from_bits(jnp.asarray(bits.astype(_uint(dtype))), dtype)


def _assert_bits(got, want):
  assert_same(_as_bits(got), _as_bits(want))


def _assert_values(got, want):
  """Equal bits, except that any NaN equals any NaN."""
  same = _as_bits(got) == _as_bits(want)
  if jnp.issubdtype(got.dtype, jnp.floating):
    same |= jnp.isnan(got) & jnp.isnan(want)
  assert got.shape == want.shape and got.dtype == want.dtype
  assert bool(jnp.all(same)), np.argwhere(~np.asarray(same))[:5]


@pytest.mark.parametrize("src,dst", [
    (jnp.bfloat16, jnp.uint32),   # the ragged_paged_attention pattern
    (jnp.int8, jnp.int32),        # ratio 4
    (jnp.uint16, jnp.float32),
    (jnp.float8_e4m3fn, jnp.uint32),
    (jnp.uint32, jnp.bfloat16),   # narrowing
    (jnp.float32, jnp.bfloat16),
    (jnp.int32, jnp.int8),
    (jnp.float32, jnp.int32),     # equal widths: memref element types differ
    (jnp.uint32, jnp.int32),      # equal widths: same memref element type
    (jnp.bfloat16, jnp.uint16),
])
def test_ref_bitcast_loads(src, dst):
  """Whole, strided and offset reads through ``ref.bitcast``, also of an
  ``.at[]`` window, equal bit for bit to interpret mode and the spec."""
  x = _random_bits((32, 128), src)
  y = _spec_bitcast(x, dst)
  r = y.shape[0] // 32 if y.shape[0] >= 32 else 1  # rows per source row
  shapes = [y.shape, y[1::2].shape, y[r * 2:r * 6].shape,
            _spec_bitcast(x[8:24], dst)[::3].shape]

  def kernel(x_ref, whole, strided, window, at):
    b = x_ref.bitcast(dst)
    whole[...] = b[...]
    strided[...] = b[1::2, :]
    window[...] = b[r * 2:r * 6, :]
    at[...] = x_ref.at[8:24].bitcast(dst)[::3, :]

  outs = tuple(jax.ShapeDtypeStruct(s, jnp.dtype(dst)) for s in shapes)
  got = call(kernel, outs, x)
  want = call(kernel, outs, x, backend="interpret")
  yb, atb = _as_bits(y), _as_bits(_spec_bitcast(x[8:24], dst))
  for g, w, spec in zip(got, want, [yb, yb[1::2], yb[r * 2:r * 6], atb[::3]]):
    _assert_values(g, w)
    assert_same(_as_bits(g), spec)


@pytest.mark.parametrize("src,dst,ratio", [
    (jnp.bfloat16, jnp.uint32, 2), (jnp.int8, jnp.int32, 4),
    (jnp.float32, jnp.bfloat16, 2), (jnp.int32, jnp.int8, 4)])
def test_ref_bitcast_dynamic_strided_rows(src, dst, ratio):
  """``b[pl.ds(start, n, stride)]`` with a start from scalar prefetch: on a
  narrowed ref the bit slot is chosen at run time."""
  x = _random_bits((32, 128), src)
  y = _spec_bitcast(x, dst)
  step = 2 * ratio if y.shape[0] > 32 else 2
  n = 4
  last = y.shape[0] - 1 - (n - 1) * step  # the last start in bounds
  starts = jnp.asarray([0, 1, last // 2, last], jnp.int32)

  def kernel(s_ref, x_ref, o_ref):
    start = s_ref[pl.program_id(0)]
    o_ref[...] = x_ref.bitcast(dst)[pl.ds(start, n, stride=step), :]

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(4,),
      in_specs=[pl.BlockSpec(x.shape, lambda i, s: (0, 0))],
      out_specs=pl.BlockSpec((None, n, 128), lambda i, s: (i, 0, 0)))
  got = call(kernel, jax.ShapeDtypeStruct((4, n, 128), jnp.dtype(dst)),
             starts, x, grid_spec=grid_spec)
  want = call(kernel, jax.ShapeDtypeStruct((4, n, 128), jnp.dtype(dst)),
              starts, x, grid_spec=grid_spec, backend="interpret")
  _assert_values(got, want)
  yb = _as_bits(y)
  spec = jnp.stack([yb[int(s):int(s) + (n - 1) * step + 1:step]
                    for s in starts])
  assert_same(_as_bits(got), spec)


def _spec_store(xb, dtype, index, v):
  """The bits of ``x`` after ``x.bitcast(dtype)[index] = v``, from the bits
  ``xb`` of ``x`` (interpret mode has no discharge rule for stores through a
  bitcast)."""
  y = state_utils.bitcast(xb, _uint(dtype)).at[index].set(_as_bits(v))
  return state_utils.bitcast(y, xb.dtype)


@pytest.mark.parametrize("src,dst", [
    (jnp.bfloat16, jnp.uint32), (jnp.int8, jnp.int32),
    (jnp.uint32, jnp.bfloat16), (jnp.float32, jnp.bfloat16),
    (jnp.int32, jnp.int8), (jnp.float32, jnp.int32), (jnp.bfloat16, jnp.int16),
])
def test_ref_bitcast_stores(src, dst):
  """Writes through a bitcast ref: the whole view, strided rows (of a
  narrowed ref: some bit slots, the others keep their bits) and an
  ``.at[]`` window."""
  x = _random_bits((32, 128), src, seed=1)
  y = _spec_bitcast(x, dst)
  v = _random_bits(y.shape, dst, seed=2)
  vw = _spec_bitcast(x[8:24], dst)
  v_at = _random_bits(vw[1::4].shape, dst, seed=3)

  def kernel(x_ref, v_ref, va_ref, whole, strided, at):
    whole.bitcast(dst)[...] = v_ref[...]
    strided[...] = x_ref[...]
    strided.bitcast(dst)[1::2, :] = v_ref[0::2, :]
    at[...] = x_ref[...]
    at.at[8:24].bitcast(dst)[1::4, :] = va_ref[...]

  outs = (jax.ShapeDtypeStruct(x.shape, x.dtype),) * 3
  whole, strided, at = map(_as_bits, call(kernel, outs, x, v, v_at))
  xb = _as_bits(x)
  assert_same(whole, _spec_store(xb, dst, slice(None), v))
  assert_same(strided, _spec_store(xb, dst, slice(1, None, 2),
                                   _from_bits(_as_bits(v)[0::2], dst)))
  assert_same(at, xb.at[8:24].set(
      _spec_store(xb[8:24], dst, slice(1, None, 4), v_at)))


def test_ref_bitcast_read_modify_write_in_place():
  """``b[...] = f(b[...])`` through a widening view writes several strided
  parts: the value is computed before the first part is written."""
  x = _random_bits((16, 128), jnp.uint16)

  def kernel(x_ref, o_ref, p_ref):
    o_ref[...] = x_ref[...]
    b = o_ref.bitcast(jnp.uint32)
    b[...] = (b[...] >> 3) + pltpu.roll(b[...], 1, 0)
    p_ref[...] = x_ref[...]
    n = p_ref.bitcast(jnp.uint8)
    n[1::2, :] = n[0::2, :] + 1   # rows of both slots of one element

  outs = (jax.ShapeDtypeStruct(x.shape, x.dtype),) * 2
  out, packed = call(kernel, outs, x)
  w = state_utils.bitcast(x, jnp.uint32)
  assert_same(out, state_utils.bitcast((w >> 3) + jnp.roll(w, 1, 0),
                                       jnp.uint16))
  n = state_utils.bitcast(x, jnp.uint8)
  assert_same(packed, state_utils.bitcast(n.at[1::2].set(n[0::2] + 1),
                                          jnp.uint16))


def test_ref_bitcast_transposed_and_interleaved_rows():
  """A transposed widened ref, and rows of a ratio-4 narrowing with step 2
  (two bit slots alternating) written in place."""
  x = _random_bits((16, 128), jnp.uint16)

  def kernel(x_ref, o_ref, p_ref):
    o_ref[...] = x_ref.bitcast(jnp.uint32).T[...]
    p_ref[...] = x_ref[...]
    p_ref.bitcast(jnp.uint8)[3::2, :] = jnp.full((15, 128), 7, jnp.uint8)

  t, p = call(kernel, (jax.ShapeDtypeStruct((128, 8), jnp.uint32),
                       jax.ShapeDtypeStruct(x.shape, x.dtype)), x)
  assert_same(t, state_utils.bitcast(x, jnp.uint32).T)
  n = state_utils.bitcast(x, jnp.uint8)
  assert_same(p, state_utils.bitcast(n.at[3::2].set(7), jnp.uint16))


def test_ref_bitcast_scalar_element():
  """A single element read and written through a widening bitcast."""
  x = _random_bits((16, 128), jnp.bfloat16)

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]
    b = o_ref.bitcast(jnp.uint32)
    b[3, 5] = x_ref.bitcast(jnp.uint32)[1, 2] ^ jnp.uint32(0xFFFF)

  out = call(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
  w = state_utils.bitcast(_as_bits(x), jnp.uint32)
  w = w.at[3, 5].set(w[1, 2] ^ 0xFFFF)
  _assert_bits(out, _from_bits(state_utils.bitcast(w, jnp.uint16),
                               jnp.bfloat16))


def test_ref_bitcast_dma():
  """An equal-width bitcast ref is a memref a DMA copies through; a
  width-changing one is refused with a clear error."""
  x = _random_bits((16, 128), jnp.float32)
  hbm = pl.BlockSpec(memory_space=pl.ANY)

  def kernel(x_hbm, o_hbm):
    pltpu.sync_copy(x_hbm.bitcast(jnp.int32), o_hbm)

  got = call(kernel, jax.ShapeDtypeStruct(x.shape, jnp.int32), x,
             in_specs=[hbm], out_specs=hbm)
  _assert_bits(got, _from_bits(_as_bits(x), jnp.int32))

  def packing(x_hbm, o_hbm):
    pltpu.sync_copy(x_hbm.bitcast(jnp.bfloat16), o_hbm)

  with pytest.raises(NotImplementedError, match="changes the element width"):
    call(packing, jax.ShapeDtypeStruct((32, 128), jnp.bfloat16), x,
         in_specs=[hbm], out_specs=hbm)


def test_ref_bitcast_rows_across_bit_slots():
  """Unit-stride rows of a narrowed ref starting mid-element span bit slots:
  static ones are interleaved row sets, read and written in place."""
  x = _random_bits((16, 128), jnp.uint32)
  v = _random_bits((8, 128), jnp.bfloat16, seed=4)

  def kernel(x_ref, v_ref, o_ref, r_ref):
    o_ref[...] = x_ref[...]
    o_ref.bitcast(jnp.bfloat16)[1:9, :] = v_ref[...]
    r_ref[...] = x_ref.bitcast(jnp.bfloat16)[3:11, :]

  out, rows = call(kernel, (jax.ShapeDtypeStruct(x.shape, x.dtype),
                            jax.ShapeDtypeStruct(v.shape, v.dtype)), x, v)
  assert_same(out, _spec_store(x, jnp.bfloat16, slice(1, 9), v))
  assert_same(_as_bits(rows), state_utils.bitcast(x, jnp.uint16)[3:11])


def test_ref_bitcast_dynamic_rows_across_bit_slots():
  """Rows from a start known at run time that span bit slots are read from
  a copy of the narrowed ref; writing through them is refused
  (NotImplementedError naming the bitcast), not lost."""
  x = _random_bits((16, 128), jnp.uint32)
  starts = jnp.asarray([0, 3, 24], jnp.int32)

  def load(s_ref, x_ref, o_ref):
    o_ref[...] = x_ref.bitcast(jnp.bfloat16)[pl.ds(s_ref[pl.program_id(0)], 8),
                                             :]

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(3,),
      in_specs=[pl.BlockSpec(x.shape, lambda i, s: (0, 0))],
      out_specs=pl.BlockSpec((None, 8, 128), lambda i, s: (i, 0, 0)))
  got = call(load, jax.ShapeDtypeStruct((3, 8, 128), jnp.bfloat16), starts, x,
             grid_spec=grid_spec)
  yb = state_utils.bitcast(x, jnp.uint16)
  assert_same(_as_bits(got), jnp.stack([yb[int(s):int(s) + 8]
                                        for s in starts]))

  def store(s_ref, x_ref, o_ref):
    o_ref[...] = x_ref[...]
    o_ref.bitcast(jnp.bfloat16)[pl.ds(s_ref[0], 8), :] = jnp.zeros(
        (8, 128), jnp.bfloat16)

  with pytest.raises(NotImplementedError, match="writing through ref.bitcast "
                     "from uint32 to bfloat16: rows from a dynamic start"):
    call(store, jax.ShapeDtypeStruct(x.shape, x.dtype), starts, x,
         grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1))
