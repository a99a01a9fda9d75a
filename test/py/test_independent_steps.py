"""Grids without a parallel dimension whose steps share nothing
(grid.independent_steps) run on the threads all the same, split along
their first dimension of several steps.  Every kernel is compared bit for
bit with interpret mode (which runs the grid in order); kernels whose steps
may see each other -- scratch, revisited outputs, aliases, prints, PRNG
state, outputs outside VMEM blocks -- and small kernels stay on one
thread."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, kernel_specs


_specs = kernel_specs


def _run(kernel, out_shape, args, **kwargs):
  """(compiled result, the kernel's parallel dimension); the result is
  interpret mode's, bit for bit."""
  with _specs() as seen:
    got = jax.jit(pallas_cpu.pallas_call(
        kernel, out_shape=out_shape, backend="cpu",
        compiler_params=pallas_cpu.CompilerParams(tpu_checks="off"),
        **kwargs))(*args)
  want = jax.jit(pallas_cpu.pallas_call(
      kernel, out_shape=out_shape, backend="interpret", **kwargs))(*args)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert_same(g, w)
  return got, seen[0].parallel_dim


N = 512
SPEC = pl.BlockSpec((128, 128), lambda i, j: (i, j))


def _counter(x_ref, o_ref):
  # Depends on the step (program ids, iota): no row split, no coalescing.
  i, j = pl.program_id(0), pl.program_id(1)
  base = (i * 4 + j).astype(jnp.uint32) * jnp.uint32(128 * 128)
  idx = (jax.lax.broadcasted_iota(jnp.uint32, (128, 128), 0) * 128
         + jax.lax.broadcasted_iota(jnp.uint32, (128, 128), 1) + base)
  h = idx * jnp.uint32(0x9E3779B1)
  h = h ^ (h >> 15)
  o_ref[...] = (h & jnp.uint32(0xFFFF)).astype(jnp.float32) + x_ref[...]


def _x(shape=(N, N)):
  return jnp.asarray(np.random.default_rng(0).standard_normal(shape),
                     jnp.float32)


def test_step_dependent_kernel_runs_on_threads():
  got, dim = _run(_counter, jax.ShapeDtypeStruct((N, N), jnp.float32),
                  (_x(),), grid=(4, 4), in_specs=[SPEC], out_specs=SPEC)
  assert dim == 0


def test_first_dimension_of_several_steps():
  spec = pl.BlockSpec((None, 128, 128), lambda b, i, j: (b, i, j))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + pl.program_id(2).astype(jnp.float32)

  x = _x((1, N, N))
  _, dim = _run(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), (x,),
                grid=(1, 4, 4), in_specs=[spec], out_specs=spec)
  assert dim == 1


def test_inputs_any_index_map_and_run_scoped_dma():
  # Inputs may be read anywhere (a shifted index map, an HBM operand
  # copied by a DMA on a run_scoped semaphore): only outputs must be
  # distinct blocks.
  def kernel(x_ref, h_ref, o_ref):
    i, j = pl.program_id(0), pl.program_id(1)

    def body(buf, sem):
      copy = pltpu.make_async_copy(h_ref.at[pl.ds(i * 128, 128)], buf, sem)
      copy.start()
      copy.wait()
      o_ref[...] = x_ref[...] + buf[...] + j.astype(jnp.float32)
    pl.run_scoped(body, pltpu.VMEM((128, 128), jnp.float32),
                  pltpu.SemaphoreType.DMA)

  x, h = _x(), _x((N, 128))
  shifted = pl.BlockSpec((128, 128), lambda i, j: ((i + 1) % 4, j))
  _, dim = _run(kernel, jax.ShapeDtypeStruct((N, N), jnp.float32), (x, h),
                grid=(4, 4), in_specs=[shifted,
                                       pl.BlockSpec(memory_space=pl.ANY)],
                out_specs=SPEC)
  assert dim == 0


def test_revisited_output_stays_in_order():
  # An accumulator over k: the steps of a block depend on each other.
  def kernel(x_ref, o_ref):
    @pl.when(pl.program_id(2) == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)
    o_ref[...] += x_ref[...] * (pl.program_id(2) + 1).astype(jnp.float32)

  spec = pl.BlockSpec((128, 128), lambda i, j, k: (i, j))
  _, dim = _run(kernel, jax.ShapeDtypeStruct((N, N), jnp.float32), (_x(),),
                grid=(4, 4, 3), in_specs=[spec], out_specs=spec)
  assert dim is None


