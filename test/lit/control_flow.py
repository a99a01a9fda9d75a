# RUN: %PYTHON %s | FileCheck %s
"""Kernel control flow: pl.when / lax.cond -> scf.if, fori_loop -> scf.for,
while_loop (and fori_loop with a traced bound) -> scf.while."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


def lower(kernel, stage="kernel"):
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
        grid=(2,), in_specs=[spec], out_specs=spec, backend="cpu")(x)
  return lower_text(f, jnp.zeros((16, 128), jnp.float32), stage=stage)


def when_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...]

  @pl.when(pl.program_id(0) == 1)
  def _():
    o_ref[...] = x_ref[...] + 1.0


# pl.when is a two-branch lax.cond on the predicate as an i32 index: branch
# 0 (index <= 0) is the empty "false" branch, the body is in the else.
# CHECK-LABEL: TEST: test_pl_when
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: linalg.generic
# CHECK: %[[PID:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-NEXT: %[[EQ:.*]] = arith.cmpi eq, %[[PID]], %[[ONE]] : i32
# CHECK-NEXT: %[[IDX:.*]] = arith.extui %[[EQ]] : i1 to i32
# CHECK-NEXT: %[[ZERO:.*]] = arith.constant 0 : i32
# CHECK-NEXT: %[[FALSE_BRANCH:.*]] = arith.cmpi sle, %[[IDX]], %[[ZERO]] : i32
# CHECK-NEXT: scf.if %[[FALSE_BRANCH]] {
# CHECK-NEXT: } else {
# CHECK: linalg.generic
# CHECK: arith.addf
# CHECK: }
@run_test
def test_pl_when():
  print(lower(when_kernel))


def cond_kernel(x_ref, o_ref):
  s = jax.lax.cond(pl.program_id(0) == 0, lambda: 1.0, lambda: 2.0)
  o_ref[...] = x_ref[...] * s


# A lax.cond with a scalar result is an scf.if yielding it (canonicalization
# later turns this one into an arith.select).
# CHECK-LABEL: TEST: test_cond_with_result
# CHECK: %[[PRED:.*]] = arith.cmpi sle, %{{.*}}, %{{.*}} : i32
# CHECK-NEXT: %[[S:.*]] = scf.if %[[PRED]] -> (f32) {
# CHECK-NEXT: %[[TWO:.*]] = arith.constant 2.000000e+00 : f32
# CHECK-NEXT: scf.yield %[[TWO]] : f32
# CHECK-NEXT: } else {
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: scf.yield %[[ONE]] : f32
# CHECK-NEXT: }
# CHECK: arith.mulf %{{.*}}, %[[S]] : f32
@run_test
def test_cond_with_result():
  print(lower(cond_kernel))


def fori_scalar_kernel(x_ref, o_ref):
  s = jax.lax.fori_loop(0, 4, lambda i, s: s + i.astype(jnp.float32),
                        jnp.float32(0))
  o_ref[...] = x_ref[...] + s


# fori_loop with static bounds (a scan) is an scf.for inside the grid loop;
# the scalar carries (the i32 counter and the sum) are iter_args.
# CHECK-LABEL: TEST: test_fori_loop_scalar_carry
# CHECK: scf.for %[[GRID_I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[S0:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-NEXT: %[[LB:.*]] = arith.constant 0 : index
# CHECK-NEXT: %[[UB:.*]] = arith.constant 4 : index
# CHECK-NEXT: %[[STEP:.*]] = arith.constant 1 : index
# CHECK-NEXT: %[[R:.*]]:2 = scf.for %{{.*}} = %[[LB]] to %[[UB]] step %[[STEP]] iter_args(%[[I:.*]] = %{{.*}}, %[[S:.*]] = %[[S0]]) -> (i32, f32) {
# CHECK-NEXT: %[[C1:.*]] = arith.constant 1 : i32
# CHECK-NEXT: %[[NEXT_I:.*]] = arith.addi %[[I]], %[[C1]] : i32
# CHECK-NEXT: %[[IF:.*]] = arith.sitofp %[[I]] : i32 to f32
# CHECK-NEXT: %[[NEXT_S:.*]] = arith.addf %[[S]], %[[IF]] : f32
# CHECK-NEXT: scf.yield %[[NEXT_I]], %[[NEXT_S]] : i32, f32
# CHECK-NEXT: }
# CHECK: arith.addf %{{.*}}, %[[R]]#1 : f32
@run_test
def test_fori_loop_scalar_carry():
  print(lower(fori_scalar_kernel))


def fori_array_kernel(x_ref, o_ref):
  o_ref[...] = jax.lax.fori_loop(0, 4, lambda i, acc: acc + x_ref[...],
                                 jnp.zeros((8, 128), jnp.float32))


# An array carry lives in a vmem buffer, so the scf.for has no iter_args.
# The initial value (zeros) is computed straight into it, and so is each new
# value (acc + x reads the carry only at the point it writes): no copies.
# CHECK-LABEL: TEST: test_fori_loop_array_carry
# CHECK: %[[C4:.*]] = arith.constant 4 : index
# CHECK: %[[CARRY:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x128xf32, "vmem">
# CHECK-NOT: memref.alloc() {alignment = 64 : i64} : memref<8x128xf32
# CHECK: linalg.generic {{.*}} outs(%[[CARRY]] : memref<8x128xf32, "vmem">)
# CHECK: scf.for %{{.*}} = %{{.*}} to %[[C4]] step %{{.*}} {
# CHECK-NEXT: linalg.generic {{.*}} ins(%[[CARRY]], %{{.*}} : {{.*}}) outs(%[[CARRY]] : memref<8x128xf32, "vmem">)
# CHECK: arith.addf
# CHECK-NOT: linalg.copy
# CHECK: }
# CHECK-NEXT: }
# CHECK-NEXT: linalg.generic {{.*}} ins(%[[CARRY]] : memref<8x128xf32, "vmem">)
@run_test
def test_fori_loop_array_carry():
  print(lower(fori_array_kernel, stage="canonical"))


def while_kernel(x_ref, o_ref):
  def body(c):
    i, s = c
    return i + 1, s * 2.0
  _, s = jax.lax.while_loop(lambda c: c[0] < 5, body, (0, jnp.float32(1)))
  o_ref[...] = x_ref[...] * s


# while_loop: the cond jaxpr goes in the "before" region, feeding
# scf.condition, the body in the "after" region.
# CHECK-LABEL: TEST: test_while_loop
# CHECK-DAG: %[[FIVE:.*]] = arith.constant 5 : i32
# CHECK-DAG: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-DAG: %[[TWO:.*]] = arith.constant 2.000000e+00 : f32
# CHECK: %[[R:.*]]:2 = scf.while (%[[I:.*]] = %{{.*}}, %[[S:.*]] = %{{.*}}) : (i32, f32) -> (i32, f32) {
# CHECK-NEXT: %[[LT:.*]] = arith.cmpi slt, %[[I]], %[[FIVE]] : i32
# CHECK-NEXT: scf.condition(%[[LT]]) %[[I]], %[[S]] : i32, f32
# CHECK-NEXT: } do {
# CHECK: %[[NEXT_I:.*]] = arith.addi %[[I2:.*]], %[[ONE]] : i32
# CHECK-NEXT: %[[NEXT_S:.*]] = arith.mulf %[[S2:.*]], %[[TWO]] : f32
# CHECK-NEXT: scf.yield %[[NEXT_I]], %[[NEXT_S]] : i32, f32
# CHECK-NEXT: }
# CHECK: arith.mulf %{{.*}}, %[[R]]#1 : f32
@run_test
def test_while_loop():
  print(lower(while_kernel, stage="canonical"))


def dynamic_fori_kernel(x_ref, o_ref):
  n = pl.program_id(0) + 1
  s = jax.lax.fori_loop(0, n, lambda i, s: s * 2.0, jnp.float32(1))
  o_ref[...] = x_ref[...] * s


# fori_loop with a traced trip count is a while_loop: scf.while comparing
# the counter with the bound computed from program_id.
# CHECK-LABEL: TEST: test_fori_loop_dynamic_bound
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[PID:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK-NEXT: %[[N:.*]] = arith.addi %[[PID]], %{{.*}} : i32
# CHECK-NEXT: %{{.*}}:2 = scf.while (%[[K:.*]] = %{{.*}}, %{{.*}} = %{{.*}}) : (i32, f32) -> (i32, f32) {
# CHECK-NEXT: %[[MORE:.*]] = arith.cmpi slt, %[[K]], %[[N]] : i32
# CHECK-NEXT: scf.condition(%[[MORE]])
# CHECK-NOT: scf.for
# CHECK: return
@run_test
def test_fori_loop_dynamic_bound():
  print(lower(dynamic_fori_kernel, stage="canonical"))
