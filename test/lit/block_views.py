# RUN: %PYTHON %s | FileCheck %s
"""Block windows: in-place views of the hbm operands, cast to vmem."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


def copy_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...]


# A (8, 128) block of a (16, 256) array at block index (i, 1 - j): the start
# is the block index times the block size, the window keeps the array's
# strides, and the kernel sees it in "vmem".
# CHECK-LABEL: TEST: test_blocked_view
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[X:[^:]+]]: memref<16x256xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<16x256xf32, "hbm">{{( \{llvm.noalias\})?}})
# CHECK-DAG: %[[C8:.*]] = arith.constant 8 : index
# CHECK-DAG: %[[C128:.*]] = arith.constant 128 : index
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# The index map runs on i32 grid indices (1 - j is an i32 subtraction).
# CHECK: %[[J32:.*]] = arith.index_cast %[[J]] : index to i32
# CHECK: %[[JREV:.*]] = arith.subi %{{.*}}, %[[J32]] : i32
# CHECK: %[[ROW:.*]] = arith.muli %[[I]], %[[C8]] : index
# CHECK: %[[JREV_IDX:.*]] = arith.index_cast %[[JREV]] : i32 to index
# CHECK: %[[COL:.*]] = arith.muli %[[JREV_IDX]], %[[C128]] : index
# (The bounds checks and the output's revisit tracking come in between:
# bounds_check.py, test_output_block_revisit_tracking.)
# CHECK: %[[XB:.*]] = memref.subview %[[X]][%[[ROW]], %[[COL]]] [8, 128] [1, 1] : memref<16x256xf32, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[XV:.*]] = memref.memory_space_cast %[[XB]] : memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "vmem">
# The output block is opened the same way (index map (i, j)).
# CHECK: %[[OB:.*]] = memref.subview %[[O]][%[[ROW]], %{{.*}}] [8, 128] [1, 1] : memref<16x256xf32, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[OV:.*]] = memref.memory_space_cast %[[OB]] : memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "vmem">
# CHECK: linalg.generic {{.*}} ins(%[[XV]] : {{.*}}) outs(%[[OV]] : {{.*}})
@run_test
def test_blocked_view():
  def f(x):
    return pallas_cpu.pallas_call(
        copy_kernel, out_shape=jax.ShapeDtypeStruct((16, 256), jnp.float32),
        grid=(2, 2), in_specs=[pl.BlockSpec((8, 128), lambda i, j: (i, 1 - j))],
        out_specs=pl.BlockSpec((8, 128), lambda i, j: (i, j)),
        backend="cpu")(x)
  print(lower_text(f, jnp.zeros((16, 256), jnp.float32), stage="canonical"))


# A None (squeezed) block dimension is dropped from the kernel's ref: a
# rank-reducing subview of size 1 along it, whose index-map value is an
# element index, not a block index.
# CHECK-LABEL: TEST: test_squeezed_dims_rank_reduce
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[X:[^:]+]]: memref<8x4x256xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<4x8x256xf32, "hbm">{{( \{llvm.noalias\})?}})
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[XB:.*]] = memref.subview %[[X]][0, %[[I]], %{{.*}}] [8, 1, 128] [1, 1, 1] : memref<8x4x256xf32, "hbm"> to memref<8x128xf32, strided<[1024, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[XV:.*]] = memref.memory_space_cast %[[XB]] : {{.*}} to memref<8x128xf32, strided<[1024, 1], offset: ?>, "vmem">
# CHECK: %[[OB:.*]] = memref.subview %[[O]][%[[I]], 0, %{{.*}}] [1, 8, 128] [1, 1, 1] : memref<4x8x256xf32, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[OV:.*]] = memref.memory_space_cast %[[OB]] : {{.*}} to memref<8x128xf32, strided<[256, 1], offset: ?>, "vmem">
# CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "parallel"]} ins(%[[XV]] : {{.*}}) outs(%[[OV]] : {{.*}})
@run_test
def test_squeezed_dims_rank_reduce():
  def f(x):
    return pallas_cpu.pallas_call(
        copy_kernel, out_shape=jax.ShapeDtypeStruct((4, 8, 256), jnp.float32),
        grid=(4, 2),
        in_specs=[pl.BlockSpec((8, None, 128), lambda i, j: (0, i, j))],
        out_specs=pl.BlockSpec((None, 8, 128), lambda i, j: (i, 0, j)),
        backend="cpu")(x)
  print(lower_text(f, jnp.zeros((8, 4, 256), jnp.float32), stage="canonical"))


def scale_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[0:8, :] * 2.0


# memory_space=pl.ANY: no window; the kernel indexes the whole "hbm"
# operand itself (here with a static slice), only the blocked output is in
# "vmem".
# CHECK-LABEL: TEST: test_any_memory_space_is_whole_operand
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[X:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<8x128xf32, "hbm">{{( \{llvm.noalias\})?}})
# CHECK: %[[OV:.*]] = memref.memory_space_cast %{{.*}} : {{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: %[[XS:.*]] = memref.subview %[[X]][0, 0] [8, 128] [1, 1] : memref<16x128xf32, "hbm"> to memref<8x128xf32, strided<[128, 1]>, "hbm">
# CHECK-NOT: memory_space_cast
# CHECK: linalg.generic {{.*}} ins(%[[XS]] : memref<8x128xf32, strided<[128, 1]>, "hbm">) outs(%[[OV]] : {{.*}})
@run_test
def test_any_memory_space_is_whole_operand():
  def f(x):
    return pallas_cpu.pallas_call(
        scale_kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=pl.BlockSpec((8, 128), lambda: (0, 0)), backend="cpu")(x)
  print(lower_text(f, jnp.zeros((16, 128), jnp.float32), stage="canonical"))


def copy2_kernel(x_ref, o_ref, p_ref):
  o_ref[...] = x_ref[...]
  p_ref[...] = x_ref[...]


# Each blocked output has a hoisted "previous block" slot (-1: none yet).
# Every grid step computes the element offset of the output's block and,
# when it differs from the previous step's, tells the runtime (which reports
# a revisit of a block left earlier) before the body runs.  o's block is
# i // 2, p's is i % 2; outputs are numbered among the outputs.
# CHECK-LABEL: TEST: test_output_block_revisit_tracking
# CHECK-DAG: func.func private @pallas_cpu_rt_output_block_changed(!llvm.ptr, i64, i64, i64, i64)
# CHECK-DAG: func.func private @pallas_cpu_rt_block_out_of_bounds(
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]+]]: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[P:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}})
# CHECK-DAG: %[[NONE:.*]] = arith.constant -1 : i64
# CHECK-DAG: %[[OUT0:.*]] = arith.constant 0 : i64
# CHECK-DAG: %[[OUT1:.*]] = arith.constant 1 : i64
# CHECK-DAG: %[[C8:.*]] = arith.constant 8 : index
# CHECK-DAG: %[[C1024:.*]] = arith.constant 1024 : index
# CHECK-DAG: %[[LAST_O:.*]] = memref.alloc() {{.*}}: memref<i64, "vmem">
# CHECK-DAG: %[[LAST_P:.*]] = memref.alloc() {{.*}}: memref<i64, "vmem">
# CHECK-DAG: memref.store %[[NONE]], %[[LAST_O]][] : memref<i64, "vmem">
# CHECK-DAG: memref.store %[[NONE]], %[[LAST_P]][] : memref<i64, "vmem">
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
#
# o: block index i // 2, element offset block * (8 * 128).
# CHECK: %[[O_BLK:.*]] = arith.index_cast %{{.*}} : i32 to index
# CHECK-NEXT: %[[O_ROW:.*]] = arith.muli %[[O_BLK]], %[[C8]] : index
# CHECK: %[[O_OFF:.*]] = arith.muli %[[O_BLK]], %[[C1024]] : index
# CHECK: %[[O_OFF64:.*]] = arith.index_cast %[[O_OFF]] : index to i64
# CHECK: %[[O_PREV:.*]] = memref.load %[[LAST_O]][] : memref<i64, "vmem">
# CHECK: %[[O_NEW:.*]] = arith.cmpi ne, %[[O_OFF64]], %[[O_PREV]] : i64
# CHECK: scf.if %[[O_NEW]] {
# CHECK: %[[STEP:.*]] = arith.index_cast %[[I]] : index to i64
# CHECK: func.call @pallas_cpu_rt_output_block_changed(%[[RT]], %[[OUT0]], %[[O_OFF64]], %{{.*}}, %[[STEP]]) : (!llvm.ptr, i64, i64, i64, i64) -> ()
# CHECK-NEXT: memref.store %[[O_OFF64]], %[[LAST_O]][] : memref<i64, "vmem">
# CHECK-NEXT: }
#
# p: block index i % 2, its own slot and output number 1.
# CHECK: %[[P_BLK:.*]] = arith.index_cast %{{.*}} : i32 to index
# CHECK-NEXT: %[[P_ROW:.*]] = arith.muli %[[P_BLK]], %[[C8]] : index
# CHECK: %[[P_OFF:.*]] = arith.muli %[[P_BLK]], %[[C1024]] : index
# CHECK: %[[P_OFF64:.*]] = arith.index_cast %[[P_OFF]] : index to i64
# CHECK: %[[P_PREV:.*]] = memref.load %[[LAST_P]][] : memref<i64, "vmem">
# CHECK: %[[P_NEW:.*]] = arith.cmpi ne, %[[P_OFF64]], %[[P_PREV]] : i64
# CHECK: scf.if %[[P_NEW]] {
# CHECK: func.call @pallas_cpu_rt_output_block_changed(%[[RT]], %[[OUT1]], %[[P_OFF64]], %{{.*}}, %{{.*}}) : (!llvm.ptr, i64, i64, i64, i64) -> ()
# CHECK-NEXT: memref.store %[[P_OFF64]], %[[LAST_P]][] : memref<i64, "vmem">
# CHECK-NEXT: }
#
# Then the body, on the windows at those blocks.
# CHECK: memref.subview %[[O]][%[[O_ROW]], 0] [8, 128] [1, 1]
# CHECK: memref.subview %[[P]][%[[P_ROW]], 0] [8, 128] [1, 1]
# CHECK: linalg.generic
# CHECK: linalg.generic
# CHECK: memref.dealloc %[[LAST_O]] : memref<i64, "vmem">
# CHECK: memref.dealloc %[[LAST_P]] : memref<i64, "vmem">
# CHECK-NEXT: return
@run_test
def test_output_block_revisit_tracking():
  def f(x):
    return pallas_cpu.pallas_call(
        copy2_kernel,
        out_shape=[jax.ShapeDtypeStruct((16, 128), jnp.float32)] * 2,
        grid=(4,), in_specs=[pl.BlockSpec((8, 128), lambda i: (i // 2, 0))],
        out_specs=[pl.BlockSpec((8, 128), lambda i: (i // 2, 0)),
                   pl.BlockSpec((8, 128), lambda i: (i % 2, 0))],
        backend="cpu")(x)
  print(lower_text(f, jnp.zeros((16, 128), jnp.float32), stage="canonical"))


def write_halves_kernel(x_ref, o_ref):
  o_ref[0:8, :] = x_ref[...] * 2.0
  o_ref[8:16, :] = x_ref[...]


# An output in pl.ANY has no window, hence no revisit tracking.
# CHECK-LABEL: TEST: test_any_output_is_not_tracked
# CHECK-NOT: output_block_changed
# CHECK-NOT: memref<i64, "vmem">
# CHECK: func.func @pallas_cpu_entry(
# CHECK-NOT: output_block_changed
# CHECK-NOT: memref<i64, "vmem">
# CHECK: return
@run_test
def test_any_output_is_not_tracked():
  def f(x):
    return pallas_cpu.pallas_call(
        write_halves_kernel,
        out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
        grid=(2,), in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
        out_specs=pl.BlockSpec(memory_space=pl.ANY), backend="cpu")(x)
  print(lower_text(f, jnp.zeros((16, 128), jnp.float32), stage="canonical"))