def test_scratch_stays_in_order():
  def kernel(x_ref, o_ref, s_ref):
    @pl.when((pl.program_id(0) == 0) & (pl.program_id(1) == 0))
    def _():
      s_ref[...] = jnp.zeros_like(s_ref)
    s_ref[...] += x_ref[...]
    o_ref[...] = s_ref[...] + pl.program_id(1).astype(jnp.float32)

  _, dim = _run(kernel, jax.ShapeDtypeStruct((N, N), jnp.float32), (_x(),),
                grid=(4, 4), in_specs=[SPEC], out_specs=SPEC,
                scratch_shapes=[pltpu.VMEM((128, 128), jnp.float32)])
  assert dim is None


def test_aliases_and_written_inputs_stay_in_order():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + pl.program_id(1).astype(jnp.float32)

  _, dim = _run(kernel, jax.ShapeDtypeStruct((N, N), jnp.float32), (_x(),),
                grid=(4, 4), in_specs=[SPEC], out_specs=SPEC,
                input_output_aliases={0: 0})
  assert dim is None

  def writes_input(x_ref, o_ref):
    x_ref[...] = x_ref[...] * 2.0
    o_ref[...] = x_ref[...] + pl.program_id(1).astype(jnp.float32)

  _, dim = _run(writes_input, jax.ShapeDtypeStruct((N, N), jnp.float32),
                (_x(),), grid=(4, 4), in_specs=[SPEC], out_specs=SPEC)
  assert dim is None


def test_output_outside_vmem_blocks_stays_in_order():
  def kernel(x_ref, o_ref):
    i = pl.program_id(0)
    o_ref[pl.ds(i * 128, 128), :] = x_ref[...] + pl.program_id(1).astype(
        jnp.float32)

  _, dim = _run(kernel, jax.ShapeDtypeStruct((N, 128), jnp.float32),
                (_x(),), grid=(4, 4), in_specs=[SPEC],
                out_specs=pl.BlockSpec(memory_space=pl.ANY))
  assert dim is None


def test_prng_state_stays_in_order():
  def kernel(x_ref, o_ref):
    @pl.when((pl.program_id(0) == 0) & (pl.program_id(1) == 0))
    def _():
      pltpu.prng_seed(7)
    bits = pltpu.prng_random_bits((128, 128))
    o_ref[...] = x_ref[...] + (bits & 0xFF).astype(jnp.float32)

  with _specs() as seen:
    jax.block_until_ready(jax.jit(pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((N, N), jnp.float32),
        grid=(4, 4), in_specs=[SPEC], out_specs=SPEC, backend="cpu",
        compiler_params=pallas_cpu.CompilerParams(tpu_checks="off")))(_x()))
  assert seen[0].parallel_dim is None


def test_small_kernels_stay_on_one_thread():
  spec = pl.BlockSpec((8, 128), lambda i, j: (i, j))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + pl.program_id(1).astype(jnp.float32)

  x = _x((32, 256))
  _, dim = _run(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), (x,),
                grid=(4, 2), in_specs=[spec], out_specs=spec)
  assert dim is None


def test_first_error_in_grid_order():
  # Out-of-bounds reads in both halves of the grid (both threads' chunks):
  # the message names the first in grid order, as the sequential run does.
  def kernel(x_ref, o_ref):
    i = pl.program_id(0)
    o_ref[...] = x_ref[pl.ds(i * 200 + 300, 128), :]  # out from i = 1

  spec = pl.BlockSpec((128, 128), lambda i, j: (i, j))
  call = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((N, N), jnp.float32),
      grid=(4, 4), in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=spec, backend="cpu",
      compiler_params=pallas_cpu.CompilerParams(tpu_checks="off"))
  with _specs() as seen, pytest.raises(Exception) as err:
    jax.block_until_ready(jax.jit(call)(_x((N, 128))))
  assert seen[0].parallel_dim == 0
  message = str(err.value)
  assert "(1, 0)" in message and "(2, 0)" not in message, message
