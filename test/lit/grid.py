# RUN: %PYTHON %s | FileCheck %s
"""The grid: one scf.for per grid dimension, program_id from the IVs."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


def pid_kernel(x_ref, o_ref):
  i, j, k = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  o_ref[...] = x_ref[...] + (i * 100 + j * 10 + k).astype(jnp.float32)


def grid_3d(x):
  spec = pl.BlockSpec((1, 8, 128), lambda i, j, k: (i, j, k))
  return pallas_cpu.pallas_call(
      pid_kernel, out_shape=jax.ShapeDtypeStruct((2, 24, 512), jnp.float32),
      grid=(2, 3, 4), in_specs=[spec], out_specs=spec, backend="cpu")(x)


# A (2, 3, 4) grid is a perfect nest of three loops from 0 with step 1,
# the first grid dimension outermost (row-major, last dimension fastest, as
# on TPU).  Each program_id is its loop's IV cast to i32.
# CHECK-LABEL: TEST: test_3d_grid_loop_nest
# CHECK-DAG: %[[C0:.*]] = arith.constant 0 : index
# CHECK-DAG: %[[C1:.*]] = arith.constant 1 : index
# CHECK-DAG: %[[C2:.*]] = arith.constant 2 : index
# CHECK-DAG: %[[C3:.*]] = arith.constant 3 : index
# CHECK-DAG: %[[C4:.*]] = arith.constant 4 : index
# CHECK: scf.for %[[I:.*]] = %[[C0]] to %[[C2]] step %[[C1]] {
# CHECK-NEXT: scf.for %[[J:.*]] = %[[C0]] to %[[C3]] step %[[C1]] {
# CHECK-NEXT: scf.for %[[K:.*]] = %[[C0]] to %[[C4]] step %[[C1]] {
# CHECK-NOT: scf.for
# The body: program ids, then the sum that becomes the scalar operand of
# the elementwise op.
# CHECK: %[[PI:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK: %[[PJ:.*]] = arith.index_cast %[[J]] : index to i32
# CHECK: %[[PK:.*]] = arith.index_cast %[[K]] : index to i32
# CHECK: %[[SUM:.*]] = arith.sitofp %{{.*}} : i32 to f32
# CHECK: linalg.generic
# CHECK: arith.addf %{{.*}}, %[[SUM]] : f32
@run_test
def test_3d_grid_loop_nest():
  print(lower_text(grid_3d, jnp.zeros((2, 24, 512), jnp.float32),
                   stage="canonical"))


# Before canonicalization the IVs are cast to i32 once for the index maps
# (which receive the grid indices as i32 scalars), and program_id casts
# again where the kernel asks for it.
# CHECK-LABEL: TEST: test_program_id_is_index_cast
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: scf.for %[[K:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NEXT: %{{.*}} = arith.index_cast %[[I]] : index to i32
# CHECK-NEXT: %{{.*}} = arith.index_cast %[[J]] : index to i32
# CHECK-NEXT: %{{.*}} = arith.index_cast %[[K]] : index to i32
# CHECK: memref.subview
# CHECK: %[[PI:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK: %[[PJ:.*]] = arith.index_cast %[[J]] : index to i32
# CHECK: %[[PK:.*]] = arith.index_cast %[[K]] : index to i32
# CHECK: %[[I100:.*]] = arith.muli %[[PI]], %{{.*}} : i32
# CHECK: %[[J10:.*]] = arith.muli %[[PJ]], %{{.*}} : i32
# CHECK: %[[IJ:.*]] = arith.addi %[[I100]], %[[J10]] : i32
# CHECK: %[[IJK:.*]] = arith.addi %[[IJ]], %[[PK]] : i32
# CHECK: arith.sitofp %[[IJK]] : i32 to f32
@run_test
def test_program_id_is_index_cast():
  print(lower_text(grid_3d, jnp.zeros((2, 24, 512), jnp.float32)))


def copy_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...]


# grid=() runs the body once: no loop at all.
# CHECK-LABEL: TEST: test_no_grid
# CHECK: func.func @pallas_cpu_entry(
# CHECK-NOT: scf.for
# CHECK: linalg.generic
# CHECK-NOT: scf.for
# CHECK: return
@run_test
def test_no_grid():
  def f(x):
    return pallas_cpu.pallas_call(
        copy_kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
        backend="cpu")(x)
  print(lower_text(f, jnp.zeros((8, 128), jnp.float32), stage="canonical"))
