# RUN: %PYTHON %s | FileCheck %s
"""The entry function of a kernel module and the module's attributes."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test

X = jnp.zeros((16, 128), jnp.float32)


def add_kernel(x_ref, y_ref, o_ref):
  o_ref[...] = x_ref[...] + y_ref[...]


def add(x, y, **kwargs):
  return pallas_cpu.pallas_call(
      add_kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      grid=(2,), in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))] * 2,
      out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)), backend="cpu",
      **kwargs)(x, y)


# The runtime context pointer first, then the [lo, hi) range of the grid
# dimension that is split across threads, then one "hbm" memref per XLA
# buffer: the inputs, then the output.  The module carries the kernel's name
# (the kernel function's), the LLVM optimisation level -- by default 0 for a
# kernel this small (lowering/cost.py), 3 for a large one -- and the names
# of the kernel's semaphores (none here, for runtime messages); the runtime
# functions the kernel calls are declared in it.
# CHECK-LABEL: TEST: test_entry_signature
# CHECK: module attributes {{{.*}}pallas_cpu.kernel_name = "add_kernel"
# CHECK-SAME: pallas_cpu.opt_level = 0 : i32
# (The semaphore names are a module attribute of their own or an entry of
# the pallas_cpu.runtime_info JSON string: either spelling matches.)
# CHECK-SAME: semaphore_names{{[^[]*}}[]
# CHECK-DAG: func.func private @pallas_cpu_rt_block_out_of_bounds(!llvm.ptr, i64, i64, i64, i64, i64, i64)
# CHECK-DAG: func.func private @pallas_cpu_rt_output_block_changed(!llvm.ptr, i64, i64, i64, i64)
# (Arguments are captured with [^:]+ so that a capture is one name.)
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]+]]: !llvm.ptr, %[[LO:[^:]+]]: i64, %[[HI:[^:]+]]: i64, %[[X:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[Y:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}) attributes {llvm.emit_c_interface, passthrough = {{\[\["prefer-vector-width", "512"\]\]}}}
# The operands are viewed through a strided layout with a dynamic offset.
# CHECK-DAG: memref.cast %[[X]] : memref<16x128xf32, "hbm"> to memref<16x128xf32, strided<[128, 1], offset: ?>, "hbm">
# CHECK-DAG: memref.cast %[[Y]] : memref<16x128xf32, "hbm"> to memref<16x128xf32, strided<[128, 1], offset: ?>, "hbm">
# CHECK-DAG: memref.cast %[[O]] : memref<16x128xf32, "hbm"> to memref<16x128xf32, strided<[128, 1], offset: ?>, "hbm">
# No grid dimension is parallel: the grid loop covers the whole grid and lo
# and hi are not used.
# CHECK-NOT: %[[LO]]{{[^0-9]}}
# CHECK-NOT: %[[HI]]{{[^0-9]}}
# CHECK: return
@run_test
def test_entry_signature():
  print(lower_text(add, X, X))


# pallas_call's name= and CompilerParams(opt_level=) land in the module
# attributes (which the native-code cache fingerprints).
# CHECK-LABEL: TEST: test_name_and_opt_level
# CHECK: module attributes {{{.*}}pallas_cpu.kernel_name = "my_add"
# CHECK-SAME: pallas_cpu.opt_level = 1 : i32
# CHECK: func.func @pallas_cpu_entry(
@run_test
def test_name_and_opt_level():
  print(lower_text(lambda x, y: add(
      x, y, name="my_add",
      compiler_params=pallas_cpu.CompilerParams(opt_level=1)), X, X))


# A parallel grid dimension is split across threads: each call of the entry
# runs the grid loop over [lo, hi) only.
# CHECK-LABEL: TEST: test_parallel_dim_runs_from_lo_to_hi
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %[[LO:[^:]+]]: i64, %[[HI:[^:]+]]: i64,
# CHECK-DAG: %[[LO_IDX:.*]] = arith.index_cast %[[LO]] : i64 to index
# CHECK-DAG: %[[HI_IDX:.*]] = arith.index_cast %[[HI]] : i64 to index
# CHECK: scf.for %[[I:.*]] = %[[LO_IDX]] to %[[HI_IDX]] step %{{.*}} {
# CHECK: memref.subview %{{.*}}[%{{.*}}, 0] [8, 128] [1, 1]
# CHECK: return
@run_test
def test_parallel_dim_runs_from_lo_to_hi():
  print(lower_text(lambda x, y: add(
      x, y, compiler_params=pallas_cpu.CompilerParams(
          dimension_semantics=("parallel",))), X, X, stage="canonical"))


# Under vmap the batch dimension becomes a leading grid dimension, which is
# the one split across threads; the kernel's own grid dimension keeps its
# full range.
# CHECK-LABEL: TEST: test_vmapped_dim_runs_from_lo_to_hi
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %[[LO:[^:]+]]: i64, %[[HI:[^:]+]]: i64, %{{[^:]+}}: memref<3x16x128xf32, "hbm">{{( \{llvm.noalias\})?}},
# CHECK-DAG: %[[C0:.*]] = arith.constant 0 : index
# CHECK-DAG: %[[C2:.*]] = arith.constant 2 : index
# CHECK-DAG: %[[LO_IDX:.*]] = arith.index_cast %[[LO]] : i64 to index
# CHECK-DAG: %[[HI_IDX:.*]] = arith.index_cast %[[HI]] : i64 to index
# CHECK: scf.for %[[B:.*]] = %[[LO_IDX]] to %[[HI_IDX]] step %{{.*}} {
# CHECK-NEXT: scf.for %[[I:.*]] = %[[C0]] to %[[C2]] step %{{.*}} {
# CHECK: memref.subview %{{.*}}[%[[B]], %{{.*}}, 0] [1, 8, 128] [1, 1, 1]
# CHECK: return
@run_test
def test_vmapped_dim_runs_from_lo_to_hi():
  xs = jnp.zeros((3, 16, 128), jnp.float32)
  print(lower_text(jax.vmap(add), xs, xs, stage="canonical"))


def gather_kernel(idx_ref, x_ref, o_ref):
  o_ref[...] = x_ref[...] + idx_ref[0].astype(jnp.float32)


def gather(idx, x):
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(2,),
      in_specs=[pl.BlockSpec((8, 128), lambda i, idx: (idx[i], 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i, idx: (i, 0)))
  return pallas_cpu.pallas_call(
      gather_kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      grid_spec=grid_spec, backend="cpu")(idx, x)


# Scalar prefetch operands come first and live in "smem"; the index map
# reads them with memref.load before the block is opened, and so does the
# body.
# CHECK-LABEL: TEST: test_scalar_prefetch_in_smem
# CHECK: func.func @pallas_cpu_entry(%[[RT:[^:]+]]: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[IDX:[^:]+]]: memref<2xi32, "smem">{{( \{llvm.noalias\})?}}, %[[X:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}) attributes {llvm.emit_c_interface, passthrough = {{\[\["prefer-vector-width", "512"\]\]}}}
# CHECK: %[[IDX_VIEW:.*]] = memref.cast %[[IDX]] : memref<2xi32, "smem"> to memref<2xi32, strided<[1], offset: ?>, "smem">
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[I32:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK: %[[AT:.*]] = arith.index_cast %[[I32]] : i32 to index
# (idx[i] is a traced index: its bounds check and clamping are in
# bounds_check.py.)
# CHECK: %[[ELT:.*]] = memref.subview %[[IDX_VIEW]][%{{.*}}] [1] [1] : memref<2xi32, strided<[1], offset: ?>, "smem"> to memref<i32, strided<[], offset: ?>, "smem">
# CHECK: %[[BLOCK_IDX:.*]] = memref.load %[[ELT]][] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK: %[[ROW:.*]] = arith.index_cast %[[BLOCK_IDX]] : i32 to index
# CHECK: arith.muli %[[ROW]], %{{.*}} : index
# CHECK: memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK: linalg.generic
@run_test
def test_scalar_prefetch_in_smem():
  print(lower_text(gather, jnp.zeros((2,), jnp.int32), X))
