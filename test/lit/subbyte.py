# RUN: %PYTHON %s | FileCheck %s
"""Sub-byte integers: one element per byte in the kernel's memory, i4/i2 in
registers (loads truncate, stores sign- or zero-extend); the custom call
passes XLA's packed arrays as they are."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

import pallas_cpu
from lit_helpers import lower_text, run_test

NO_CHECKS = pallas_cpu.CompilerParams(tpu_checks="off")


def whole(kernel, out_dtype):
  def f(*args):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((8, 128), out_dtype),
        backend="cpu", compiler_params=NO_CHECKS)(*args)
  return f


def dequantize(w_ref, s_ref, o_ref):
  o_ref[...] = w_ref[...].astype(jnp.float32) * s_ref[...]


# An int4 operand is a memref of bytes; the body truncates each to i4 and
# converts the i4 (sign-extending) to f32.
# CHECK-LABEL: TEST: test_int4_load_and_cast
# CHECK: func.func @pallas_cpu_entry({{.*}}: memref<8x128xi8, "hbm">{{.*}}: memref<8x128xf32, "hbm">{{.*}}: memref<8x128xf32, "hbm">
# CHECK: linalg.generic
# CHECK: ^bb0(%[[W:.*]]: i8, %[[S:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[Q:.*]] = arith.trunci %[[W]] : i8 to i4
# CHECK-NEXT: %[[F:.*]] = arith.sitofp %[[Q]] : i4 to f32
# CHECK-NEXT: %[[R:.*]] = arith.mulf %[[F]], %[[S]] : f32
# CHECK-NEXT: linalg.yield %[[R]] : f32
@run_test
def test_int4_load_and_cast():
  print(lower_text(whole(dequantize, jnp.float32),
                   jnp.zeros((8, 128), jnp.int4),
                   jnp.zeros((8, 128), jnp.float32)))


def wrap_add(x_ref, y_ref, o_ref):
  o_ref[...] = x_ref[...] + y_ref[...]


# uint2 arithmetic wraps at 2 bits (an i2 add); the result is stored
# zero-extended to its byte.
# CHECK-LABEL: TEST: test_uint2_add_and_store
# CHECK: ^bb0(%[[A:.*]]: i8, %[[B:.*]]: i8, %{{.*}}: i8):
# CHECK-NEXT: %[[A2:.*]] = arith.trunci %[[A]] : i8 to i2
# CHECK-NEXT: %[[B2:.*]] = arith.trunci %[[B]] : i8 to i2
# CHECK-NEXT: %[[SUM:.*]] = arith.addi %[[A2]], %[[B2]] : i2
# CHECK-NEXT: %[[OUT:.*]] = arith.extui %[[SUM]] : i2 to i8
# CHECK-NEXT: linalg.yield %[[OUT]] : i8
@run_test
def test_uint2_add_and_store():
  x = jnp.zeros((8, 128), jnp.uint2)
  print(lower_text(whole(wrap_add, jnp.uint2), x, x))


def from_f32(x_ref, o_ref):
  o_ref[...] = x_ref[...].astype(jnp.int4)


# f32 -> int4 saturates to [-8, 7] and sends NaN to 0 (XLA's semantics);
# the int4 is stored sign-extended.
# CHECK-LABEL: TEST: test_f32_to_int4
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: i8):
# CHECK: %[[T:.*]] = arith.fptosi %[[X]] : f32 to i4
# CHECK: arith.constant 8.000000e+00 : f32
# CHECK: arith.constant -8.000000e+00 : f32
# CHECK: arith.cmpf uno, %[[X]], %[[X]] : f32
# CHECK: %[[R:.*]] = arith.select {{.*}} : i4
# CHECK-NEXT: %[[OUT:.*]] = arith.extsi %[[R]] : i4 to i8
# CHECK-NEXT: linalg.yield %[[OUT]] : i8
@run_test
def test_f32_to_int4():
  print(lower_text(whole(from_f32, jnp.int4), jnp.zeros((8, 128), jnp.float32)))


# The custom call takes and returns the packed arrays as they are: the
# runtime's handler unpacks them into one byte per element for the kernel
# and packs results back (runtime/subbyte.h).
# CHECK-LABEL: TEST: test_boundary_types
# CHECK-NOT: stablehlo.convert
# CHECK: stablehlo.custom_call @pallas_cpu_call(%arg0, %arg1)
# CHECK-SAME: (tensor<8x128xi4>, tensor<8x128xi4>) -> tensor<8x128xi4>
@run_test
def test_boundary_types():
  x = jnp.zeros((8, 128), jnp.int4)
  print(jax.jit(whole(wrap_add, jnp.int4)).lower(x, x).as_text())
