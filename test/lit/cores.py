# RUN: %PYTHON %s | FileCheck %s
"""A kernel over a TensorCore mesh: the mesh is the grid (one dimension,
"core"), each core runs the entry on its own thread over its own index
[lo, hi) of that dimension, with its own scratch and semaphores (allocated
by the entry it runs), registered with the runtime so other cores can
signal them; the HBM operands are the device's, shared by every core."""
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lit_helpers import lower_text, run_test

X = jnp.ones((16, 128), jnp.float32)
MESH = pltpu.create_tensorcore_mesh("core", num_cores=2)


def _mesh_kernel(x):
  @pl.kernel(out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), mesh=MESH,
             scratch_types=[pltpu.VMEM((8, 128), jnp.float32),
                            pltpu.SemaphoreType.REGULAR])
  def kernel(x_hbm, o_hbm, buf, sem):
    c = jax.lax.axis_index("core")
    pltpu.sync_copy(x_hbm.at[pl.ds(c * 8, 8)], buf)
    pl.semaphore_signal(sem, 1, core_index=1 - c)
    pl.semaphore_wait(sem, 1)
    pltpu.sync_copy(buf, o_hbm.at[pl.ds(c * 8, 8)])
  return kernel(x)


# CHECK-LABEL: TEST: test_mesh_kernel
# The operands are HBM, the scratch VMEM and the semaphore per core: each
# core's entry allocates its own.
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]*]]: !llvm.ptr, %[[LO:[^:]*]]: i64, %[[HI:[^:]*]]: i64, %{{.*}}: memref<16x128xf32, "hbm"> {{.*}}, %{{.*}}: memref<16x128xf32, "hbm">
# CHECK-DAG: %[[BUF:.*]] = memref.alloc() {{.*}} : memref<8x128xf32, "vmem">
# CHECK-DAG: %[[SEM:.*]] = memref.alloc() {{.*}} : memref<i32, "semaphore">
# After initialization, the semaphore is registered and the cores meet.
# CHECK: call @pallas_cpu_rt_sem_register(%[[RT]], %c0_i64, %{{.*}}, %c1_i64{{.*}})
# CHECK: call @pallas_cpu_rt_enter(%[[RT]])
# The core's part of the grid: the "core" dimension from lo to hi.
# CHECK: scf.for %[[CORE:.*]] = %{{.*}} to %{{.*}} step
# The signal names the semaphore (id 0, offset 0), the own device (-1) and
# the target core.
# CHECK: call @pallas_cpu_rt_sem_signal_remote(%[[RT]], %c0_i64{{.*}}, %{{.*}}, %{{.*}}, %c-1_i64{{.*}}, %{{.*}}, %{{.*}}) : (!llvm.ptr, i64, i64, i32, i64, i64, i64) -> ()
# CHECK: call @pallas_cpu_rt_sem_wait(
# The cores end together: past the grid, and before their buffers go.
# CHECK: call @pallas_cpu_rt_exit_barrier(%[[RT]], %c0_i64
# CHECK: call @pallas_cpu_rt_kernel_exit(
# CHECK: call @pallas_cpu_rt_exit_barrier(%[[RT]], %c1_i64
# CHECK: memref.dealloc
@run_test
def test_mesh_kernel():
  print(lower_text(_mesh_kernel, X))


# grid_order="random": the parallel dimension's iterations run in a seeded
# order read from a constant table; the arbitrary one keeps its own.
# CHECK-LABEL: TEST: test_random_grid_order
# CHECK: memref.global "private" constant @pallas_cpu_grid_order_0 : memref<4xi32> = dense<[{{.*}}]>
# CHECK-NOT: pallas_cpu_grid_order_1
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step
# CHECK: %[[TABLE:.*]] = memref.get_global @pallas_cpu_grid_order_0 : memref<4xi32>
# CHECK: memref.load %[[TABLE]][%[[I]]] : memref<4xi32>
@run_test
def test_random_grid_order():
  import pallas_cpu

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1

  spec = pl.BlockSpec((8, 128), lambda i, j: (i, j))
  fn = lambda x: pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((32, 256), jnp.float32),
      grid=(4, 2), in_specs=[spec], out_specs=spec,
      compiler_params=pallas_cpu.CompilerParams(
          dimension_semantics=("parallel", "arbitrary"), grid_order="random",
          seed=7))(x)
  print(lower_text(fn, jnp.ones((32, 256), jnp.float32)))


# An HBM scratch buffer of a mesh kernel is the device's, shared by its
# cores: not a per-core alloc but one more entry argument (a byte buffer the
# runtime allocates once per device), viewed with its type in "hbm"; core 0
# fills it before the cores meet.  The VMEM scratch stays per core.
# CHECK-LABEL: TEST: test_shared_hbm_scratch
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]*]]: !llvm.ptr, %[[LO:[^:]*]]: i64, %{{.*}}: i64, %{{.*}}: memref<16x128xf32, "hbm"> {{.*}}, %{{.*}}: memref<16x128xf32, "hbm"> {{.*}}, %[[SHARED:.*]]: memref<8192xi8, "hbm">)
# CHECK-DAG: memref.alloc() {{.*}} : memref<8x128xf32, "vmem">
# CHECK-DAG: memref.view %[[SHARED]][%{{.*}}][] : memref<8192xi8, "hbm"> to memref<16x128xf32, "hbm">
# CHECK: %[[CORE0:.*]] = arith.cmpi eq, %[[LO]], %c0_i64
# CHECK: scf.if %[[CORE0]] {
# CHECK: linalg.fill {{.*}} outs(%{{.*}} : memref<16x128xf32, "hbm">)
# CHECK: call @pallas_cpu_rt_enter(%[[RT]])
# CHECK: pallas_cpu.runtime_info = {{.*}}\22shared_buffers\22: [8192]
@run_test
def test_shared_hbm_scratch():
  @functools.partial(
      pl.kernel, out_type=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      mesh=MESH, scratch_types=[pltpu.VMEM((8, 128), jnp.float32),
                                pltpu.HBM((16, 128), jnp.float32)])
  def kernel(x_hbm, o_hbm, buf, shared):
    c = jax.lax.axis_index("core")
    pltpu.sync_copy(x_hbm.at[pl.ds(c * 8, 8)], buf)
    pltpu.sync_copy(buf, shared.at[pl.ds(c * 8, 8)])
    pltpu.sync_copy(shared.at[pl.ds(c * 8, 8)], o_hbm.at[pl.ds(c * 8, 8)])
  text = lower_text(kernel, X)
  body, _, attrs = text.partition("func.func @pallas_cpu_entry")
  print("func.func @pallas_cpu_entry" + attrs)
  print(body)
