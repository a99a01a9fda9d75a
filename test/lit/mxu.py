# RUN: %PYTHON %s | FileCheck %s
"""The explicit MXU primitives (rules/mxu.py): the emulated MXU's state is
named buffers allocated at kernel entry (staging registers with their full
flags, the weights, the zeroed accumulator); push copies into a staging
register, acc_lhs moves it into the weights and adds dot_general's product
to an accumulator row window, pop copies a window out and zeroes it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test, whole


def transposed_push(x_ref, w_ref, o_ref):
  pltpu.matmul_push_rhs(w_ref[...], 0, 0, transpose=True)
  pltpu.matmul_acc_lhs(8, x_ref[...], 0, load_staged_rhs=0)
  o_ref[...] = pltpu.matmul_pop(8, (8, 64), jnp.float32, 0)


# The 64x128 RHS pushed transposed: a 128x64 staging register and weights;
# acc_addr 8 + 8 rows: a 16-row accumulator, zeroed at entry.
# CHECK-LABEL: TEST: test_push_acc_pop
# CHECK: %[[STAGE:.*]] = memref.alloc() {{.*}}pallas_cpu.name = "mxu0.staging0"} : memref<128x64xf32, "vmem">
# CHECK: %[[FULL:.*]] = memref.alloc() {{.*}}pallas_cpu.name = "mxu0.staging0.full"} : memref<i32, "vmem">
# CHECK: %[[W:.*]] = memref.alloc() {{.*}}pallas_cpu.name = "mxu0.weights"} : memref<128x64xf32, "vmem">
# CHECK: %[[LOADED:.*]] = memref.alloc() {{.*}}pallas_cpu.name = "mxu0.weights.loaded"} : memref<i32, "vmem">
# CHECK: %[[ACC:.*]] = memref.alloc() {{.*}}pallas_cpu.name = "mxu0.acc"} : memref<16x64xf32, "vmem">
# CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[ACC]] :
# push: a full register fails the call, then a transposing copy.
# CHECK: memref.load %[[FULL]][]
# CHECK: call @pallas_cpu_rt_check_failed
# CHECK: linalg.generic {{.*}} outs(%[[STAGE]] : memref<128x64xf32, "vmem">)
# CHECK: memref.store %{{.*}}, %[[FULL]][]
# acc_lhs: load the staged RHS, then the microkernel accumulates the product
# straight into the accumulator window (accumulate = 1; no add pass).
# CHECK: linalg.copy {{.*}}ins(%[[STAGE]] : {{.*}}) outs(%[[W]] :
# CHECK: memref.store %{{.*}}, %[[LOADED]][]
# CHECK: %[[WIN:.*]] = memref.subview %{{.*}}[8, 0] [8, 64] [1, 1] : memref<16x64xf32
# CHECK: %[[WINV:.*]] = memref.subview %[[WIN]][0, 0] [8, 64] [1, 1]
# CHECK: %[[ONE:.*]] = arith.constant 1 : i64
# CHECK-NEXT: call @pallas_cpu_rt_matmul_f32_f32(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[ONE]])
# CHECK-NOT: arith.addf
# pop: copy the rows out, zero them.
# CHECK: memref.subview %{{.*}}[8, 0] [8, 64] [1, 1] : memref<16x64xf32
# CHECK-NEXT: linalg.copy
# CHECK: %[[ZERO:.*]] = memref.subview %{{.*}}[8, 0] [8, 64] [1, 1] : memref<16x64xf32
# CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[ZERO]] :
@run_test
def test_push_acc_pop():
  print(lower_text(whole(transposed_push, (8, 64)), jnp.zeros((8, 128)),
                   jnp.zeros((64, 128))))


def int8_matmul(x_ref, w_ref, o_ref):
  pltpu.matmul_push_rhs(w_ref[...], 1, 0)
  pltpu.matmul_acc_lhs(0, x_ref[...], 0, load_staged_rhs=1)
  o_ref[...] = pltpu.matmul_pop(0, (8, 128), jnp.int32, 0)


# int8 operands: int8 staging and weights, an i32 accumulator; the product
# is dot_general's sign-extending i32 loop nest.
# CHECK-LABEL: TEST: test_int8
# CHECK: memref.alloc() {{.*}}"mxu0.staging1"} : memref<128x128xi8, "vmem">
# CHECK: memref.alloc() {{.*}}"mxu0.weights"} : memref<128x128xi8, "vmem">
# CHECK: memref.alloc() {{.*}}"mxu0.acc"} : memref<8x128xi32, "vmem">
# CHECK: ^bb0(%[[A:.*]]: i8, %[[B:.*]]: i8, %[[C:.*]]: i32):
# CHECK-NEXT: arith.extsi %[[A]] : i8 to i32
# CHECK: arith.addi
# CHECK-NOT: pallas_cpu_rt_matmul
@run_test
def test_int8():
  print(lower_text(whole(int8_matmul, (8, 128), jnp.int32),
                   jnp.zeros((8, 128), jnp.int8),
                   jnp.zeros((128, 128), jnp.int8)))
