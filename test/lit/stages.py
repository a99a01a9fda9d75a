# RUN: %PYTHON %s | FileCheck %s
"""The compile pipeline's stages: kernel -> canonical -> loops -> flat ->
llvm, each printed by Lowered.as_text(stage)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import run_test


# log1p is a direct call to libm's log1pf from the start (MLIR's
# math-to-llvm would expand it imprecisely).  (Not exp: f32 exp is expanded
# into vectorizable arithmetic when lowered, rules/approx.py.)
def log1p_kernel(x_ref, y_ref, o_ref):
  o_ref[...] = jnp.log1p(x_ref[...] * 2.0 + y_ref[...])


def log1p_call(x, y):
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  return pallas_cpu.pallas_call(
      log1p_kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      grid=(2,), in_specs=[spec] * 2, out_specs=spec, backend="cpu")(x, y)


def scale_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...] * 2.0


def edge_call(x):
  spec = pl.BlockSpec((32, 128), lambda i, j: (i, j))
  return pallas_cpu.pallas_call(
      scale_kernel, out_shape=jax.ShapeDtypeStruct((100, 130), jnp.float32),
      grid=(4, 2), in_specs=[spec], out_specs=spec, backend="cpu")(x)


X = jnp.zeros((16, 128), jnp.float32)
LOWERED = pallas_cpu.lower(log1p_call, X, X)
EDGE = pallas_cpu.lower(edge_call, jnp.zeros((100, 130), jnp.float32))


# CHECK-LABEL: TEST: test_stage_names
# CHECK-NEXT: kernel canonical loops flat llvm
# CHECK-NEXT: ValueError: unknown stage 'native'; stages: ['kernel', 'canonical', 'loops', 'flat', 'llvm', 'llvm-ir', 'opt', 'asm']
@run_test
def test_stage_names():
  print(*LOWERED.kernels[0].stages)
  try:
    LOWERED.as_text("native")
  except ValueError as e:
    print(f"ValueError: {e}")


# "loops": convert-linalg-to-loops turned the fused generic into a 2-D loop
# nest of scalar loads, the fused body and one store, inside the grid loop.
# CHECK-LABEL: TEST: test_loops_stage
# CHECK-NOT: linalg.
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %{{[^:]+}}: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}}, %[[O:[^:]+]]: memref<16x128xf32, "hbm">{{( \{llvm.noalias\})?}})
# CHECK-NOT: linalg.
# CHECK: scf.for %{{.*}} = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NOT: linalg.
# The output's window, seen in "vmem", is what the element loops store to.
# CHECK: %[[OB:.*]] = memref.subview %[[O]]
# CHECK-NEXT: %[[OV:.*]] = memref.memory_space_cast %[[OB]] : {{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK-NOT: linalg.
# CHECK: scf.for %[[R:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NEXT: scf.for %[[C:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NEXT: %[[X:.*]] = memref.load %{{.*}}[%[[R]], %[[C]]] : memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK-NEXT: %[[Y:.*]] = memref.load %{{.*}}[%[[R]], %[[C]]] : memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK-NEXT: %[[X2:.*]] = arith.mulf %[[X]], %{{.*}} : f32
# CHECK-NEXT: %[[SUM:.*]] = arith.addf %[[X2]], %[[Y]] : f32
# CHECK-NEXT: %[[L:.*]] = func.call @log1pf(%[[SUM]]) : (f32) -> f32
# CHECK-NEXT: memref.store %[[L]], %[[OV]][%[[R]], %[[C]]] : memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK-NOT: linalg.
# CHECK: return
@run_test
def test_loops_stage():
  print(LOWERED.as_text("loops"))


# The edge-block kernel's copies are loops too (a position-wise kernel:
# no fill, grid.padding_plan).
# CHECK-LABEL: TEST: test_loops_stage_edge_blocks
# CHECK-NOT: linalg.
# CHECK: memref.store %{{.*}}, %{{.*}}[%{{.*}}, %{{.*}}] : memref<?x?xf32, strided<[128, 1]>, "vmem">
# CHECK-NOT: linalg.
# CHECK: return
@run_test
def test_loops_stage_edge_blocks():
  print(EDGE.as_text("loops"))


# "flat": no memory spaces left; the memory_space_casts are gone and the
# views are used directly.
# CHECK-LABEL: TEST: test_flat_stage
# CHECK-NOT: "hbm"
# CHECK-NOT: "vmem"
# CHECK-NOT: memory_space_cast
# CHECK: func.func @pallas_cpu_entry(%{{[^:]+}}: !llvm.ptr, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %[[X:[^:]+]]: memref<16x128xf32>{{( \{llvm.noalias\})?}}, %{{[^:]+}}: memref<16x128xf32>{{( \{llvm.noalias\})?}}, %{{[^:]+}}: memref<16x128xf32>{{( \{llvm.noalias\})?}})
# CHECK-NOT: "hbm"
# CHECK-NOT: "vmem"
# CHECK-NOT: memory_space_cast
# CHECK: %[[XB:.*]] = memref.subview %[[X]][%{{.*}}, 0] [8, 128] [1, 1] : memref<16x128xf32> to memref<8x128xf32, strided<[128, 1], offset: ?>>
# CHECK-NOT: "hbm"
# CHECK-NOT: "vmem"
# CHECK-NOT: memory_space_cast
# CHECK: memref.load %[[XB]]
# CHECK-NOT: "hbm"
# CHECK-NOT: "vmem"
# CHECK-NOT: memory_space_cast
# CHECK: return
@run_test
def test_flat_stage():
  print(LOWERED.as_text("flat"))


# The padded buffers of edge blocks are plain host allocations.
# CHECK-LABEL: TEST: test_flat_stage_edge_blocks
# CHECK-NOT: "vmem"
# CHECK: %[[PAD:.*]] = memref.alloc() {alignment = 64 : i64} : memref<32x128xf32>
# CHECK-NOT: "vmem"
# CHECK: memref.dealloc %[[PAD]] : memref<32x128xf32>
@run_test
def test_flat_stage_edge_blocks():
  print(EDGE.as_text("flat"))


# "llvm": the LLVM dialect only.  The entry takes the runtime pointer, the
# [lo, hi) range of the threaded grid dimension and each memref expanded
# into (allocated ptr, aligned ptr, offset, sizes..., strides...); the
# emit_c_interface wrapper _mlir_ciface_pallas_cpu_entry takes the runtime
# pointer, lo, hi and one pointer per memref descriptor and calls it.
# log1pf is an external LLVM function.
# CHECK-LABEL: TEST: test_llvm_stage
# CHECK-NOT: {{ (func|scf|cf|memref|arith|math|linalg)\.}}
# CHECK: module attributes {{{.*}}pallas_cpu.kernel_name = "log1p_kernel"
# CHECK-SAME: pallas_cpu.opt_level = 0 : i32
# CHECK-DAG: llvm.func @log1pf(f32) -> f32
# CHECK-DAG: llvm.func @pallas_cpu_rt_block_out_of_bounds(!llvm.ptr, i64, i64, i64, i64, i64, i64)
# (The argument lists are long and repetitive: [^:]+ keeps captures to one
# name.)
# CHECK: llvm.func @pallas_cpu_entry(%[[RT:[^:]+]]: !llvm.ptr{{( \{llvm.noalias\})?}}, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: !llvm.ptr{{( \{llvm.noalias\})?}}, %{{[^:]+}}: !llvm.ptr{{( \{llvm.noalias\})?}}, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: i64, %{{[^:]+}}: !llvm.ptr{{( \{llvm.noalias\})?}},
# CHECK-SAME: attributes {llvm.emit_c_interface, passthrough = {{\[\["prefer-vector-width", "512"\]\]}}}
# CHECK: llvm.call @pallas_cpu_rt_block_out_of_bounds(%[[RT]],
# CHECK: llvm.fmul
# CHECK-NEXT: llvm.fadd
# CHECK-NEXT: llvm.call @log1pf(%{{.*}}) : (f32) -> f32
# CHECK: llvm.return
# CHECK: llvm.func @_mlir_ciface_pallas_cpu_entry(%[[CRT:[^:]+]]: !llvm.ptr{{( \{llvm.noalias\})?}}, %[[LO:[^:]+]]: i64, %[[HI:[^:]+]]: i64, %[[D0:[^:]+]]: !llvm.ptr{{( \{llvm.noalias\})?}}, %[[D1:[^:]+]]: !llvm.ptr{{( \{llvm.noalias\})?}}, %[[D2:[^:]+]]: !llvm.ptr{{( \{llvm.noalias\})?}}) attributes {llvm.emit_c_interface, passthrough = {{\[\["prefer-vector-width", "512"\]\]}}}
# CHECK: llvm.load %[[D0]] : !llvm.ptr -> !llvm.struct<(ptr, ptr, i64, array<2 x i64>, array<2 x i64>)>
# CHECK: llvm.load %[[D1]] : !llvm.ptr -> !llvm.struct<(ptr, ptr, i64, array<2 x i64>, array<2 x i64>)>
# CHECK: llvm.load %[[D2]] : !llvm.ptr -> !llvm.struct<(ptr, ptr, i64, array<2 x i64>, array<2 x i64>)>
# CHECK: llvm.call @pallas_cpu_entry(%[[CRT]], %[[LO]], %[[HI]],
# CHECK-NEXT: llvm.return
# CHECK-NOT: {{ (func|scf|cf|memref|arith|math|linalg)\.}}
@run_test
def test_llvm_stage():
  print(LOWERED.as_text("llvm"))


# The native stages are text too: the packed entry the runtime calls is in
# the LLVM IR, and the assembly defines it.
# CHECK-LABEL: TEST: test_native_stages
# CHECK: define void @pallas_cpu_entry_packed(ptr
# CHECK: call void @_mlir_ciface_pallas_cpu_entry(
# CHECK: pallas_cpu_entry_packed:
@run_test
def test_native_stages():
  print(LOWERED.as_text("llvm-ir"))
  print(LOWERED.as_text("asm"))
