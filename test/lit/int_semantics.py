# RUN: %PYTHON %s | FileCheck %s
"""Integer and conversion semantics follow XLA and never hit LLVM UB:
division by zero, INT_MIN / -1, oversized shifts, out-of-range float->int."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


def lower(kernel, dtype, n_in=2, out_dtype=None, stage="kernel"):
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  def f(*args):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((16, 128), out_dtype or dtype),
        grid=(2,), in_specs=[spec] * n_in, out_specs=spec,
        backend="cpu")(*args)
  return lower_text(f, *[jnp.zeros((16, 128), dtype)] * n_in, stage=stage)


def floordiv_kernel(x_ref, y_ref, o_ref):
  o_ref[...] = x_ref[...] // y_ref[...]


# jnp's floor division is lax.div (rounding toward zero) and a fix-up that
# uses lax.rem, fused into one loop (the quotient, used twice, is cheap
# enough to stay lazy: values.RECOMPUTE_LIMIT).  Signed division by zero
# gives -1 and INT_MIN / -1 gives INT_MIN (XLA's results): the divisor is
# replaced by 1 in those cases, so arith.divsi never traps, and the result
# is selected afterwards.  The fix-up: x % 0 == x and INT_MIN % -1 == 0,
# with the same guarded divisor, then quotient - 1 where the signs differ
# and the remainder is nonzero.
# CHECK-LABEL: TEST: test_floordiv_i32
# CHECK: ^bb0(%[[X:.*]]: i32, %[[Y:.*]]: i32, %{{.*}}: i32):
# CHECK: %[[R_BY_ZERO:.*]] = arith.cmpi eq, %[[Y]], %{{.*}} : i32
# CHECK: %[[R_OVERFLOW:.*]] = arith.andi
# CHECK-NEXT: %[[R_UNSAFE:.*]] = arith.ori %[[R_BY_ZERO]], %[[R_OVERFLOW]] : i1
# CHECK-NEXT: %[[R_SAFE_Y:.*]] = arith.select %[[R_UNSAFE]], %{{.*}}, %[[Y]] : i32
# CHECK-NEXT: %[[REM:.*]] = arith.remsi %[[X]], %[[R_SAFE_Y]] : i32
# CHECK-NEXT: %[[R1:.*]] = arith.select %[[R_OVERFLOW]], %{{.*}}, %[[REM]] : i32
# CHECK-NEXT: %[[R2:.*]] = arith.select %[[R_BY_ZERO]], %[[X]], %[[R1]] : i32
# CHECK: %[[ZERO:.*]] = arith.constant 0 : i32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-NEXT: %[[M1:.*]] = arith.constant -1 : i32
# CHECK-NEXT: %[[IMIN:.*]] = arith.constant -2147483648 : i32
# CHECK-NEXT: %[[BY_ZERO:.*]] = arith.cmpi eq, %[[Y]], %[[ZERO]] : i32
# CHECK-NEXT: %[[X_IS_MIN:.*]] = arith.cmpi eq, %[[X]], %[[IMIN]] : i32
# CHECK-NEXT: %[[Y_IS_M1:.*]] = arith.cmpi eq, %[[Y]], %[[M1]] : i32
# CHECK-NEXT: %[[OVERFLOW:.*]] = arith.andi %[[X_IS_MIN]], %[[Y_IS_M1]] : i1
# CHECK-NEXT: %[[UNSAFE:.*]] = arith.ori %[[BY_ZERO]], %[[OVERFLOW]] : i1
# CHECK-NEXT: %[[SAFE_Y:.*]] = arith.select %[[UNSAFE]], %[[ONE]], %[[Y]] : i32
# CHECK-NEXT: %[[QUOT:.*]] = arith.divsi %[[X]], %[[SAFE_Y]] : i32
# CHECK-NEXT: %[[Q1:.*]] = arith.select %[[OVERFLOW]], %[[IMIN]], %[[QUOT]] : i32
# CHECK-NEXT: %[[Q2:.*]] = arith.select %[[BY_ZERO]], %[[M1]], %[[Q1]] : i32
# CHECK-NEXT: %[[QM1:.*]] = arith.subi %[[Q2]], %{{.*}} : i32
# CHECK-NEXT: %[[FLOOR:.*]] = arith.select %{{.*}}, %[[QM1]], %[[Q2]] : i32
# CHECK-NEXT: linalg.yield %[[FLOOR]] : i32
@run_test
def test_floordiv_i32():
  print(lower(floordiv_kernel, jnp.int32))


def div_kernel(x_ref, y_ref, o_ref):
  o_ref[...] = jax.lax.div(x_ref[...], y_ref[...])


# Unsigned: x / 0 is all ones; there is no overflow case.
# CHECK-LABEL: TEST: test_div_u32
# CHECK-DAG: %[[ZERO:.*]] = arith.constant 0 : i32
# CHECK-DAG: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-DAG: %[[ALL_ONES:.*]] = arith.constant -1 : i32
# CHECK: ^bb0(%[[X:.*]]: i32, %[[Y:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: %[[BY_ZERO:.*]] = arith.cmpi eq, %[[Y]], %[[ZERO]] : i32
# CHECK-NEXT: %[[SAFE_Y:.*]] = arith.select %[[BY_ZERO]], %[[ONE]], %[[Y]] : i32
# CHECK-NEXT: %[[QUOT:.*]] = arith.divui %[[X]], %[[SAFE_Y]] : i32
# CHECK-NEXT: %[[Q:.*]] = arith.select %[[BY_ZERO]], %[[ALL_ONES]], %[[QUOT]] : i32
# CHECK-NEXT: linalg.yield %[[Q]] : i32
# CHECK-NOT: arith.divsi
@run_test
def test_div_u32():
  print(lower(div_kernel, jnp.uint32, stage="canonical"))


def shift_kernel(x_ref, y_ref, o_ref):
  o_ref[...] = jax.lax.shift_right_arithmetic(x_ref[...], y_ref[...])


# Shift amounts >= 32 (or negative, compared unsigned) shift by 31, filling
# with the sign bit, instead of producing poison.
# CHECK-LABEL: TEST: test_shift_right_arithmetic_i32
# CHECK-DAG: %[[C31:.*]] = arith.constant 31 : i32
# CHECK-DAG: %[[C32:.*]] = arith.constant 32 : i32
# CHECK: ^bb0(%[[X:.*]]: i32, %[[S:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: %[[TOO_FAR:.*]] = arith.cmpi uge, %[[S]], %[[C32]] : i32
# CHECK-NEXT: %[[SAFE_S:.*]] = arith.select %[[TOO_FAR]], %[[C31]], %[[S]] : i32
# CHECK-NEXT: %[[R:.*]] = arith.shrsi %[[X]], %[[SAFE_S]] : i32
# CHECK-NEXT: linalg.yield %[[R]] : i32
@run_test
def test_shift_right_arithmetic_i32():
  print(lower(shift_kernel, jnp.int32, stage="canonical"))


def to_int_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...].astype(jnp.int32)


# float -> int saturates at the int range and maps NaN to 0 (fptosi alone
# gives poison out of range).
# CHECK-LABEL: TEST: test_f32_to_i32_saturates
# CHECK-DAG: %[[IMIN:.*]] = arith.constant -2147483648 : i32
# CHECK-DAG: %[[IMAX:.*]] = arith.constant 2147483647 : i32
# CHECK-DAG: %[[FMIN:.*]] = arith.constant -2.14748365E+9 : f32
# CHECK-DAG: %[[FMAX:.*]] = arith.constant 2.14748365E+9 : f32
# CHECK-DAG: %[[ZERO:.*]] = arith.constant 0 : i32
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: i32):
# CHECK-NEXT: %[[R:.*]] = arith.fptosi %[[X]] : f32 to i32
# CHECK-NEXT: %[[HI:.*]] = arith.cmpf oge, %[[X]], %[[FMAX]] : f32
# CHECK-NEXT: %[[R1:.*]] = arith.select %[[HI]], %[[IMAX]], %[[R]] : i32
# CHECK-NEXT: %[[LO:.*]] = arith.cmpf olt, %[[X]], %[[FMIN]] : f32
# CHECK-NEXT: %[[R2:.*]] = arith.select %[[LO]], %[[IMIN]], %[[R1]] : i32
# CHECK-NEXT: %[[NAN:.*]] = arith.cmpf uno, %[[X]], %[[X]] : f32
# CHECK-NEXT: %[[R3:.*]] = arith.select %[[NAN]], %[[ZERO]], %[[R2]] : i32
# CHECK-NEXT: linalg.yield %[[R3]] : i32
@run_test
def test_f32_to_i32_saturates():
  print(lower(to_int_kernel, jnp.float32, n_in=1, out_dtype=jnp.int32,
              stage="canonical"))
