# RUN: %PYTHON %s | FileCheck %s
"""Edge blocks: blocks that overhang the array get a padded vmem copy."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


def scale_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...] * 2.0


def peek_kernel(x_ref, o_ref):
  # The block's maximum sees its padding: the fill is observable.
  o_ref[...] = x_ref[...] + jnp.max(x_ref[...])


def blocked(kernel, shape, dtype, block, grid, **kwargs):
  # Grid index k selects block k along the leading dimensions.
  index_map = lambda *ids: (*ids, *[0] * (len(block) - len(ids)))
  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(shape, dtype), grid=grid,
        in_specs=[pl.BlockSpec(block, index_map)],
        out_specs=pl.BlockSpec(block, index_map), backend="cpu", **kwargs)(x)
  return lower_text(f, jnp.zeros(shape, dtype), stage="canonical")


# (100, 130) with (32, 128) blocks: both dimensions have a partial last
# block.  One padded "vmem" buffer per operand is allocated once, outside
# the grid loops, and freed after them.  The kernel is position-wise
# (grid.padding_plan): padding reaches only the output's padding, so no
# copy is filled, and the output, written before it is read, is not
# copied in.
# CHECK-LABEL: TEST: test_edge_blocks_2d
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[X:[^:]+]]: memref<100x130xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<100x130xf32, "hbm">{{( \{llvm.noalias\})?}})
# CHECK-NOT: 0x7FC00000
# CHECK-DAG: %[[TRUE:.*]] = arith.constant true
# CHECK-DAG: %[[C32:.*]] = arith.constant 32 : index
# CHECK-DAG: %[[C100:.*]] = arith.constant 100 : index
# CHECK-DAG: %[[C128:.*]] = arith.constant 128 : index
# CHECK-DAG: %[[C130:.*]] = arith.constant 130 : index
# CHECK: %[[XPAD:.*]] = memref.alloc() {alignment = 64 : i64} : memref<32x128xf32, "vmem">
# CHECK: %[[OPAD:.*]] = memref.alloc() {alignment = 64 : i64} : memref<32x128xf32, "vmem">
# CHECK-NOT: memref<32x128xf32, "vmem">
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NEXT: scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[ROW:.*]] = arith.muli %[[I]], %[[C32]] : index
# CHECK: %[[COL:.*]] = arith.muli %[[J]], %[[C128]] : index
#
# (The block bounds checks and the output's revisit tracking come first.)
# CHECK-NOT: memref.alloc() {{.*}}: memref<32x128xf32
#
# In bounds when the block ends inside the array along every ragged dim.
# CHECK: %[[ROW_END:.*]] = arith.addi %[[ROW]], %[[C32]] : index
# CHECK-NEXT: %[[ROW_OK:.*]] = arith.cmpi sle, %[[ROW_END]], %[[C100]] : index
# CHECK-NEXT: %[[COL_END:.*]] = arith.addi %[[COL]], %[[C128]] : index
# CHECK-NEXT: %[[COL_OK:.*]] = arith.cmpi sle, %[[COL_END]], %[[C130]] : index
# CHECK-NEXT: %[[IN:.*]] = arith.andi %[[ROW_OK]], %[[COL_OK]] : i1
#
# The input: the in-place view when in bounds...
# CHECK-NEXT: %[[XV:.*]] = scf.if %[[IN]] -> (memref<32x128xf32, strided<[?, 1], offset: ?>, "vmem">) {
# (The padded copy is marked stale: an in-bounds step replaces it.)
# CHECK-NEXT: memref.store %{{.*}}, %{{.*}}[] : memref<i64, "vmem">
# CHECK-NEXT: %[[XB:.*]] = memref.subview %[[X]][%[[ROW]], %[[COL]]] [32, 128] [1, 1]
# CHECK-NEXT: %[[XB_VMEM:.*]] = memref.memory_space_cast %[[XB]] : {{.*}} to memref<32x128xf32, strided<[130, 1], offset: ?>, "vmem">
# CHECK-NEXT: %[[XB_CAST:.*]] = memref.cast %[[XB_VMEM]]
# CHECK-NEXT: scf.yield %[[XB_CAST]]
# ... else the padded buffer: the valid part copied in, unless it already
# holds this block.
# CHECK-NEXT: } else {
# CHECK: scf.if %{{.*}} {
# CHECK-NEXT: %[[ROWS_LEFT:.*]] = arith.subi %[[C100]], %[[ROW]] : index
# CHECK-NEXT: %[[ROWS:.*]] = arith.minsi %[[ROWS_LEFT]], %[[C32]] : index
# CHECK-NEXT: %[[COLS_LEFT:.*]] = arith.subi %[[C130]], %[[COL]] : index
# CHECK-NEXT: %[[COLS:.*]] = arith.minsi %[[COLS_LEFT]], %[[C128]] : index
# CHECK-NEXT: %[[XSRC:.*]] = memref.subview %[[X]][%[[ROW]], %[[COL]]] [%[[ROWS]], %[[COLS]]] [1, 1] : memref<100x130xf32, "hbm"> to memref<?x?xf32, strided<[130, 1], offset: ?>, "hbm">
# CHECK-NEXT: %[[XDST:.*]] = memref.subview %[[XPAD]][0, 0] [%[[ROWS]], %[[COLS]]] [1, 1] : memref<32x128xf32, "vmem"> to memref<?x?xf32, strided<[128, 1]>, "vmem">
# CHECK-NEXT: linalg.copy {{.*}} ins(%[[XSRC]] : {{.*}}) outs(%[[XDST]] : {{.*}})
# CHECK: %[[XPAD_CAST:.*]] = memref.cast %[[XPAD]] : memref<32x128xf32, "vmem"> to memref<32x128xf32, strided<[?, 1], offset: ?>, "vmem">
# CHECK-NEXT: scf.yield %[[XPAD_CAST]]
# CHECK-NEXT: }
#
# The output block is opened the same way, into its own buffer (neither
# filled nor copied in).
# CHECK: %[[OV:.*]] = scf.if %[[IN]] -> (memref<32x128xf32, strided<[?, 1], offset: ?>, "vmem">) {
# CHECK: } else {
# CHECK-NOT: linalg.fill
# CHECK-NOT: linalg.copy
# CHECK: scf.yield
# CHECK-NEXT: }
#
# The body works on whichever memref the scf.ifs returned.
# CHECK: linalg.generic {{.*}} ins(%[[XV]] : {{.*}}) outs(%[[OV]] : {{.*}})
# CHECK: arith.mulf
# CHECK-NEXT: linalg.yield
# CHECK-NEXT: }
#
# After the body, an edge block of the output is written back: only the
# in-bounds part, from the padded buffer to the array.
# CHECK: %[[EDGE:.*]] = arith.xori %[[IN]], %[[TRUE]] : i1
# CHECK-NEXT: scf.if %[[EDGE]] {
# CHECK: %[[OSRC:.*]] = memref.subview %[[O]][%[[ROW]], %[[COL]]] [%[[OROWS:.*]], %[[OCOLS:.*]]] [1, 1] : memref<100x130xf32, "hbm">
# CHECK-NEXT: %[[ODST:.*]] = memref.subview %[[OPAD]][0, 0] [%[[OROWS]], %[[OCOLS]]] [1, 1] : memref<32x128xf32, "vmem">
# CHECK-NEXT: linalg.copy {{.*}} ins(%[[ODST]] : {{.*}}) outs(%[[OSRC]] : {{.*}})
# CHECK-NEXT: }
# CHECK-NOT: memref.alloc() {{.*}}: memref<32x128xf32
# CHECK: memref.dealloc %[[XPAD]] : memref<32x128xf32, "vmem">
# CHECK: memref.dealloc %[[OPAD]] : memref<32x128xf32, "vmem">
# CHECK: return
@run_test
def test_edge_blocks_2d():
  print(blocked(scale_kernel, (100, 130), jnp.float32, (32, 128), (4, 2)))


# Only the ragged dimension is tested and clamped; the other keeps its
# static size.  Integer padding is the dtype's minimum (interpret=True's
# fill under uninitialized_memory="nan"), for a kernel that sees it.
# CHECK-LABEL: TEST: test_edge_blocks_int_rows_only
# CHECK-DAG: %[[IMIN:.*]] = arith.constant -2147483648 : i32
# CHECK-DAG: %[[C32:.*]] = arith.constant 32 : index
# CHECK-DAG: %[[C100:.*]] = arith.constant 100 : index
# CHECK: %[[XPAD:.*]] = memref.alloc() {alignment = 64 : i64} : memref<32x128xi32, "vmem">
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[ROW:.*]] = arith.muli %[[I]], %[[C32]] : index
# CHECK: %[[ROW_END:.*]] = arith.addi %[[ROW]], %[[C32]] : index
# CHECK-NEXT: %[[IN:.*]] = arith.cmpi sle, %[[ROW_END]], %[[C100]] : index
# CHECK-NEXT: scf.if %[[IN]] -> (memref<32x128xi32, strided<[?, 1], offset: ?>, "vmem">) {
# CHECK: } else {
# The copy is refreshed only when the block changed since the last step
# (a resident block keeps what the kernel wrote, padding included).
# CHECK: %[[FRESH:.*]] = arith.cmpi ne, %{{.*}}, %{{.*}} : i64
# CHECK-NEXT: scf.if %[[FRESH]] {
# CHECK-NEXT: linalg.fill ins(%[[IMIN]] : i32) outs(%[[XPAD]] : memref<32x128xi32, "vmem">)
# CHECK-NEXT: %[[ROWS_LEFT:.*]] = arith.subi %[[C100]], %[[ROW]] : index
# CHECK-NEXT: %[[ROWS:.*]] = arith.minsi %[[ROWS_LEFT]], %[[C32]] : index
# CHECK-NEXT: memref.subview %{{.*}}[%[[ROW]], 0] [%[[ROWS]], 128] [1, 1] : memref<100x128xi32, "hbm"> to memref<?x128xi32, strided<[128, 1], offset: ?>, "hbm">
# Canonicalization folds not(end <= 100) into end > 100.
# CHECK: arith.cmpi sgt, %[[ROW_END]], %[[C100]] : index
@run_test
def test_edge_blocks_int_rows_only():
  print(blocked(peek_kernel, (100, 128), jnp.int32, (32, 128), (4,)))


# CompilerParams(uninitialized_memory="zero") pads with zeros instead.
# CHECK-LABEL: TEST: test_edge_blocks_zero_fill
# CHECK-NOT: 0x7FC00000
# CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-NOT: 0x7FC00000
# CHECK: linalg.fill ins(%[[ZERO]] : f32) outs(%{{.*}} : memref<32x128xf32, "vmem">)
# CHECK-NOT: 0x7FC00000
@run_test
def test_edge_blocks_zero_fill():
  print(blocked(peek_kernel, (100, 128), jnp.float32, (32, 128), (4,),
                compiler_params=pallas_cpu.CompilerParams(
                    uninitialized_memory="zero")))


# Blocks that divide the array need no padding at all: no buffer of the
# block's shape, no fill, no copy.
# CHECK-LABEL: TEST: test_block_divides_array
# CHECK-NOT: memref.alloc() {{.*}}: memref<32x128xf32
# CHECK-NOT: linalg.fill
# CHECK-NOT: linalg.copy
# CHECK: return
@run_test
def test_block_divides_array():
  print(blocked(scale_kernel, (96, 128), jnp.float32, (32, 128), (3,)))
