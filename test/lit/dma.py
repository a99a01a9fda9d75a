# RUN: %PYTHON %s | FileCheck %s
"""DMAs and semaphores lower to calls into the C++ runtime; every buffer
keeps its memory space: the HBM operand, the VMEM scratch, the semaphores."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test

X = jnp.ones((64, 128), jnp.float32)


def _call(kernel, scratch):
  return lambda x: pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      scratch_shapes=scratch)(x)


# CHECK-LABEL: TEST: test_dma_start_and_wait
# CHECK-DAG: func.func private @pallas_cpu_rt_dma_start_f32(!llvm.ptr, memref<*xf32>, memref<*xf32>, i64, memref<i32, strided<[], offset: ?>, "semaphore">, i64, memref<i32, strided<[], offset: ?>, "semaphore">, i64, i64, i64, i64, i64, memref<*xi64>, i64, i64)
# CHECK-DAG: func.func private @pallas_cpu_rt_sem_wait(!llvm.ptr, memref<i32, strided<[], offset: ?>, "semaphore">, i32, i64, i64) -> i32
# CHECK: func.func @pallas_cpu_entry(%[[RT:.*]]: !llvm.ptr, %[[X:.*]]: memref<64x128xf32, "hbm">
# CHECK-DAG: %[[BUF:.*]] = memref.alloc() {{.*}} : memref<8x128xf32, "vmem">
# CHECK-DAG: %[[SEMS:.*]] = memref.alloc() {{.*}} : memref<2xi32, "semaphore">
# CHECK-DAG: %[[NOPAD:.*]] = memref.alloca() : memref<0xi64>
# CHECK: %[[SRC:.*]] = memref.subview {{.*}}[8, 0] [8, 128] [1, 1] : memref<64x128xf32, strided<[128, 1], offset: ?>, "hbm">
# CHECK: %[[SEM:.*]] = memref.subview {{.*}} : memref<2xi32, strided<[1], offset: ?>, "semaphore"> to memref<i32, strided<[], offset: ?>, "semaphore">
# CHECK: %[[SRC_FLAT:.*]] = memref.memory_space_cast %[[SRC]] {{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>>
# CHECK: %[[SRC_U:.*]] = memref.cast %[[SRC_FLAT]] {{.*}} to memref<*xf32>
# CHECK: %[[DST_U:.*]] = memref.cast {{.*}} to memref<*xf32>
# The element size (4 bytes), the semaphore and its id, no send semaphore
# (-1) nor target device (-1: a local copy), the on_wait mode (1), a DMA
# semaphore (0: completion counts bytes), a copy (0: not add=True), no tile
# padding (an empty memref) and the start's site id:
# CHECK: %[[NOPAD_U:.*]] = memref.cast %[[NOPAD]] : memref<0xi64> to memref<*xi64>
# CHECK: call @pallas_cpu_rt_dma_start_f32(%[[RT]], %[[SRC_U]], %[[DST_U]], %c4_i64{{.*}}, %[[SEM]], %c0_i64{{.*}}, %[[SEM]], %c-1_i64{{.*}}, %c-1_i64{{.*}}, %c1_i64{{.*}}, %c0_i64{{.*}}, %c0_i64{{.*}}, %[[NOPAD_U]], %c{{[0-9]+}}_i64{{.*}}
# The wait is for the 8x128xf32 destination's 4096 bytes:
# CHECK: %[[BYTES:.*]] = arith.constant 4096 : i32
# CHECK: call @pallas_cpu_rt_sem_wait(%[[RT]], %{{.*}}, %[[BYTES]],
@run_test
def test_dma_start_and_wait():
  def kernel(x_hbm, o_ref, buf, sems):
    c = pltpu.make_async_copy(x_hbm.at[pl.ds(8, 8)], buf, sems.at[1])
    c.start()
    c.wait()
    o_ref[...] = buf[...]
  print(lower_text(_call(kernel, [pltpu.VMEM((8, 128), jnp.float32),
                                  pltpu.SemaphoreType.DMA((2,))]), X))


# CHECK-LABEL: TEST: test_semaphore_signal_wait_read
# CHECK: pallas_cpu.runtime_info = {{.*}}semaphore_names{{.*}}scratch operand 0
# CHECK: %[[SEMS:.*]] = memref.alloc() {{.*}} : memref<3xi32, "semaphore">
# CHECK: linalg.fill ins(%{{.*}} : i32) outs(%[[SEMS]] : memref<3xi32, "semaphore">)
# CHECK: call @pallas_cpu_rt_sem_signal(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) : (!llvm.ptr, memref<i32, strided<[], offset: ?>, "semaphore">, i32, i64, i64) -> ()
# CHECK: call @pallas_cpu_rt_sem_wait(
# CHECK: %[[V:.*]] = {{(func.)?}}call @pallas_cpu_rt_sem_read(
@run_test
def test_semaphore_signal_wait_read():
  def kernel(x_hbm, o_ref, sems):
    pl.semaphore_signal(sems.at[2], 5)
    pl.semaphore_wait(sems.at[2], 5)
    o_ref[...] = jnp.full((8, 128), pl.semaphore_read(sems.at[2]),
                          jnp.float32)
  print(lower_text(_call(kernel, [pltpu.SemaphoreType.REGULAR((3,))]), X))


# CHECK-LABEL: TEST: test_add_flag
# add=True on bf16 elements: the runtime's bf16 accumulation (3), after the
# DMA-semaphore flag (0), before the site id:
# CHECK: call @pallas_cpu_rt_dma_start_bf16({{.*}}, %c-1_i64{{.*}}, %c1_i64{{.*}}, %c0_i64{{.*}}, %c3_i64{{.*}}, %c0_i64{{.*}}, %{{.*}}) :
@run_test
def test_add_flag():
  def kernel(x_hbm, o_hbm, sem):
    pltpu.async_copy(x_hbm, o_hbm, sem, add=True).wait()
  x = jnp.ones((8, 128), jnp.bfloat16)
  print(lower_text(lambda x: pallas_cpu.pallas_call(
      kernel, out_shape=x, in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec(memory_space=pl.ANY),
      scratch_shapes=[pltpu.SemaphoreType.DMA])(x), x))


# CHECK-LABEL: TEST: test_eager_mode_flag
# CHECK: call @pallas_cpu_rt_dma_start_f32({{.*}}, %c-1_i64{{.*}}, %c0_i64{{.*}}, %c0_i64{{.*}}, %c0_i64{{.*}}, %{{.*}}) :
@run_test
def test_eager_mode_flag():
  def kernel(x_hbm, o_ref, buf, sem):
    pltpu.async_copy(x_hbm.at[pl.ds(0, 8)], buf, sem).wait()
    o_ref[...] = buf[...]
  fn = lambda x: pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                      pltpu.SemaphoreType.DMA],
      compiler_params=pallas_cpu.CompilerParams(
          dma_execution_mode="eager"))(x)
  print(lower_text(fn, X))


# A DMA on a REGULAR semaphore counts one completion (flag 1), and the
# semaphore_wait that takes it waits for 1.
# CHECK-LABEL: TEST: test_regular_semaphore_dma
# CHECK: call @pallas_cpu_rt_dma_start_f32({{.*}}, %c-1_i64{{.*}}, %c1_i64{{.*}}, %c1_i64{{.*}}, %c0_i64{{.*}}, %{{.*}}) :
# CHECK: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK: call @pallas_cpu_rt_sem_wait(%{{.*}}, %{{.*}}, %[[ONE]],
@run_test
def test_regular_semaphore_dma():
  def kernel(x_hbm, o_ref, buf, sem):
    pltpu.async_copy(x_hbm.at[pl.ds(0, 8)], buf, sem)
    pl.semaphore_wait(sem)
    o_ref[...] = buf[...]
  print(lower_text(_call(kernel, [pltpu.VMEM((8, 128), jnp.float32),
                                  pltpu.SemaphoreType.REGULAR]), X))


# The entry allocates everything first, then runs the kernel only if every
# allocation succeeded; a run_scoped scope ends by checking its buffer
# against DMAs in flight and its semaphore's count; the kernel ends by
# checking the scratch semaphores and any DMA left (mode 0: an error).
# CHECK-LABEL: TEST: test_lifetime_checks
# Sites: the scoped buffer (0, registered when its scope opens), the DMA (1).
# CHECK: pallas_cpu.runtime_info = {{.*}}allocations{{.*}}run_scoped ref 0 at {{.*}}dma.py{{.*}}float32[8, 128] in vmem{{.*}}sites{{.*}}run_scoped ref 0 at {{.*}}DMA start at {{.*}}dma.py
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]*]]:
# CHECK: %[[SCRATCH_SEM:.*]] = memref.alloc() {{.*}} : memref<i32, "semaphore">
# CHECK: %[[BUF:.*]] = memref.alloc() {{.*}} : memref<8x128xf32, "vmem">
# CHECK: %[[SCOPED_SEM:.*]] = memref.alloc() {{.*}} : memref<i32, "semaphore">
# CHECK: %[[FAILED:.*]] = call @pallas_cpu_rt_failed(%[[RT]])
# CHECK: %[[OK:.*]] = arith.cmpi eq, %[[FAILED]], %{{.*}} : i32
# CHECK: scf.if %[[OK]] {
# CHECK: call @pallas_cpu_rt_dma_start_f32(
# CHECK: memref.extract_aligned_pointer_as_index %{{.*}} : memref<8x128xf32, strided<[128, 1], offset: ?>> -> index
# CHECK: call @pallas_cpu_rt_buffer_exit(%[[RT]], %{{.*}}, %c4096_i64{{.*}}, %c{{[0-9]+}}_i64{{.*}}, %{{.*}}) : (!llvm.ptr, i64, i64, i64, i64) -> ()
# CHECK: call @pallas_cpu_rt_sem_exit(%[[RT]], %{{.*}}, %c1_i64{{.*}}, %c1_i64{{.*}}, %c1_i64{{.*}}, %c0_i64{{.*}}, %{{.*}}) : (!llvm.ptr, i64, i64, i64, i64, i64, i64) -> ()
# CHECK: call @pallas_cpu_rt_sem_exit(%[[RT]], %{{.*}}, %c1_i64{{.*}}, %c0_i64{{.*}}, %c0_i64{{.*}}, %c0_i64{{.*}}, %{{.*}})
# CHECK: call @pallas_cpu_rt_kernel_exit(%[[RT]], %c0_i64{{.*}}, %{{.*}})
# CHECK: }
# CHECK-DAG: memref.dealloc %[[BUF]]
# CHECK-DAG: memref.dealloc %[[SCRATCH_SEM]]
@run_test
def test_lifetime_checks():
  def kernel(x_hbm, o_ref, sem):
    def body(buf, scoped_sem):
      pltpu.async_copy(x_hbm.at[pl.ds(0, 8)], buf, sem).wait()
      o_ref[...] = buf[...]
    pl.run_scoped(body, pltpu.VMEM((8, 128), jnp.float32),
                  pltpu.SemaphoreType.REGULAR)
  print(lower_text(_call(kernel, [pltpu.SemaphoreType.DMA]), X))


# A DMA window of run-time size (emit_pipeline's edge and BoundedSlice
# blocks) whose source may reach past the (41, 128) array into the padding
# of its last (8, 128) tile: the window is checked against the padded 48
# rows, the runtime gets the pad description [fill bits (f32 NaN), the
# source's valid rows and columns, the destination's], and the wait counts
# the window's bytes at run time.
# CHECK-LABEL: TEST: test_run_time_size_into_tile_padding
# CHECK-DAG: %[[PAD:.*]] = memref.alloca() : memref<5xi64>
# CHECK-DAG: %[[C48:.*]] = arith.constant 48 : index
# CHECK: %[[SRC:.*]] = memref.subview %{{.*}}[%{{.*}}, 0] [%{{.*}}, 128] [1, 1] : memref<41x128xf32, strided<[128, 1], offset: ?>, "hbm"> to memref<?x128xf32, strided<[128, 1], offset: ?>, "hbm">
# CHECK: %[[DST:.*]] = memref.subview %{{.*}}[%{{.*}}, 0] [%{{.*}}, 128] [1, 1] : memref<16x128xf32, strided<[128, 1], offset: ?>, "vmem"> to memref<?x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: %[[NAN:.*]] = arith.constant 2143289344 : i64
# CHECK: memref.store %[[NAN]], %[[PAD]][%{{.*}}] : memref<5xi64>
# CHECK: %[[PAD_U:.*]] = memref.cast %[[PAD]] : memref<5xi64> to memref<*xi64>
# CHECK: call @pallas_cpu_rt_dma_start_f32({{.*}}, %[[PAD_U]], %c{{[0-9]+}}_i64{{.*}}
# CHECK: %[[ROWS:.*]] = memref.dim %{{.*}}, %{{.*}} : memref<?x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: %[[ROWS32:.*]] = arith.index_cast %[[ROWS]] : index to i32
# CHECK: %[[BYTES:.*]] = arith.muli %{{.*}}, %[[ROWS32]] : i32
# CHECK: call @pallas_cpu_rt_sem_wait(%{{.*}}, %{{.*}}, %[[BYTES]],
@run_test
def test_run_time_size_into_tile_padding():
  def kernel(x_hbm, o_ref, buf, sem):
    i = pl.program_id(0)
    n = jnp.minimum(16, 48 - i * 16)
    c = pltpu.make_async_copy(x_hbm.at[pl.ds(i * 16, n)],
                              buf.at[pl.ds(0, n)], sem)
    c.start()
    c.wait()
    o_ref[...] = buf[...]
  fn = lambda x: pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((48, 128), jnp.float32),
      grid=(3,), in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec((16, 128), lambda i: (i, 0)),
      scratch_shapes=[pltpu.VMEM((16, 128), jnp.float32),
                      pltpu.SemaphoreType.DMA])(x)
  print(lower_text(fn, jnp.ones((41, 128), jnp.float32)))
