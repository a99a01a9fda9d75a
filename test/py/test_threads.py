"""Parallel grid dimensions run on the runtime's thread pool, in contiguous
chunks with their own scratch; arbitrary dimensions stay in order per
thread, so accumulator patterns stay correct."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

X = jnp.asarray(np.random.default_rng(0).standard_normal((64, 512)),
                jnp.float32)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_parallel_dimension_with_scratch_accumulator(threads):
  """Row sums over k: scratch is per thread, like per-core VMEM."""
  def kernel(x_ref, o_ref, acc_ref):
    k = pl.program_id(1)

    @pl.when(k == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    acc_ref[...] += x_ref[...] * (pl.program_id(0) + 1).astype(jnp.float32)

    @pl.when(k == pl.num_programs(1) - 1)
    def _():
      o_ref[...] = acc_ref[...]

  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((64, 128), jnp.float32),
      grid=(8, 4), in_specs=[pl.BlockSpec((8, 128), lambda i, k: (i, k))],
      out_specs=pl.BlockSpec((8, 128), lambda i, k: (i, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32)],
      compiler_params=pallas_cpu.CompilerParams(
          dimension_semantics=("parallel", "arbitrary"),
          num_threads=threads))(X)
  scale = jnp.repeat(jnp.arange(1, 9, dtype=jnp.float32), 8)[:, None]
  want = X.reshape(64, 4, 128).sum(1) * scale
  assert_same(out, want, exact=False, rtol=1e-5, atol=1e-5)


def test_inner_parallel_dimension():
  """The split dimension need not be the outermost one."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2 + pl.program_id(1).astype(jnp.float32)

  spec = pl.BlockSpec((8, 128), lambda i, j: (i, j))
  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype), grid=(8, 4),
      in_specs=[spec], out_specs=spec,
      compiler_params=pallas_cpu.CompilerParams(
          dimension_semantics=("arbitrary", "parallel"), num_threads=3))(X)
  want = X * 2 + jnp.repeat(jnp.arange(4, dtype=jnp.float32), 128)[None, :]
  assert_same(out, want, exact=False)


def test_pltpu_dimension_semantics_are_honoured():
  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.tanh(x_ref[...]) + pl.program_id(0).astype(jnp.float32)

  spec = pl.BlockSpec((8, 128), lambda i, j: (i, j))
  f = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype), grid=(8, 4),
      in_specs=[spec], out_specs=spec,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel")))
  assert "parallel_extent = 8" in jax.jit(f).lower(X).as_text()
  want = jnp.tanh(X) + jnp.repeat(jnp.arange(8, dtype=jnp.float32), 8)[:, None]
  assert_same(f(X), want, exact=False, rtol=4e-6, atol=1e-6)


def test_errors_from_any_thread_are_reported():
  def kernel(x_ref, o_ref, sem):
    @pl.when(pl.program_id(0) == 6)
    def _():
      pl.semaphore_wait(sem, 1)
    o_ref[...] = x_ref[...]

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  f = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((64, 128), jnp.float32),
      grid=(8,), in_specs=[spec], out_specs=spec,
      scratch_shapes=[pltpu.SemaphoreType.REGULAR],
      compiler_params=pallas_cpu.CompilerParams(
          dimension_semantics=("parallel",), num_threads=2))
  with pytest.raises(Exception, match=r"deadlock.*grid point \(6\)"):
    jax.block_until_ready(f(X[:, :128]))
