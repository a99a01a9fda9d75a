# RUN: %PYTHON %s | FileCheck %s
"""A kernel that talks to other devices (inside shard_map): it asks the
runtime for its device id once, computes the target's logical id from mesh
coordinates, passes remote DMAs their send semaphore and target device,
registers its buffers so a remote copy can name them, and ends with the
exit barriers every instance passes together.  A kernel without remote
operations has none of that."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh, PartitionSpec as P

from lit_helpers import lower_text, run_test

X = jnp.ones((8, 128), jnp.float32)
MESH = Mesh(np.array(jax.devices()[:1]), ("x",))


def _in_shard_map(kernel, scratch):
  def body(x):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        scratch_shapes=scratch)(x)
  return jax.shard_map(body, mesh=MESH, in_specs=P("x"), out_specs=P("x"),
                       check_vma=False)


# CHECK-LABEL: TEST: test_remote_copy
# CHECK: pallas_cpu.runtime_info = "{{.*}}\22collective\22: true
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]*]]:
# At entry: the device id, the buffers in allocation order, the barrier.
# CHECK: %[[ID:.*]] = {{(func.)?}}call @pallas_cpu_rt_device_id(%[[RT]]) : (!llvm.ptr) -> i32
# CHECK: call @pallas_cpu_rt_buffer_register(%[[RT]], %{{.*}}, %c4096_i64{{.*}})
# CHECK: call @pallas_cpu_rt_enter(%[[RT]])
# (device id + 1) mod 1 on a one-device mesh, times its stride (1):
# CHECK: arith.remsi
# CHECK: %[[TARGET:.*]] = arith.addi %c0_i64{{.*}}, %{{.*}} : i64
# The receive semaphore (scratch 2, id 1) and the send semaphore (id 0):
# CHECK: call @pallas_cpu_rt_dma_start_f32(%[[RT]], %{{.*}}, %{{.*}}, %c4_i64{{.*}}, %{{.*}}, %c1_i64{{.*}}, %{{.*}}, %c0_i64{{.*}}, %[[TARGET]],
# CHECK: call @pallas_cpu_rt_exit_barrier(%[[RT]], %c0_i64
# CHECK: call @pallas_cpu_rt_exit_barrier(%[[RT]], %c1_i64
@run_test
def test_remote_copy():
  def kernel(x_ref, o_ref, buf, send, recv):
    right = jax.lax.rem(jax.lax.axis_index("x") + 1, 1)
    copy = pltpu.make_async_remote_copy(x_ref, buf, send, recv,
                                        device_id=(right,),
                                        device_id_type=pl.DeviceIdType.MESH)
    copy.start()
    copy.wait()
    o_ref[...] = buf[...]
  print(lower_text(_in_shard_map(kernel, [pltpu.VMEM((8, 128), jnp.float32),
                                          pltpu.SemaphoreType.DMA,
                                          pltpu.SemaphoreType.DMA]), X))


# CHECK-LABEL: TEST: test_local_kernel
# CHECK: pallas_cpu.runtime_info = "{{.*}}\22collective\22: false
# CHECK: call @pallas_cpu_rt_device_id(
# CHECK-NOT: pallas_cpu_rt_buffer_register
# CHECK-NOT: pallas_cpu_rt_exit_barrier
# CHECK-LABEL: TEST: test_end
@run_test
def test_local_kernel():
  def kernel(x_ref, o_ref, buf):
    buf[...] = x_ref[...]
    o_ref[...] = buf[...] + jax.lax.axis_index("x").astype(jnp.float32)
  print(lower_text(_in_shard_map(kernel, [pltpu.VMEM((8, 128), jnp.float32)]),
                   X))


@run_test
def test_end():
  pass
