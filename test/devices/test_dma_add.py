"""Remote DMAs with add=True (``make_async_remote_copy(...).start(add=True)``):
the copy accumulates into the receiver's buffer.  TPU interpret mode ignores
add=True in jax 0.10.2 (it overwrites) and interpret=True has no remote
DMAs, so the references are lax collectives."""
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
ROWS = 8


def _run(kernel, x, mesh, n_sems=2, **params):
  def body(v):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(v.shape, v.dtype),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec(memory_space=pl.ANY),
        scratch_shapes=[pltpu.SemaphoreType.DMA] * n_sems,
        compiler_params=pltpu.CompilerParams(collective_id=0))(v)
  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"),
                            out_specs=P("x"), check_vma=False))
  with pallas_cpu.force_cpu_backend(pallas_cpu.CompilerParams(**params)):
    return np.asarray(jax.block_until_ready(f(x)))


def _barrier(n):
  """Both neighbours have initialized their output before anyone adds."""
  me = jax.lax.axis_index("x")
  barrier = pltpu.get_barrier_semaphore()
  for nb in (jax.lax.rem(me + 1, n), jax.lax.rem(me + n - 1, n)):
    pl.semaphore_signal(barrier, 1, device_id=(nb,), device_id_type=MESH)
  pl.semaphore_wait(barrier, 2)


@pytest.mark.parametrize("mode", ["eager", "on_wait"])
@pytest.mark.parametrize("n", [2, 4])
def test_ring_add_matches_x_plus_ppermute(n, mode):
  mesh = mesh_of(n)

  def kernel(x_ref, o_ref, send, recv):
    pltpu.sync_copy(x_ref, o_ref)
    _barrier(n)
    right = jax.lax.rem(jax.lax.axis_index("x") + 1, n)
    copy = pltpu.make_async_remote_copy(x_ref, o_ref, send, recv,
                                        device_id=(right,),
                                        device_id_type=MESH)
    copy.start(add=True)
    copy.wait()

  x = jnp.asarray(np.random.default_rng(n).standard_normal(
      (n * ROWS, 128)).astype(np.float32))
  want = jax.jit(jax.shard_map(
      lambda v: v + jax.lax.ppermute(v, "x", [(i, (i + 1) % n)
                                              for i in range(n)]),
      mesh=mesh, in_specs=P("x"), out_specs=P("x"), check_vma=False))(x)
  np.testing.assert_array_equal(_run(kernel, x, mesh,
                                     dma_execution_mode=mode), want)


def test_every_device_adds_into_device_0():
  """n - 1 remote adds into one buffer at once: none is lost (int32, so
  the order of the sums does not matter); device 0's result is the psum."""
  n = 4
  mesh = mesh_of(n)

  def kernel(x_ref, o_ref, send, recv):
    me = jax.lax.axis_index("x")
    pltpu.sync_copy(x_ref, o_ref)
    # Device 0's output holds its x before anyone adds into it.
    barrier = pltpu.get_barrier_semaphore()

    @pl.when(me == 0)
    def _():
      for d in range(1, n):
        pl.semaphore_signal(barrier, 1, device_id=(d,), device_id_type=MESH)

    @pl.when(me != 0)
    def _():
      pl.semaphore_wait(barrier, 1)
    copy = pltpu.make_async_remote_copy(x_ref, o_ref, send, recv,
                                        device_id=(0,), device_id_type=MESH)

    @pl.when(me != 0)
    def _():
      copy.start(add=True)
      copy.wait_send()

    @pl.when(me == 0)
    def _():
      for _ in range(n - 1):
        copy.wait_recv()

  x = jnp.asarray(np.random.default_rng(0).integers(
      -2**31, 2**31 - 1, (n * ROWS, 128), dtype=np.int32))
  got = _run(kernel, x, mesh)
  xs = np.asarray(x).reshape(n, ROWS, 128)
  want = xs.copy()
  want[0] = xs.sum(axis=0, dtype=np.int32)  # wrapping, as the DMA adds
  np.testing.assert_array_equal(got.reshape(n, ROWS, 128), want)
