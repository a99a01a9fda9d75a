"""TPU memory model: pl.ANY/HBM refs, scratch semaphores, DMAs in both
execution modes, semaphore ops, run_scoped, emit_pipeline, and the errors
(deadlock, out-of-bounds index), in the style of the Pallas TPU guides."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

X = jnp.asarray(np.random.default_rng(0).standard_normal((64, 128)),
                jnp.float32)
MODES = ["on_wait", "eager"]


def _both(kernel, out_shape, *args, mode="on_wait", exact=True, **kw):
  """Compiled vs TPU interpret mode (same DMA execution mode)."""
  got = pallas_cpu.pallas_call(
      kernel, out_shape=out_shape, backend="cpu",
      compiler_params=pallas_cpu.CompilerParams(dma_execution_mode=mode),
      **kw)(*args)
  want = pallas_cpu.pallas_call(
      kernel, out_shape=out_shape, backend="tpu-interpret",
      interpret=pltpu.InterpretParams(dma_execution_mode=mode), **kw)(*args)
  assert_same(got, want, exact=exact, rtol=1e-6, atol=1e-6)
  return got


def _double_buffered_sum(x_hbm, o_ref, buf, sem):
  n = x_hbm.shape[0] // 8

  def copy(i, slot):
    return pltpu.make_async_copy(x_hbm.at[pl.ds(i * 8, 8)], buf.at[slot],
                                 sem.at[slot])

  copy(0, 0).start()

  def body(i, acc):
    slot = i % 2

    @pl.when(i + 1 < n)
    def _():
      copy(i + 1, 1 - slot).start()

    copy(i, slot).wait()
    return acc + buf[slot]

  o_ref[...] = jax.lax.fori_loop(0, n, body, jnp.zeros((8, 128), jnp.float32))


@pytest.mark.parametrize("mode", MODES)
def test_manual_double_buffering_over_hbm(mode):
  out = _both(_double_buffered_sum, jax.ShapeDtypeStruct((8, 128), jnp.float32),
              X, mode=mode,
              in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
              out_specs=pl.BlockSpec((8, 128), lambda: (0, 0)),
              scratch_shapes=[pltpu.VMEM((2, 8, 128), jnp.float32),
                              pltpu.SemaphoreType.DMA((2,))])
  assert_same(out, X.reshape(8, 8, 128).sum(0), exact=False, rtol=1e-5,
              atol=1e-5)


def test_hbm_to_hbm_copy_with_aliasing_and_strided_views():
  """DMAs between ANY refs on strided windows; the output aliases the input."""
  def kernel(x_hbm, o_hbm, sem):
    pltpu.sync_copy(x_hbm.at[pl.ds(0, 8), pl.ds(0, 64)],
                    o_hbm.at[pl.ds(8, 8), pl.ds(64, 64)])
    c = pltpu.make_async_copy(x_hbm.at[::2, 0:128:2], o_hbm.at[32:64, 0:64],
                              sem)
    c.start()
    c.wait()

  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  out = _both(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X,
              in_specs=[any_spec], out_specs=any_spec,
              scratch_shapes=[pltpu.SemaphoreType.DMA],
              input_output_aliases={0: 0})
  # Aliased: the second copy reads what the first one wrote.
  want = X.at[8:16, 64:128].set(X[0:8, 0:64])
  want = want.at[32:64, 0:64].set(want[::2, 0:128:2])
  assert_same(out, want)


def test_semaphore_ping_pong_between_grid_steps():
  """A REGULAR scratch semaphore carries a count across grid steps."""
  def kernel(x_ref, o_ref, sem):
    i = pl.program_id(0)

    @pl.when(i > 0)
    def _():
      pl.semaphore_wait(sem, i)         # what the previous step signalled

    pl.semaphore_signal(sem, i + 1)
    o_ref[...] = x_ref[...] + pl.semaphore_read(sem).astype(jnp.float32)

    @pl.when(i == pl.num_programs(0) - 1)
    def _():
      pl.semaphore_wait(sem, i + 1)     # settled at exit, as TPU requires

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  # TPU interpret mode cannot lower semaphore_read on CPU: compare with jnp.
  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype), grid=(8,),
      in_specs=[spec], out_specs=spec,
      scratch_shapes=[pltpu.SemaphoreType.REGULAR])(X)
  steps = jnp.repeat(jnp.arange(1, 9, dtype=jnp.float32), 8)[:, None]
  assert_same(out, X + steps)


def test_paged_lookup_with_scalar_prefetch_and_dmas():
  """Ragged/paged style: a prefetched page table selects HBM pages."""
  pages = jnp.asarray(np.random.default_rng(1).standard_normal((10, 8, 128)),
                      jnp.float32)
  table = jnp.asarray([7, 2, 2, 9, 0], jnp.int32)

  def kernel(table_ref, pages_hbm, o_ref, buf, sem):
    i = pl.program_id(0)
    pltpu.async_copy(pages_hbm.at[table_ref[i]], buf, sem).wait()
    o_ref[...] = buf[...] * 2

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(5,),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec((None, 8, 128), lambda i, t: (i, 0, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                      pltpu.SemaphoreType.DMA])
  out = _both(kernel, jax.ShapeDtypeStruct((5, 8, 128), jnp.float32), table,
              pages, grid_spec=grid_spec)
  assert_same(out, pages[table] * 2)


def test_run_scoped_buffers_and_semaphores():
  def kernel(x_hbm, o_ref):
    def scoped(buf, sem):
      pltpu.async_copy(x_hbm.at[pl.ds(8, 8)], buf, sem).wait()
      o_ref[...] = buf[...] + 1
    pl.run_scoped(scoped, pltpu.VMEM((8, 128), jnp.float32),
                  pltpu.SemaphoreType.DMA)

  _both(kernel, jax.ShapeDtypeStruct((8, 128), jnp.float32), X,
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec((8, 128), lambda: (0, 0)))


def test_emit_pipeline_inside_a_kernel():
  """Nested pipelining over HBM refs: a blocked add driven by emit_pipeline."""
  y = X * 3

  def inner(x_ref, y_ref, o_ref):
    o_ref[...] = x_ref[...] + y_ref[...]

  def kernel(x_hbm, y_hbm, o_hbm):
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    pltpu.emit_pipeline(inner, grid=(8,), in_specs=[spec, spec],
                        out_specs=spec)(x_hbm, y_hbm, o_hbm)

  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype),
      in_specs=[any_spec, any_spec], out_specs=any_spec)(X, y)
  assert_same(out, X + y)


def test_deadlocked_wait_names_the_semaphore():
  def kernel(x_ref, o_ref, sems):
    pl.semaphore_signal(sems.at[1], 1)
    pl.semaphore_wait(sems.at[1], 2)
    o_ref[...] = x_ref[...]

  f = pallas_cpu.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(
      (8, 128), jnp.float32), scratch_shapes=[pltpu.SemaphoreType.REGULAR((3,))])
  with pytest.raises(Exception, match=r"deadlock: wait on semaphore "
                     r"'scratch operand 0'\[1\] for 2 at grid point"):
    jax.block_until_ready(f(X[:8]))


def test_dma_wait_without_start_is_a_deadlock():
  def kernel(x_hbm, o_ref, buf, sem):
    pltpu.make_async_copy(x_hbm.at[pl.ds(0, 8)], buf, sem).wait()
    o_ref[...] = buf[...]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                      pltpu.SemaphoreType.DMA])
  with pytest.raises(Exception, match="deadlock"):
    jax.block_until_ready(f(X))


def test_out_of_bounds_dma_index_is_reported_not_a_segfault():
  def kernel(x_hbm, o_ref, buf, sem):
    start = pl.program_id(0) * 60          # 60 + 8 > 64 at step 1
    pltpu.async_copy(x_hbm.at[pl.ds(start, 8)], buf, sem).wait()
    o_ref[...] = buf[...]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      grid=(2,), in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                      pltpu.SemaphoreType.DMA])
  with pytest.raises(Exception, match=r"ref index out of bounds at grid point "
                     r"\(1\): dimension 0: slice \[60, 68\) is not inside "
                     r"\[0, 64\)"):
    jax.block_until_ready(f(X))


def test_revisited_output_block_is_reported():
  """Output block 0 is left at step 1 and written again at step 2: on TPU
  the first write-back would be lost; interpret mode raises, so do we."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      grid=(4,), in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (i % 2, 0)))
  with pytest.raises(Exception, match=r"revisited block at element offset 0 "
                     r"of output 0 at grid point \(2\); it was first visited "
                     r"at grid point \(0\)"):
    jax.block_until_ready(f(X[:32]))


