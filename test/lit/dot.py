# RUN: %PYTHON %s | FileCheck %s
"""dot_general: a zero-filled accumulator and one linalg.generic over
(batch, lhs free, rhs free, contracting) with reduction iterators on the
contracting dims; transposed operands are read through their indexing map."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax import lax

import pallas_cpu
from lit_helpers import lower_text, run_test, whole


def matmul(x_ref, y_ref, o_ref):
  o_ref[...] = jnp.dot(x_ref[...], y_ref[...])


# A matrix product calls the runtime's microkernel on in-place views: the
# accumulator is written by the call, no fill, no generic.
# CHECK-LABEL: TEST: test_nn
# CHECK-DAG: func.func private @pallas_cpu_rt_matmul_f32_f32(!llvm.ptr, memref<?x?xf32, strided<[?, ?], offset: ?>>, memref<?x?xf32, strided<[?, ?], offset: ?>>, memref<?x?xf32, strided<[?, ?], offset: ?>>, i64)
# CHECK: %[[ACC:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x16xf32, "vmem">
# CHECK-NOT: linalg.fill {{.*}} outs(%[[ACC]]
# CHECK: %[[A:.*]] = memref.cast %{{.*}} : memref<8x32xf32, {{.*}}> to memref<?x?xf32, strided<[?, ?], offset: ?>>
# CHECK: %[[B:.*]] = memref.cast %{{.*}} : memref<32x16xf32, {{.*}}> to memref<?x?xf32, strided<[?, ?], offset: ?>>
# CHECK: %[[C:.*]] = memref.cast %{{.*}} : memref<8x16xf32, {{.*}}> to memref<?x?xf32, strided<[?, ?], offset: ?>>
# CHECK: call @pallas_cpu_rt_matmul_f32_f32(%{{.*}}, %[[A]], %[[B]], %[[C]], %{{.*}})
# CHECK-NOT: iterator_types = ["parallel", "parallel", "reduction"]
@run_test
def test_nn():
  print(lower_text(whole(matmul, (8, 16)), jnp.zeros((8, 32)),
                   jnp.zeros((32, 16)), stage="canonical"))


def qk(q_ref, k_ref, o_ref):
  o_ref[...] = jnp.dot(q_ref[...], k_ref[...].T,
                       preferred_element_type=jnp.float32)


# q @ k.T: no transposed copy; the microkernel reads k through a transposed
# view (memref.transpose: swapped strides).  bf16 operands, f32 accumulation.
# CHECK-LABEL: TEST: test_nt_bf16_to_f32
# CHECK-NOT: memref.alloc() {{.*}} : memref<128x16xbf16
# CHECK: %[[KT:.*]] = memref.transpose %{{.*}} (d0, d1) -> (d1, d0) : memref<16x128xbf16, strided<[128, 1], offset: ?>{{.*}}> to memref<128x16xbf16, strided<[1, 128], offset: ?>
# CHECK: call @pallas_cpu_rt_matmul_bf16_bf16(
@run_test
def test_nt_bf16_to_f32():
  print(lower_text(whole(qk, (8, 16)), jnp.zeros((8, 128), jnp.bfloat16),
                   jnp.zeros((16, 128), jnp.bfloat16), stage="canonical"))


def int8_dot(x_ref, y_ref, o_ref):
  o_ref[...] = lax.dot_general(x_ref[...], y_ref[...], (((1,), (0,)), ((), ())),
                               preferred_element_type=jnp.int32)


# int8 x int8 -> int32: sign-extended, accumulated in i32.
# CHECK-LABEL: TEST: test_int8_to_int32
# CHECK: linalg.fill ins(%{{.*}} : i32)
# CHECK-NEXT: linalg.generic
# CHECK-NEXT: ^bb0(%[[A:.*]]: i8, %[[B:.*]]: i8, %[[C:.*]]: i32):
# CHECK-NEXT: %[[AW:.*]] = arith.extsi %[[A]] : i8 to i32
# CHECK-NEXT: %[[BW:.*]] = arith.extsi %[[B]] : i8 to i32
# CHECK-NEXT: %[[P:.*]] = arith.muli %[[AW]], %[[BW]] : i32
# CHECK-NEXT: arith.addi %[[C]], %[[P]] : i32
@run_test
def test_int8_to_int32():
  print(lower_text(whole(int8_dot, (8, 16), jnp.int32),
                   jnp.zeros((8, 64), jnp.int8), jnp.zeros((64, 16), jnp.int8),
                   stage="canonical"))


def batched(q_ref, k_ref, o_ref):
  o_ref[...] = jnp.einsum("bqd,bkd->bqk", q_ref[...], k_ref[...])


# Batched: a loop over the batch dimension, one microkernel call per batch
# element on rank-reduced views.
# CHECK-LABEL: TEST: test_batched
# CHECK: scf.for %[[B:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: memref.subview %{{.*}}[%[[B]], 0, 0] [1, 8, 32] [1, 1, 1]
# CHECK: call @pallas_cpu_rt_matmul_f32_f32(
@run_test
def test_batched():
  print(lower_text(whole(batched, (2, 8, 16)), jnp.zeros((2, 8, 32)),
                   jnp.zeros((2, 16, 32)), stage="canonical"))


def transpose(x_ref, o_ref):
  o_ref[...] = x_ref[...].T


# transpose is a copy with a permuted input map, straight into the output.
# CHECK-LABEL: TEST: test_transpose
# CHECK-DAG: #[[PERM:.*]] = affine_map<(d0, d1) -> (d1, d0)>
# CHECK-DAG: #[[ID:.*]] = affine_map<(d0, d1) -> (d0, d1)>
# CHECK-NOT: memref.alloc() {{.*}} : memref<128x8xf32
# CHECK: linalg.generic {indexing_maps = [#[[PERM]], #[[ID]]], iterator_types = ["parallel", "parallel"]} ins(%{{.*}} : memref<8x128xf32, {{.*}}>) outs(%{{.*}} : memref<128x8xf32, {{.*}}>)
# CHECK-NEXT: ^bb0(%[[IN:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: linalg.yield %[[IN]] : f32
@run_test
def test_transpose():
  print(lower_text(whole(transpose, (128, 8)), jnp.zeros((8, 128)),
                   stage="canonical"))


def matvec(x_ref, v_ref, o_ref):
  o_ref[...] = jnp.dot(x_ref[...], v_ref[...])


# Matrix-vector products keep the generic loop nest (too little work for the
# microkernel's packing).
# CHECK-LABEL: TEST: test_matvec_generic
# CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
# CHECK-NOT: pallas_cpu_rt_matmul
@run_test
def test_matvec_generic():
  print(lower_text(whole(matvec, (8,)), jnp.zeros((8, 32)), jnp.zeros((32,)),
                   stage="canonical"))


def tiled(x_ref, y_ref, o_ref, acc_ref):
  acc_ref[...] += jnp.dot(x_ref[...], y_ref[...])
  o_ref[...] = acc_ref[...]


def tiled_call(x, y):
  from jax.experimental.pallas import tpu as pltpu
  return pallas_cpu.pallas_call(
      tiled, out_shape=jax.ShapeDtypeStruct((8, 16), jnp.float32),
      scratch_shapes=[pltpu.VMEM((8, 16), jnp.float32)], backend="cpu")(x, y)


# acc_ref[...] += dot(x, y) is one microkernel call that accumulates into the
# scratch accumulator (accumulate = 1): no product temporary, no add pass.
# CHECK-LABEL: TEST: test_accumulate_fused
# CHECK: %[[ONE:.*]] = arith.constant 1 : i64
# CHECK: %[[ACC:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x16xf32, "vmem">
# CHECK-NOT: memref.alloc() {alignment = 64 : i64} : memref<8x16xf32
# CHECK: %[[V:.*]] = memref.cast %[[ACC]] : memref<8x16xf32, "vmem"> to memref<8x16xf32, strided<[16, 1], offset: ?>, "vmem">
# CHECK: %[[S:.*]] = memref.memory_space_cast %[[V]]
# CHECK: %[[C:.*]] = memref.cast %[[S]]
# CHECK: call @pallas_cpu_rt_matmul_f32_f32(%{{.*}}, %{{.*}}, %{{.*}}, %[[C]], %[[ONE]])
# CHECK-NOT: arith.addf
@run_test
def test_accumulate_fused():
  print(lower_text(tiled_call, jnp.zeros((8, 32)), jnp.zeros((32, 16)),
                   stage="canonical"))


def tiled_product_first(x_ref, y_ref, o_ref, acc_ref):
  d = jnp.dot(x_ref[...], y_ref[...])
  acc_ref[...] += d
  o_ref[...] = acc_ref[...]


def tiled_product_first_call(x, y):
  from jax.experimental.pallas import tpu as pltpu
  return pallas_cpu.pallas_call(
      tiled_product_first,
      out_shape=jax.ShapeDtypeStruct((8, 16), jnp.float32),
      scratch_shapes=[pltpu.VMEM((8, 16), jnp.float32)], backend="cpu")(x, y)


# The same when the product is computed before the accumulator is read.
# CHECK-LABEL: TEST: test_accumulate_fused_product_first
# CHECK: %[[ONE:.*]] = arith.constant 1 : i64
# CHECK: call @pallas_cpu_rt_matmul_f32_f32(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[ONE]])
# CHECK-NOT: arith.addf
@run_test
def test_accumulate_fused_product_first():
  print(lower_text(tiled_product_first_call, jnp.zeros((8, 32)),
                   jnp.zeros((32, 16)), stage="canonical"))
