"""Remote DMAs of run-time size reaching into tile padding: each device
sends a window of its rows, whose size is traced, into the same rows of its
right neighbour's output; a window past the (41, 128) shard's end reaches
into its last (8, 128) tile's padding, where the receiver drops the write
(test/py/test_dma_windows.py has the local cases).  The reference is
numpy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

import pallas_cpu
from conftest import mesh_of

MESH = pl.DeviceIdType.MESH
ROWS = 41   # per device: padded to 48 rows on a TPU
SENT = 16   # rows each device sends


def _start(me):
  return 8 * (me % 3) + 16  # 16, 24 or 32: [32, 48) reaches into padding


@pytest.mark.parametrize("mode", ["eager", "on_wait"])
@pytest.mark.parametrize("n", [2, 4])
def test_remote_window_of_run_time_size_into_padding(n, mode):
  mesh = mesh_of(n)

  def kernel(x_ref, y_ref, o_ref, send, recv):
    del y_ref  # aliased to o_ref: -1 everywhere at entry
    me = jax.lax.axis_index("x")
    barrier = pltpu.get_barrier_semaphore()
    right, left = jax.lax.rem(me + 1, n), jax.lax.rem(me + n - 1, n)
    for nb in (right, left):
      pl.semaphore_signal(barrier, 1, device_id=(nb,), device_id_type=MESH)
    pl.semaphore_wait(barrier, 2)
    s = _start(me)
    count = SENT + 0 * me  # a traced size
    copy = pltpu.make_async_remote_copy(
        x_ref.at[pl.ds(s, count)], o_ref.at[pl.ds(s, count)], send, recv,
        device_id=(right,), device_id_type=MESH)
    copy.start()
    copy.wait()

  def body(x, y):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)] * 2,
        out_specs=pl.BlockSpec(memory_space=pl.ANY),
        scratch_shapes=[pltpu.SemaphoreType.DMA] * 2,
        input_output_aliases={1: 0},
        compiler_params=pltpu.CompilerParams(collective_id=0))(x, y)

  x = jnp.asarray(np.random.default_rng(n).standard_normal(
      (n * ROWS, 128)).astype(np.float32))
  y = jnp.full(x.shape, -1, jnp.float32)
  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("x"), P("x")),
                            out_specs=P("x"), check_vma=False))
  with pallas_cpu.force_cpu_backend(
      pallas_cpu.CompilerParams(dma_execution_mode=mode)):
    got = np.asarray(jax.block_until_ready(f(x, y))).reshape(n, ROWS, 128)
  xs = np.asarray(x).reshape(n, ROWS, 128)
  want = np.full_like(xs, -1)
  for d in range(n):
    left = (d + n - 1) % n
    s = _start(left)
    want[d, s:s + SENT] = xs[left, s:s + SENT]  # numpy stops at row 41
  np.testing.assert_array_equal(got, want)
