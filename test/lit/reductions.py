# RUN: %PYTHON %s | FileCheck %s
"""Reductions.  Over trailing axes (rows of a block): a loop nest whose
innermost loops carry the accumulator as an scf.for iter_arg (a register,
so LLVM vectorizes it) -- or, for a float sum or product, whose innermost
loop runs over 64 strided partial results in a stack buffer, combined by a
pairwise tree (a fixed order, never reassociated).  Over other axes: a fill
of the identity, then one linalg.generic with reduction iterators on the
reduced axes (the output map drops them)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax import lax

import pallas_cpu
from lit_helpers import lower_text, run_test, whole


X = jnp.zeros((8, 128), jnp.float32)


def sum_rows(x_ref, o_ref):
  o_ref[...] = jnp.sum(x_ref[...], axis=1, keepdims=True)


# 128 elements: two chunks of 64 lanes (lane k takes elements k and 64 + k,
# in order), then the tree 32, 16, 8, 4, 2, 1; nothing reassociable.
# CHECK-LABEL: TEST: test_sum_over_minor_axis
# CHECK-DAG: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-DAG: %[[C64:.*]] = arith.constant 64 : index
# CHECK-DAG: %[[C32:.*]] = arith.constant 32 : index
# CHECK: %[[ACC:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8xf32, "vmem">
# CHECK: %[[LANES:.*]] = memref.alloca() {alignment = 64 : i64} : memref<64xf32>
# CHECK: scf.for %[[R:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NEXT: scf.for %[[K:.*]] = %{{.*}} to %[[C64]] step %{{.*}} {
# CHECK-NEXT: memref.store %[[ZERO]], %[[LANES]][%[[K]]] : memref<64xf32>
# CHECK: scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NEXT: %[[BASE:.*]] = arith.muli %[[J]], %[[C64]] : index
# CHECK-NEXT: scf.for %[[L:.*]] = %{{.*}} to %[[C64]] step %{{.*}} {
# CHECK-NEXT: %[[I:.*]] = arith.addi %[[BASE]], %[[L]] : index
# CHECK-NEXT: %[[X:.*]] = memref.load %{{.*}}[%[[R]], %[[I]]] : memref<8x128xf32
# CHECK-NEXT: %[[A:.*]] = memref.load %[[LANES]][%[[L]]] : memref<64xf32>
# CHECK-NEXT: %[[S:.*]] = arith.addf %[[A]], %[[X]] : f32
# CHECK-NEXT: memref.store %[[S]], %[[LANES]][%[[L]]] : memref<64xf32>
# CHECK: scf.for %[[T:.*]] = %{{.*}} to %[[C32]] step %{{.*}} {
# CHECK-NEXT: %[[U:.*]] = arith.addi %[[T]], %[[C32]] : index
# CHECK: memref.subview %[[ACC]][%[[R]]] [1] [1] : memref<8xf32, "vmem"> to memref<f32
# CHECK-NEXT: memref.store %{{.*}}, %{{.*}}[] : memref<f32, strided<[], offset: ?>, "vmem">
# CHECK-NOT: fastmath
# CHECK-NOT: linalg.generic {{.*}}"reduction"
# CHECK: return
@run_test
def test_sum_over_minor_axis():
  print(lower_text(whole(sum_rows, (8, 1)), X, stage="canonical"))


def max_cols(x_ref, o_ref):
  o_ref[...] = jnp.max(x_ref[...], axis=0)


# Float max propagates NaN (maximumf) from -inf.
# CHECK-LABEL: TEST: test_max_over_major_axis
# CHECK-DAG: #[[COLS:.*]] = affine_map<(d0, d1) -> (d1)>
# CHECK: %[[NINF:.*]] = arith.constant 0xFF800000 : f32
# CHECK: linalg.fill ins(%[[NINF]] : f32)
# CHECK-NEXT: linalg.generic {indexing_maps = [#{{.*}}, #[[COLS]]], iterator_types = ["reduction", "parallel"]}
# CHECK: arith.maximumf
# CHECK-NEXT: linalg.yield
@run_test
def test_max_over_major_axis():
  print(lower_text(whole(max_cols, (128,)), X, stage="canonical"))


def int_min_all(x_ref, o_ref):
  o_ref[0] = jnp.min(x_ref[...])


# A full reduction: all axes are trailing; one register accumulator across
# both loops, stored in a rank-0 buffer read back as a scalar.
# CHECK-LABEL: TEST: test_int_min_to_scalar
# CHECK: %[[IMAX:.*]] = arith.constant 2147483647 : i32
# CHECK: %[[ACC:.*]] = memref.alloc() {alignment = 64 : i64} : memref<i32, "vmem">
# CHECK: scf.for {{.*}} iter_args(%{{.*}} = %[[IMAX]]) -> (i32)
# CHECK: scf.for {{.*}} iter_args
# CHECK: arith.minsi
# CHECK: memref.store %{{.*}}, %[[ACC]][] : memref<i32, "vmem">
# CHECK: memref.load %[[ACC]][] : memref<i32, "vmem">
@run_test
def test_int_min_to_scalar():
  print(lower_text(whole(int_min_all, (1,), jnp.int32),
                   jnp.zeros((8, 128), jnp.int32), stage="canonical"))


def softmax(x_ref, o_ref):
  x = x_ref[...]
  e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))
  o_ref[...] = e / jnp.sum(e, axis=1, keepdims=True)


# Row softmax: max-reduce, exp (kept once: used twice), sum-reduce, divide.
# (exp's own expansion is elementwise.py's business: not checked here.)
# CHECK-LABEL: TEST: test_softmax
# CHECK: %[[LANES:.*]] = memref.alloca() {{.*}} : memref<64xf32>
# CHECK: scf.for {{.*}} iter_args
# CHECK: arith.maximumf
# CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "parallel"]
# CHECK: arith.subf
# CHECK: memref.store %{{.*}}, %[[LANES]]
# CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "parallel"]
# CHECK: arith.divf
# CHECK: return
@run_test
def test_softmax():
  print(lower_text(whole(softmax, (8, 128)), X, stage="canonical"))


def sum_scaled(x_ref, o_ref):
  o_ref[...] = jnp.sum(x_ref[...] * 2.0, axis=1)


# A lazy operand is computed inside the reduction's loop: no temporary.
# CHECK-LABEL: TEST: test_operand_fuses_into_reduction
# CHECK: %[[LANES:.*]] = memref.alloca() {{.*}} : memref<64xf32>
# CHECK: arith.muli %{{.*}}, %{{.*}} : index
# CHECK-NEXT: scf.for %[[L:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK-NEXT: %[[I:.*]] = arith.addi %{{.*}}, %[[L]] : index
# CHECK-NEXT: %[[IN:.*]] = memref.load %{{.*}}[%{{.*}}, %[[I]]]
# CHECK-NEXT: %[[E:.*]] = arith.mulf %[[IN]], %{{.*}} : f32
# CHECK-NEXT: %[[A:.*]] = memref.load %[[LANES]][%[[L]]] : memref<64xf32>
# CHECK-NEXT: arith.addf %[[A]], %[[E]] : f32
@run_test
def test_operand_fuses_into_reduction():
  print(lower_text(whole(sum_scaled, (8,)), X, stage="canonical"))


def bf16_sum(x_ref, o_ref):
  o_ref[...] = lax.reduce_sum_p.bind(x_ref[...], axes=(0,), out_sharding=None)


# 16-bit float sums accumulate in f32 and round once at the end (to nearest
# even on the bits, see rules/elementwise.py).
# CHECK-LABEL: TEST: test_bf16_sum_accumulates_in_f32
# CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[ACC:.*]] : memref<128xf32, "vmem">)
# CHECK-NEXT: linalg.generic {{.*}} iterator_types = ["reduction", "parallel"]
# CHECK-NEXT: ^bb0(%[[IN:.*]]: bf16, %[[OUT:.*]]: f32):
# CHECK-NEXT: %[[W:.*]] = arith.extf %[[IN]] : bf16 to f32
# CHECK-NEXT: arith.addf %[[OUT]], %[[W]] : f32
# CHECK: linalg.generic {{.*}} ins(%[[ACC]] : memref<128xf32, "vmem">)
# CHECK-NEXT: ^bb0(%[[SUM:.*]]: f32, %{{.*}}: bf16):
# CHECK-NEXT: arith.bitcast %[[SUM]] : f32 to i32
# CHECK: %[[H:.*]] = arith.trunci %{{.*}} : i32 to i16
# CHECK-NEXT: %[[B:.*]] = arith.bitcast %[[H]] : i16 to bf16
# CHECK-NEXT: linalg.yield %[[B]] : bf16
@run_test
def test_bf16_sum_accumulates_in_f32():
  print(lower_text(whole(bf16_sum, (128,), jnp.bfloat16),
                   jnp.zeros((8, 128), jnp.bfloat16), stage="canonical"))


def any_all(x_ref, a_ref, o_ref):
  a_ref[...] = jnp.all(x_ref[...] > 0, axis=1).astype(jnp.int32)
  o_ref[...] = jnp.any(x_ref[...] < 0, axis=1).astype(jnp.int32)


# Bools are bytes in memory: the accumulator is i8 (filled with the
# identity, true for all, false for any), combined as i1; the comparison
# is computed in the reduction's body.
# CHECK-LABEL: TEST: test_all_any
# CHECK-DAG: %[[TRUE:.*]] = arith.constant 1 : i8
# CHECK-DAG: %[[FALSE:.*]] = arith.constant 0 : i8
# CHECK: linalg.fill ins(%[[TRUE]] : i8) outs(%{{.*}} : memref<8xi8, "vmem">)
# CHECK-NEXT: linalg.generic {{.*}} iterator_types = ["parallel", "reduction"]
# CHECK-NEXT: ^bb0(%[[IN:.*]]: f32, %[[OUT:.*]]: i8):
# CHECK-NEXT: %[[P:.*]] = arith.cmpf ogt, %[[IN]]
# CHECK-NEXT: %[[ACC:.*]] = arith.trunci %[[OUT]] : i8 to i1
# CHECK-NEXT: %[[R:.*]] = arith.andi %[[ACC]], %[[P]] : i1
# CHECK-NEXT: %[[M:.*]] = arith.extui %[[R]] : i1 to i8
# CHECK-NEXT: linalg.yield %[[M]] : i8
# CHECK: linalg.fill ins(%[[FALSE]] : i8) outs(%{{.*}} : memref<8xi8, "vmem">)
# CHECK-NEXT: linalg.generic {{.*}} iterator_types = ["parallel", "reduction"]
# CHECK: arith.cmpf olt
# CHECK: arith.ori
@run_test
def test_all_any():
  out = (jax.ShapeDtypeStruct((8,), jnp.int32),) * 2
  f = pallas_cpu.pallas_call(any_all, out_shape=out, backend="cpu")
  print(lower_text(f, X, stage="canonical"))


def argmax_rows(x_ref, o_ref):
  o_ref[...] = jnp.argmax(x_ref[...], axis=1)


# argmax carries the best value and its index; NaN wins (the first one),
# ties keep the earlier index (strict ogt).
# CHECK-LABEL: TEST: test_argmax
# CHECK: linalg.generic {{.*}} iterator_types = ["parallel", "reduction"]{{.*}} outs(%{{.*}}, %{{.*}} : memref<8xf32, "vmem">, memref<8xi32, "vmem">)
# CHECK-NEXT: ^bb0(%[[IN:.*]]: f32, %[[BEST:.*]]: f32, %[[IDX:.*]]: i32):
# CHECK: %[[GT:.*]] = arith.cmpf ogt, %[[IN]], %[[BEST]] : f32
# CHECK: arith.cmpf uno, %[[IN]], %[[IN]] : f32
# CHECK: arith.cmpf ord, %[[BEST]], %[[BEST]] : f32
# CHECK: linalg.index 1 : index
# CHECK: linalg.yield
@run_test
def test_argmax():
  print(lower_text(whole(argmax_rows, (8,), jnp.int32), X, stage="canonical"))
