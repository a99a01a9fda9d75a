"""Manual DMAs: a double-buffered sum over an HBM array."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

from benchmarks.cases.common import random_inputs
from benchmarks.registry import case

DMA_CHUNK = (256, 1024)
DMA_CHUNKS = 64


def double_buffered_sum_kernel(x_hbm, o_ref, buf, sem):
  rows = DMA_CHUNK[0]
  n = x_hbm.shape[0] // rows

  def copy(i, slot):
    return pltpu.make_async_copy(x_hbm.at[pl.ds(i * rows, rows)],
                                 buf.at[slot], sem.at[slot])

  copy(0, 0).start()

  def body(i, acc):
    slot = i % 2

    @pl.when(i + 1 < n)
    def _():
      copy(i + 1, 1 - slot).start()

    copy(i, slot).wait()
    return acc + buf[slot]

  o_ref[...] = jax.lax.fori_loop(0, n, body,
                                 jnp.zeros(DMA_CHUNK, jnp.float32))


@case(name="dma_double_buffer_sum",
      description=(f"manual double buffering: HBM (pl.ANY) f32 "
                   f"({DMA_CHUNK[0] * DMA_CHUNKS}, {DMA_CHUNK[1]}) input, "
                   f"VMEM (2, {DMA_CHUNK[0]}, {DMA_CHUNK[1]}) scratch, 2 DMA "
                   f"semaphores, make_async_copy start/wait in a fori_loop "
                   f"over {DMA_CHUNKS} chunks, summed; reference jnp sum "
                   f"over chunks"),
      make_inputs=lambda: random_inputs(
          (DMA_CHUNK[0] * DMA_CHUNKS, DMA_CHUNK[1]), 1),
      reference=lambda x: x.reshape(DMA_CHUNKS, *DMA_CHUNK).sum(0),
      grid_steps=1, rtol=1e-5, atol=1e-4, quick=False)
def _double_buffered_sum(backend):
  return pallas_cpu.pallas_call(
      double_buffered_sum_kernel,
      out_shape=jax.ShapeDtypeStruct(DMA_CHUNK, jnp.float32),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec(DMA_CHUNK, lambda: (0, 0)),
      scratch_shapes=[pltpu.VMEM((2, *DMA_CHUNK), jnp.float32),
                      pltpu.SemaphoreType.DMA((2,))],
      backend=backend)
