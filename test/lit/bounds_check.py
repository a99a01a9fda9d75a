# RUN: %PYTHON %s | FileCheck %s
"""Block index maps are checked at run time: a window that does not start
inside its array calls @pallas_cpu_rt_block_out_of_bounds and the grid
point is skipped.  Dynamic ref indices are checked too: a slice that leaves
its ref calls @pallas_cpu_rt_index_out_of_bounds_at and its start is clamped
into the ref."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test


def copy_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...]


def copy(x):
  return pallas_cpu.pallas_call(
      copy_kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      grid=(2,), in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)), backend="cpu")(x)


# As lowered: every dimension of every block operand whose start is not a
# compile-time constant is checked, start < 0 || start >= array size, and
# the call reports (runtime context, site naming the operand, dimension,
# start, block size, array size, grid point), after the block index
# (@pallas_cpu_rt_block_index, one call per dimension).  Constant starts inside the array (the column block 0
# here) need no check.
# CHECK-LABEL: TEST: test_every_dimension_is_checked
# CHECK-DAG: func.func private @pallas_cpu_rt_block_out_of_bounds(!llvm.ptr, i64, i64, i64, i64, i64, i64)
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]+]]: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %{{[^:]+}}: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}})
# CHECK: scf.for
#
# Operand 0 (x), dimension 0: a window of 8 rows out of 16.
# CHECK: %[[ROW:.*]] = arith.muli %{{.*}}, %{{.*}} : index
# CHECK-DAG: %[[C16:.*]] = arith.constant 16 : index
# CHECK-DAG: %[[C0:.*]] = arith.constant 0 : index
# CHECK: %[[LT:.*]] = arith.cmpi slt, %[[ROW]], %[[C0]] : index
# CHECK-NEXT: %[[GE:.*]] = arith.cmpi sge, %[[ROW]], %[[C16]] : index
# CHECK-NEXT: %[[BAD0:.*]] = arith.ori %[[LT]], %[[GE]] : i1
# CHECK-NEXT: scf.if %[[BAD0]] {
# CHECK: func.call @pallas_cpu_rt_block_index(%[[RT]]
# CHECK-DAG: %[[START:.*]] = arith.index_cast %[[ROW]] : index to i64
# CHECK-DAG: %[[SIZE:.*]] = arith.constant 8 : i64
# CHECK-DAG: %[[LIMIT:.*]] = arith.constant 16 : i64
# CHECK: func.call @pallas_cpu_rt_block_out_of_bounds(%[[RT]], %{{.*}}, %{{.*}}, %[[START]], %[[SIZE]], %[[LIMIT]], %{{.*}}) : (!llvm.ptr, i64, i64, i64, i64, i64, i64) -> ()
# CHECK-NEXT: }
# CHECK: %[[OK0:.*]] = arith.xori %[[BAD0]], %{{.*}} : i1
# Dimension 1 starts at the constant 0: no check, a static window offset.
# CHECK-NOT: arith.constant 128 : i64
#
# Operand 1 (the output) gets the same row check.
# CHECK: func.call @pallas_cpu_rt_block_out_of_bounds(%[[RT]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}})
# CHECK: %[[OK_O:.*]] = arith.xori %{{.*}}, %{{.*}} : i1
#
# The body runs only when every window is in bounds (the output's revisit
# tracking, block_views.py, may come before it).
# CHECK: %[[ALL_OK:.*]] = arith.andi %[[OK0]], %[[OK_O]] : i1
# CHECK: scf.if %[[ALL_OK]] {
# CHECK-NEXT: memref.subview %{{.*}}[%[[ROW]], 0] [8, 128] [1, 1]
# CHECK-NOT: func.call @pallas_cpu_rt_block_out_of_bounds
# CHECK: return
@run_test
def test_every_dimension_is_checked():
  print(lower_text(copy, jnp.zeros((16, 128), jnp.float32)))


# Checks of statically in-bounds starts fold away: only the row checks,
# which depend on the grid index, survive canonicalization.
# CHECK-LABEL: TEST: test_static_checks_fold
# CHECK-COUNT-2: func.call @pallas_cpu_rt_block_out_of_bounds
# CHECK-NOT: func.call @pallas_cpu_rt_block_out_of_bounds
# CHECK: return
@run_test
def test_static_checks_fold():
  print(lower_text(copy, jnp.zeros((16, 128), jnp.float32), stage="canonical"))


def gather_kernel(idx_ref, x_ref, o_ref):
  o_ref[...] = x_ref[...]


def gather(idx, x):
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(2,),
      in_specs=[pl.BlockSpec((8, 128), lambda i, idx: (idx[i], 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i, idx: (i, 0)))
  return pallas_cpu.pallas_call(
      gather_kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      grid_spec=grid_spec, backend="cpu")(idx, x)


# A data-dependent index map (scalar prefetch): the start comes from smem
# and is checked at run time.  Block operands are numbered without the
# scalar prefetch operands: x is block operand 0, the output 1.
# CHECK-LABEL: TEST: test_data_dependent_index_map
# CHECK-DAG: func.func private @pallas_cpu_rt_block_out_of_bounds(!llvm.ptr, i64, i64, i64, i64, i64, i64)
# CHECK-DAG: func.func private @pallas_cpu_rt_index_out_of_bounds_at(!llvm.ptr, i64, i64, i64, i64, i64, i64)
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]+]]: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[IDX:[^:]+]]: memref<2xi32, "smem">{{( \{llvm.noalias\})?}},
# CHECK-DAG: %[[I0:.*]] = arith.constant 0 : i64
# CHECK-DAG: %[[I1:.*]] = arith.constant 1 : i64
# CHECK-DAG: %[[I2:.*]] = arith.constant 2 : i64
# CHECK-DAG: %[[I8:.*]] = arith.constant 8 : i64
# CHECK-DAG: %[[I16:.*]] = arith.constant 16 : i64
# CHECK-DAG: %[[C0:.*]] = arith.constant 0 : index
# CHECK-DAG: %[[C1:.*]] = arith.constant 1 : index
# CHECK-DAG: %[[C8:.*]] = arith.constant 8 : index
# CHECK-DAG: %[[C16:.*]] = arith.constant 16 : index
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# idx[i] is itself a dynamic ref index: checked against [0, 2 - 1] (slice
# of size 1 in dimension 0 of a ref of 2), reported, then clamped.
# CHECK: %[[LT_I:.*]] = arith.cmpi slt, %[[I]], %[[C0]] : index
# CHECK-NEXT: %[[GT_I:.*]] = arith.cmpi sgt, %[[I]], %[[C1]] : index
# CHECK-NEXT: %[[BAD_I:.*]] = arith.ori %[[LT_I]], %[[GT_I]] : i1
# CHECK-NEXT: scf.if %[[BAD_I]] {
# CHECK: %[[I64:.*]] = arith.index_cast %[[I]] : index to i64
# CHECK: func.call @pallas_cpu_rt_index_out_of_bounds_at(%[[RT]], %{{.*}}, %[[I0]], %[[I64]], %[[I1]], %[[I2]], %{{.*}})
# CHECK-NEXT: }
# CHECK: %[[I_UP:.*]] = arith.maxsi %[[I]], %[[C0]] : index
# CHECK: %[[AT:.*]] = arith.minsi %[[I_UP]], %[[C1]] : index
# CHECK: %[[ELT:.*]] = memref.subview %[[IDX]][%[[AT]]] [1] [1]
# The block index read from smem gives the start of x's window.
# CHECK-NEXT: %[[BLOCK:.*]] = memref.load %[[ELT]][] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK-NEXT: %[[BLOCK_IDX:.*]] = arith.index_cast %[[BLOCK]] : i32 to index
# CHECK-NEXT: %[[START:.*]] = arith.muli %[[BLOCK_IDX]], %[[C8]] : index
# CHECK-NEXT: %[[LT:.*]] = arith.cmpi slt, %[[START]], %[[C0]] : index
# CHECK-NEXT: %[[GE:.*]] = arith.cmpi sge, %[[START]], %[[C16]] : index
# CHECK-NEXT: %[[BAD:.*]] = arith.ori %[[LT]], %[[GE]] : i1
# CHECK-NEXT: scf.if %[[BAD]] {
# CHECK: func.call @pallas_cpu_rt_block_index(%[[RT]], %[[I0]],
# CHECK: func.call @pallas_cpu_rt_block_out_of_bounds(%[[RT]], %{{.*}}, %[[I0]], %{{.*}}, %[[I8]], %[[I16]], %{{.*}})
# CHECK-NEXT: }
# CHECK-NEXT: %[[X_OK:.*]] = arith.xori %[[BAD]], %{{.*}} : i1
# CHECK: %[[OSTART:.*]] = arith.muli %[[I]], %[[C8]] : index
# CHECK: func.call @pallas_cpu_rt_block_out_of_bounds(%[[RT]], %{{.*}}, %[[I0]], %{{.*}}, %[[I8]], %[[I16]], %{{.*}})
# CHECK: %[[ALL_OK:.*]] = arith.andi %[[X_OK]], %{{.*}} : i1
# CHECK: scf.if %[[ALL_OK]] {
# CHECK-NEXT: memref.subview %{{.*}}[%[[START]], 0] [8, 128] [1, 1]
@run_test
def test_data_dependent_index_map():
  print(lower_text(gather, jnp.zeros((2,), jnp.int32),
                   jnp.zeros((16, 128), jnp.float32), stage="canonical"))


def dynamic_index_kernel(s_ref, x_ref, o_ref):
  o_ref[0:8, :] = x_ref[pl.ds(s_ref[0], 8), :]
  o_ref[8, :] = x_ref[s_ref[1], :]


def dynamic_index(s, x):
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(2,),
      in_specs=[pl.BlockSpec((32, 128), lambda i, s: (0, 0))],
      out_specs=pl.BlockSpec((16, 128), lambda i, s: (i, 0)))
  return pallas_cpu.pallas_call(
      dynamic_index_kernel,
      out_shape=jax.ShapeDtypeStruct((32, 128), jnp.float32),
      grid_spec=grid_spec, backend="cpu")(s, x)


# Ref indices traced from values: pl.ds(s[0], 8) must start in [0, 32 - 8],
# the integer index s[1] in [0, 31].  Out of range, the runtime is told
# (site, dimension, start, size, ref size, grid point) and the start is clamped so
# that the access stays inside the ref.  Static indices (s_ref[0],
# o_ref[0:8, :], o_ref[8, :]) need no check once canonicalized.
# CHECK-LABEL: TEST: test_dynamic_ref_indices
# CHECK-DAG: func.func private @pallas_cpu_rt_index_out_of_bounds_at(!llvm.ptr, i64, i64, i64, i64, i64, i64)
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]+]]: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[S:[^:]+]]: memref<2xi32, "smem">{{( \{llvm.noalias\})?}},
# CHECK-DAG: %[[DIM0:.*]] = arith.constant 0 : i64
# CHECK-DAG: %[[I1:.*]] = arith.constant 1 : i64
# CHECK-DAG: %[[I8:.*]] = arith.constant 8 : i64
# CHECK-DAG: %[[I32:.*]] = arith.constant 32 : i64
# CHECK-DAG: %[[C0:.*]] = arith.constant 0 : index
# CHECK-DAG: %[[C24:.*]] = arith.constant 24 : index
# CHECK-DAG: %[[C31:.*]] = arith.constant 31 : index
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NOT: @pallas_cpu_rt_index_out_of_bounds_at
#
# pl.ds(s[0], 8):
# CHECK: %[[S0_REF:.*]] = memref.subview %[[S]][0] [1] [1]
# CHECK-NEXT: %[[S0:.*]] = memref.load %[[S0_REF]][]
# CHECK-NEXT: %[[START:.*]] = arith.index_cast %[[S0]] : i32 to index
# CHECK-NEXT: %[[LT:.*]] = arith.cmpi slt, %[[START]], %[[C0]] : index
# CHECK-NEXT: %[[GT:.*]] = arith.cmpi sgt, %[[START]], %[[C24]] : index
# CHECK-NEXT: %[[BAD:.*]] = arith.ori %[[LT]], %[[GT]] : i1
# CHECK-NEXT: scf.if %[[BAD]] {
# CHECK: %[[START64:.*]] = arith.index_cast %[[START]] : index to i64
# CHECK: %[[STEP:.*]] = arith.index_cast %[[I]] : index to i64
# CHECK: func.call @pallas_cpu_rt_index_out_of_bounds_at(%[[RT]], %{{.*}}, %[[DIM0]], %[[START64]], %[[I8]], %[[I32]], %[[STEP]]) : (!llvm.ptr, i64, i64, i64, i64, i64, i64) -> ()
# CHECK-NEXT: }
# CHECK: %[[UP:.*]] = arith.maxsi %[[START]], %[[C0]] : index
# CHECK: %[[CLAMPED:.*]] = arith.minsi %[[UP]], %[[C24]] : index
# CHECK: memref.subview %{{.*}}[%[[CLAMPED]], 0] [8, 128] [1, 1]
# CHECK-NOT: @pallas_cpu_rt_index_out_of_bounds_at
# CHECK: linalg.generic
#
# x_ref[s[1], :]:
# CHECK: %[[S1_REF:.*]] = memref.subview %[[S]][1] [1] [1]
# CHECK-NEXT: %[[S1:.*]] = memref.load %[[S1_REF]][]
# CHECK-NEXT: %[[ROW:.*]] = arith.index_cast %[[S1]] : i32 to index
# CHECK-NEXT: %[[LT1:.*]] = arith.cmpi slt, %[[ROW]], %[[C0]] : index
# CHECK-NEXT: %[[GT1:.*]] = arith.cmpi sgt, %[[ROW]], %[[C31]] : index
# CHECK-NEXT: %[[BAD1:.*]] = arith.ori %[[LT1]], %[[GT1]] : i1
# CHECK-NEXT: scf.if %[[BAD1]] {
# CHECK: func.call @pallas_cpu_rt_index_out_of_bounds_at(%[[RT]], %{{.*}}, %[[DIM0]], %{{.*}}, %[[I1]], %[[I32]], %{{.*}})
# CHECK-NEXT: }
# CHECK: %[[UP1:.*]] = arith.maxsi %[[ROW]], %[[C0]] : index
# CHECK: %[[CLAMPED1:.*]] = arith.minsi %[[UP1]], %[[C31]] : index
# CHECK: memref.subview %{{.*}}[%[[CLAMPED1]], 0] [1, 128] [1, 1] : {{.*}} to memref<128xf32
# CHECK-NOT: @pallas_cpu_rt_index_out_of_bounds_at
# CHECK: memref.subview %{{.*}}[8, 0] [1, 128] [1, 1]
# CHECK-NOT: @pallas_cpu_rt_index_out_of_bounds_at
# CHECK: return
@run_test
def test_dynamic_ref_indices():
  print(lower_text(dynamic_index, jnp.zeros((2,), jnp.int32),
                   jnp.zeros((32, 128), jnp.float32), stage="canonical"))
