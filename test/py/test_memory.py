"""Ref reads and writes, VMEM scratch across grid steps, scalar prefetch."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, check_against_interpret

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
