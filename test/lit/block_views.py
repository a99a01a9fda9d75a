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
# CHECK: func.func @pallas_cpu_entry(%{{.*}}: !llvm.ptr, %[[X:.*]]: memref<16x256xf32, "hbm">, %[[O:.*]]: memref<16x256xf32, "hbm">)
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
# CHECK: %[[XB:.*]] = memref.subview %[[X]][%[[ROW]], %[[COL]]] [8, 128] [1, 1] : memref<16x256xf32, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[XV:.*]] = memref.memory_space_cast %[[XB]] : memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "vmem">
# The output block is opened the same way (index map (i, j)).
# CHECK-NEXT: %[[OB:.*]] = memref.subview %[[O]][%[[ROW]], %{{.*}}] [8, 128] [1, 1] : memref<16x256xf32, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[OV:.*]] = memref.memory_space_cast %[[OB]] : memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "vmem">
# CHECK-NEXT: linalg.generic {{.*}} ins(%[[XV]] : {{.*}}) outs(%[[OV]] : {{.*}})
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
# CHECK: func.func @pallas_cpu_entry(%{{.*}}: !llvm.ptr, %[[X:.*]]: memref<8x4x256xf32, "hbm">, %[[O:.*]]: memref<4x8x256xf32, "hbm">)
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[XB:.*]] = memref.subview %[[X]][0, %[[I]], %{{.*}}] [8, 1, 128] [1, 1, 1] : memref<8x4x256xf32, "hbm"> to memref<8x128xf32, strided<[1024, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[XV:.*]] = memref.memory_space_cast %[[XB]] : {{.*}} to memref<8x128xf32, strided<[1024, 1], offset: ?>, "vmem">
# CHECK-NEXT: %[[OB:.*]] = memref.subview %[[O]][%[[I]], 0, %{{.*}}] [1, 8, 128] [1, 1, 1] : memref<4x8x256xf32, "hbm"> to memref<8x128xf32, strided<[256, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[OV:.*]] = memref.memory_space_cast %[[OB]] : {{.*}} to memref<8x128xf32, strided<[256, 1], offset: ?>, "vmem">
# CHECK-NEXT: linalg.generic {{.*}} iterator_types = ["parallel", "parallel"]} ins(%[[XV]] : {{.*}}) outs(%[[OV]] : {{.*}})
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
# CHECK: func.func @pallas_cpu_entry(%{{.*}}: !llvm.ptr, %[[X:.*]]: memref<16x128xf32, "hbm">, %[[O:.*]]: memref<8x128xf32, "hbm">)
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
