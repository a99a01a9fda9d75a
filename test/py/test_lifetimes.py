"""Lifetimes of semaphores, DMAs and buffers: what Mosaic defines per
semaphore type, and the faults that must end in a clear error (a DMA that
outlives its buffer, leftovers at kernel exit, an allocation that fails)."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

X = jnp.asarray(np.random.default_rng(0).standard_normal((16, 128)),
                jnp.float32)
ANY = pl.BlockSpec(memory_space=pl.ANY)
OUT = jax.ShapeDtypeStruct(X.shape, X.dtype)
MODES = ["on_wait", "eager"]


def _run(kernel, *, mode="on_wait", exit_checks="error", scratch=(),
         out_specs=ANY, **kw):
  return pallas_cpu.pallas_call(
      kernel, out_shape=OUT, in_specs=[ANY], out_specs=out_specs,
      scratch_shapes=list(scratch),
      compiler_params=pallas_cpu.CompilerParams(dma_execution_mode=mode,
                                                exit_checks=exit_checks),
      **kw)(X)


# -- REGULAR semaphores signalled by DMAs (TPU v6+): one completion each ------
@pytest.mark.parametrize("mode", MODES)
def test_dmas_on_a_regular_semaphore_count_completions(mode):
  """Two copies complete on one REGULAR semaphore; waiting for 2 waits for
  both (each completion adds 1, not its byte count)."""
  def kernel(x_hbm, o_hbm):
    def body(buf, sem):
      pltpu.make_async_copy(x_hbm.at[0:8], buf.at[0:8], sem).start()
      pltpu.make_async_copy(x_hbm.at[8:16], buf.at[8:16], sem).start()
      pl.semaphore_wait(sem, 2)
      pltpu.sync_copy(buf, o_hbm)
    pl.run_scoped(body, pltpu.VMEM(X.shape, X.dtype),
                  pltpu.SemaphoreType.REGULAR)
  assert_same(_run(kernel, mode=mode), X)


@pytest.mark.parametrize("mode", MODES)
def test_regular_semaphore_wait_waits_for_one_dma(mode):
  """`semaphore_wait(sem)` after each copy takes exactly that copy's
  completion (a DMA's own wait needs a DMA semaphore in JAX)."""
  def kernel(x_hbm, o_hbm):
    def body(buf, sem):
      pltpu.async_copy(x_hbm.at[0:8], buf.at[0:8], sem)
      pl.semaphore_wait(sem)
      pltpu.async_copy(x_hbm.at[8:16], buf.at[8:16], sem)
      pl.semaphore_wait(sem, 1)
      buf[...] = buf[...] * 2
      pltpu.async_copy(buf, o_hbm, sem)
      pl.semaphore_wait(sem)
    pl.run_scoped(body, pltpu.VMEM(X.shape, X.dtype),
                  pltpu.SemaphoreType.REGULAR)
  assert_same(_run(kernel, mode=mode), X * 2)


def test_dma_semaphores_still_count_bytes():
  """Two copies on one DMA semaphore, waited in the other order: each wait
  takes its copy's bytes."""
  def kernel(x_hbm, o_hbm):
    def body(buf, sem):
      first = pltpu.make_async_copy(x_hbm.at[0:8], buf.at[0:8], sem)
      second = pltpu.make_async_copy(x_hbm.at[8:16], buf.at[8:16], sem)
      first.start()
      second.start()
      second.wait()
      first.wait()
      pltpu.sync_copy(buf, o_hbm)
    pl.run_scoped(body, pltpu.VMEM(X.shape, X.dtype), pltpu.SemaphoreType.DMA)
  assert_same(_run(kernel), X)


# -- a DMA must not outlive the buffers it reads or writes --------------------
@pytest.mark.parametrize("mode", MODES)
def test_dma_reading_a_scoped_buffer_after_its_scope_is_an_error(mode):
  def kernel(x_hbm, o_hbm, sem):
    def body(buf):
      pltpu.sync_copy(x_hbm, buf)
      pltpu.make_async_copy(buf, o_hbm, sem).start()   # never waited
    pl.run_scoped(body, pltpu.VMEM(X.shape, X.dtype))
  with pytest.raises(Exception, match=r"DMA started at grid point \(\) \(DMA "
                     r"start at .*test_lifetimes.py:\d+:\d+ \(.*body\)\) reads "
                     r"from run_scoped ref 0 at .*test_lifetimes.py:\d+:\d+ "
                     r"\(.*\), which is freed when its scope ends"):
    jax.block_until_ready(_run(kernel, mode=mode,
                               scratch=[pltpu.SemaphoreType.DMA]))


def test_dma_writing_a_scoped_buffer_after_its_scope_is_an_error():
  def kernel(x_hbm, o_hbm, sem):
    def body(buf):
      pltpu.make_async_copy(x_hbm, buf, sem).start()
    pl.run_scoped(body, pltpu.VMEM(X.shape, X.dtype))
    pltpu.sync_copy(x_hbm, o_hbm)
  with pytest.raises(Exception, match=r"writes to run_scoped ref 0"):
    jax.block_until_ready(_run(kernel, scratch=[pltpu.SemaphoreType.DMA],
                               exit_checks="off"))


# -- leftovers at kernel exit --------------------------------------------------
def _leaky_signal(x_hbm, o_hbm, sem):
  pltpu.sync_copy(x_hbm, o_hbm)
  pl.semaphore_signal(sem, 3)


def test_semaphore_left_signalled_at_exit_is_an_error():
  with pytest.raises(Exception, match=r"semaphore 'scratch operand 0'\[0\] "
                     r"holds 3 at kernel exit"):
    jax.block_until_ready(_run(_leaky_signal,
                               scratch=[pltpu.SemaphoreType.REGULAR]))


def test_exit_checks_warn_and_off():
  with pytest.warns(pallas_cpu.KernelExitWarning, match="holds 3 at kernel "
                    "exit"):
    out = jax.block_until_ready(_run(_leaky_signal, exit_checks="warn",
                                     scratch=[pltpu.SemaphoreType.REGULAR]))
  assert_same(out, X)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = _run(_leaky_signal, exit_checks="off",
               scratch=[pltpu.SemaphoreType.REGULAR])
  assert_same(out, X)


def _unwaited_dma(x_hbm, o_hbm, sem):
  pltpu.make_async_copy(x_hbm, o_hbm, sem).start()


@pytest.mark.parametrize("mode", MODES)
def test_dma_never_waited_is_an_error_naming_its_line(mode):
  with pytest.raises(Exception, match=r"DMA started at grid point \(\) \(DMA "
                     r"start at .*test_lifetimes.py:\d+:\d+ \(_unwaited_dma\)\) "
                     r"was never waited for: at kernel exit \(grid point \(\)\) "
                     r"its semaphore 'scratch operand 0'\[0\] holds"):
    jax.block_until_ready(_run(_unwaited_dma, mode=mode,
                               scratch=[pltpu.SemaphoreType.DMA]))


def test_dma_never_waited_completes_under_warn():
  """As the hardware would: the copy lands, the call warns."""
  with pytest.warns(pallas_cpu.KernelExitWarning, match="never waited"):
    out = jax.block_until_ready(_run(_unwaited_dma, exit_checks="warn",
                                     scratch=[pltpu.SemaphoreType.DMA]))
  assert_same(out, X)


def test_scoped_semaphore_left_over_is_reported_at_its_scope_end():
  def kernel(x_hbm, o_hbm):
    def body(sem):
      pl.semaphore_signal(sem, 2)
    pl.run_scoped(body, pltpu.SemaphoreType.REGULAR)
    pltpu.sync_copy(x_hbm, o_hbm)
  with pytest.raises(Exception, match=r"holds 2 at the end of its run_scoped "
                     r"scope"):
    jax.block_until_ready(_run(kernel))


def test_leftover_check_runs_after_the_whole_grid():
  """A count carried across grid steps is fine if the last step settles it."""
  def kernel(x_ref, o_ref, sem):
    i = pl.program_id(0)
    pl.semaphore_signal(sem)
    o_ref[...] = x_ref[...] + 1

    @pl.when(i == pl.num_programs(0) - 1)
    def _():
      pl.semaphore_wait(sem, pl.num_programs(0))
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  out = pallas_cpu.pallas_call(
      kernel, out_shape=OUT, grid=(2,), in_specs=[spec], out_specs=spec,
      scratch_shapes=[pltpu.SemaphoreType.REGULAR])(X)
  assert_same(out, X + 1)


# -- allocations that fail -----------------------------------------------------
def test_huge_scratch_fails_the_call_naming_the_buffer():
  """64 GiB of VMEM scratch: a clear error, the process lives on."""
  def kernel(x_ref, o_ref, big):
    big[0:16, 0:128] = x_ref[...]
    o_ref[...] = big[0:16, 0:128]
  with pytest.raises(Exception, match=r"failed to allocate 68719476800 bytes "
                     r"\(64 GiB\) for scratch operand 0 \(float32\[16777216, "
                     r"1024\] in vmem\)"):
    jax.block_until_ready(pallas_cpu.pallas_call(
        kernel, out_shape=OUT,
        scratch_shapes=[pltpu.VMEM((1 << 24, 1024), jnp.float32)])(X))
  # The next kernel runs normally.
  def copy(x_ref, o_ref):
    o_ref[...] = x_ref[...]
  assert_same(pallas_cpu.pallas_call(copy, out_shape=OUT)(X), X)


def test_huge_run_scoped_buffer_fails_the_call():
  def kernel(x_ref, o_ref):
    def body(big):
      big[0:16, 0:128] = x_ref[...]
      o_ref[...] = big[0:16, 0:128]
    pl.run_scoped(body, pltpu.VMEM((1 << 25, 1024), jnp.float32))
  with pytest.raises(Exception, match=r"failed to allocate .*128 GiB.* for "
                     r"run_scoped ref 0 at .*test_lifetimes.py"):
    jax.block_until_ready(pallas_cpu.pallas_call(kernel, out_shape=OUT)(X))
