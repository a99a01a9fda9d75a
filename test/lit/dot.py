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
from lit_helpers import lower_text, run_test


def whole(kernel, out_shape, dtype=jnp.float32):
  def f(*args):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(out_shape, dtype),
        backend="cpu")(*args)
  return f


def matmul(x_ref, y_ref, o_ref):
  o_ref[...] = jnp.dot(x_ref[...], y_ref[...])


# CHECK-LABEL: TEST: test_nn
# CHECK-DAG: #[[LHS:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
# CHECK-DAG: #[[RHS:.*]] = affine_map<(d0, d1, d2) -> (d2, d1)>
# CHECK-DAG: #[[OUT:.*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
# CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
# CHECK: %[[ACC:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x16xf32, "vmem">
# CHECK: linalg.fill ins(%[[ZERO]] : f32) outs(%[[ACC]] : memref<8x16xf32, "vmem">)
# CHECK-NEXT: linalg.generic {indexing_maps = [#[[LHS]], #[[RHS]], #[[OUT]]], iterator_types = ["parallel", "parallel", "reduction"]} {{.*}} outs(%[[ACC]] : memref<8x16xf32, "vmem">)
# CHECK-NEXT: ^bb0(%[[A:.*]]: f32, %[[B:.*]]: f32, %[[C:.*]]: f32):
# CHECK-NEXT: %[[P:.*]] = arith.mulf %[[A]], %[[B]] : f32
# CHECK-NEXT: %[[S:.*]] = arith.addf %[[C]], %[[P]] : f32
# CHECK-NEXT: linalg.yield %[[S]] : f32
@run_test
def test_nn():
  print(lower_text(whole(matmul, (8, 16)), jnp.zeros((8, 32)),
                   jnp.zeros((32, 16)), stage="canonical"))


def qk(q_ref, k_ref, o_ref):
  o_ref[...] = jnp.dot(q_ref[...], k_ref[...].T,
                       preferred_element_type=jnp.float32)


# q @ k.T: no transposed copy; the rhs map reads k[j, k] directly.  bf16
# operands are widened in the body and accumulate in f32.
# CHECK-LABEL: TEST: test_nt_bf16_to_f32
# CHECK-DAG: #[[LHS:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
# CHECK-DAG: #[[RHS:.*]] = affine_map<(d0, d1, d2) -> (d1, d2)>
# CHECK-NOT: memref.alloc() {{.*}} : memref<128x16xbf16
# CHECK: linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : memref<8x16xf32, "vmem">)
# CHECK-NEXT: linalg.generic {indexing_maps = [#[[LHS]], #[[RHS]], #{{.*}}], iterator_types = ["parallel", "parallel", "reduction"]}
# CHECK-NEXT: ^bb0(%[[A:.*]]: bf16, %[[B:.*]]: bf16, %[[C:.*]]: f32):
# CHECK-NEXT: %[[AW:.*]] = arith.extf %[[A]] : bf16 to f32
# CHECK-NEXT: %[[BW:.*]] = arith.extf %[[B]] : bf16 to f32
# CHECK-NEXT: %[[P:.*]] = arith.mulf %[[AW]], %[[BW]] : f32
# CHECK-NEXT: arith.addf %[[C]], %[[P]] : f32
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


# Batch dims lead the iteration space.
# CHECK-LABEL: TEST: test_batched
# CHECK-DAG: #[[LHS:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>
# CHECK-DAG: #[[RHS:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>
# CHECK-DAG: #[[OUT:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>
# CHECK: linalg.generic {indexing_maps = [#[[LHS]], #[[RHS]], #[[OUT]]], iterator_types = ["parallel", "parallel", "parallel", "reduction"]}
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