def test_smem_operands_read_as_scalars():
  coef = jnp.asarray([2, -3, 5], jnp.int32)

  def kernel(c_ref, x_ref, o_ref):
    o_ref[...] = (x_ref[...] * c_ref[0] + c_ref[1]) * c_ref[2]

  xi = jnp.arange(16 * 128, dtype=jnp.int32).reshape(16, 128)
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  out = _both(kernel, jax.ShapeDtypeStruct(xi.shape, xi.dtype), coef, xi,
              grid=(2,), in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), spec],
              out_specs=spec)
  assert_same(out, (xi * 2 - 3) * 5)


@pytest.mark.parametrize("fill,expect_nan", [("nan", True), ("zero", False)])
def test_uninitialized_scratch_fill(fill, expect_nan):
  def kernel(o_ref, s_ref, i_ref):
    o_ref[...] = s_ref[...] + i_ref[...].astype(jnp.float32)

  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                      pltpu.VMEM((8, 128), jnp.int32)],
      compiler_params=pallas_cpu.CompilerParams(uninitialized_memory=fill))()
  out = np.asarray(out)
  assert np.isnan(out).all() if expect_nan else (out == 0).all()


def test_barrier_semaphore_local_signal_and_wait():
  def kernel(x_ref, o_ref):
    barrier = pltpu.get_barrier_semaphore()
    pl.semaphore_signal(barrier, 2)
    pl.semaphore_wait(barrier, 2)
    o_ref[...] = x_ref[...] + pl.semaphore_read(barrier).astype(jnp.float32)

  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      compiler_params=pltpu.CompilerParams(collective_id=0))(X[:8])
  assert_same(out, X[:8])
