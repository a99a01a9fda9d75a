# RUN: %PYTHON %s | FileCheck %s
"""What the elementwise rules (rules/elementwise.py, rules/approx.py, and
the float rules of rules/bits.py) put inside the fused linalg.generic body.

* f32 exp, log and logistic: Cephes-style range reduction and
  polynomials in plain arith ops, no libm call (so LLVM can vectorize the
  fused loop); f32 tanh: XLA's rational approximation in the same ops
  (FMA Horner steps, one division); 16-bit floats compute them in f32.
* log1p, expm1: direct libm calls (math-to-llvm would expand them as
  log(1 + x) / exp(x) - 1).
* sin, cos, tan, erf, atan2, pow, sqrt, round: math dialect ops, which
  become LLVM intrinsics (erf: a libm call) in the "llvm" stage.
* comparisons are ordered except ne (une); max/min propagate NaN
  (maximumf/minimumf); float->int conversions saturate with NaN -> 0;
  bools are i1 in the body and i8 in memory.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test

F32, BF16, I32 = jnp.float32, jnp.bfloat16, jnp.int32


def lower(fn, in_dtypes, out_dtype, stage="kernel"):
  """A whole-array (8, 128) kernel writing fn(*inputs).  The "kernel" stage
  keeps each constant next to its use, which reads best for polynomials."""
  def kernel(*refs):
    *ins, o_ref = refs
    o_ref[...] = fn(*[r[...] for r in ins])

  def f(*args):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((8, 128), out_dtype),
        backend="cpu")(*args)
  return lower_text(f, *[jnp.zeros((8, 128), d) for d in in_dtypes],
                    stage=stage)


# exp(x) = 2**n * exp(r): clamp x to [-104, 89], n = floor(x*log2(e) + 0.5)
# (fptosi plus a fix-up, not math.floor, which would become a libm call),
# r = x - n*ln2 in two parts (Cody-Waite), a degree-6 polynomial, then 2**n
# in two halves built from exponent bits; overflow -> inf, underflow -> 0,
# NaN -> itself.
# CHECK-LABEL: TEST: test_exp_f32
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[LO:.*]] = arith.constant -1.040000e+02 : f32
# CHECK-NEXT: %[[X1:.*]] = arith.maximumf %[[X]], %[[LO]] : f32
# CHECK-NEXT: %[[HI:.*]] = arith.constant 8.900000e+01 : f32
# CHECK-NEXT: %[[XC:.*]] = arith.minimumf %[[X1]], %[[HI]] : f32
# CHECK-NEXT: %[[LOG2E:.*]] = arith.constant 1.44269502 : f32
# CHECK-NEXT: %[[Y:.*]] = arith.mulf %[[XC]], %[[LOG2E]] : f32
# CHECK-NEXT: %[[HALF:.*]] = arith.constant 5.000000e-01 : f32
# CHECK-NEXT: %[[H:.*]] = arith.addf %[[Y]], %[[HALF]] : f32
# CHECK-NEXT: %[[T:.*]] = arith.fptosi %[[H]] : f32 to i32
# CHECK-NEXT: %[[TF:.*]] = arith.sitofp %[[T]] : i32 to f32
# CHECK-NEXT: %[[ABOVE:.*]] = arith.cmpf ogt, %[[TF]], %[[H]] : f32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-NEXT: %[[TM1:.*]] = arith.subi %[[T]], %[[ONE]] : i32
# CHECK-NEXT: %[[N:.*]] = arith.select %[[ABOVE]], %[[TM1]], %[[T]] : i32
# CHECK-NEXT: %[[NF:.*]] = arith.sitofp %[[N]] : i32 to f32
# CHECK-NEXT: %[[LN2_HI:.*]] = arith.constant 0.693359375 : f32
# CHECK-NEXT: %[[A:.*]] = arith.mulf %[[NF]], %[[LN2_HI]] : f32
# CHECK-NEXT: %[[R1:.*]] = arith.subf %[[XC]], %[[A]] : f32
# CHECK-NEXT: %[[LN2_LO:.*]] = arith.constant -2.12194442E-4 : f32
# CHECK-NEXT: %[[B:.*]] = arith.mulf %[[NF]], %[[LN2_LO]] : f32
# CHECK-NEXT: %[[R:.*]] = arith.subf %[[R1]], %[[B]] : f32
# CHECK-NEXT: %[[P0:.*]] = arith.constant 1.98756912E-4 : f32
# CHECK-NEXT: %{{.*}} = arith.mulf %[[P0]], %[[R]] : f32
# CHECK-NEXT: arith.constant 0.00139819994 : f32
# CHECK-NEXT: arith.addf
# CHECK-NEXT: arith.mulf %{{.*}}, %[[R]] : f32
# CHECK-NEXT: arith.constant 0.00833345205 : f32
# CHECK-NEXT: arith.addf
# CHECK-NEXT: arith.mulf %{{.*}}, %[[R]] : f32
# CHECK-NEXT: arith.constant 0.0416657962 : f32
# CHECK-NEXT: arith.addf
# CHECK-NEXT: arith.mulf %{{.*}}, %[[R]] : f32
# CHECK-NEXT: arith.constant 0.166666657 : f32
# CHECK-NEXT: arith.addf
# CHECK-NEXT: arith.mulf %{{.*}}, %[[R]] : f32
# CHECK-NEXT: arith.constant 5.000000e-01 : f32
# CHECK-NEXT: %[[P:.*]] = arith.addf
# CHECK-NEXT: %[[PR:.*]] = arith.mulf %[[P]], %[[R]] : f32
# CHECK-NEXT: %[[PRR:.*]] = arith.mulf %[[PR]], %[[R]] : f32
# CHECK-NEXT: %[[S:.*]] = arith.addf %[[PRR]], %[[R]] : f32
# CHECK-NEXT: %[[FONE:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[EXP_R:.*]] = arith.addf %[[S]], %[[FONE]] : f32
# CHECK-NEXT: %[[C1:.*]] = arith.constant 1 : i32
# CHECK-NEXT: %[[N1:.*]] = arith.shrsi %[[N]], %[[C1]] : i32
# CHECK-NEXT: %[[N2:.*]] = arith.subi %[[N]], %[[N1]] : i32
# CHECK-NEXT: %[[BIAS:.*]] = arith.constant 127 : i32
# CHECK-NEXT: %[[E1:.*]] = arith.addi %[[N1]], %[[BIAS]] : i32
# CHECK-NEXT: %[[C23:.*]] = arith.constant 23 : i32
# CHECK-NEXT: %[[B1:.*]] = arith.shli %[[E1]], %[[C23]] : i32
# CHECK-NEXT: %[[POW1:.*]] = arith.bitcast %[[B1]] : i32 to f32
# CHECK-NEXT: %[[Y1:.*]] = arith.mulf %[[EXP_R]], %[[POW1]] : f32
# CHECK-NEXT: %[[BIAS2:.*]] = arith.constant 127 : i32
# CHECK-NEXT: %[[E2:.*]] = arith.addi %[[N2]], %[[BIAS2]] : i32
# CHECK-NEXT: %[[C23B:.*]] = arith.constant 23 : i32
# CHECK-NEXT: %[[B2:.*]] = arith.shli %[[E2]], %[[C23B]] : i32
# CHECK-NEXT: %[[POW2:.*]] = arith.bitcast %[[B2]] : i32 to f32
# CHECK-NEXT: %[[Y2:.*]] = arith.mulf %[[Y1]], %[[POW2]] : f32
# CHECK-NEXT: %[[OVF:.*]] = arith.constant 88.7228394 : f32
# CHECK-NEXT: %[[BIG:.*]] = arith.cmpf ogt, %[[X]], %[[OVF]] : f32
# CHECK-NEXT: %[[INF:.*]] = arith.constant 0x7F800000 : f32
# CHECK-NEXT: %[[Y3:.*]] = arith.select %[[BIG]], %[[INF]], %[[Y2]] : f32
# CHECK-NEXT: %[[UNF:.*]] = arith.constant -103.972084 : f32
# CHECK-NEXT: %[[SMALL:.*]] = arith.cmpf olt, %[[X]], %[[UNF]] : f32
# CHECK-NEXT: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-NEXT: %[[Y4:.*]] = arith.select %[[SMALL]], %[[ZERO]], %[[Y3]] : f32
# CHECK-NEXT: %[[NAN:.*]] = arith.cmpf uno, %[[X]], %[[X]] : f32
# CHECK-NEXT: %[[OUT:.*]] = arith.select %[[NAN]], %[[X]], %[[Y4]] : f32
# CHECK-NEXT: linalg.yield %[[OUT]] : f32
@run_test
def test_exp_f32():
  print(lower(jnp.exp, [F32], F32))


# log(x) = e*ln2 + log(m): denormals scaled by 2**23 first, exponent and
# mantissa split on the bits (m in [sqrt(1/2), sqrt(2))), a degree-8
# polynomial in m - 1, then the special values: log(0) = -inf,
# log(x < 0) = NaN, log(inf) = inf, NaN -> itself.
# CHECK-LABEL: TEST: test_log_f32
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[MIN_NORMAL:.*]] = arith.constant 1.17549435E-38 : f32
# CHECK-NEXT: %[[TINY:.*]] = arith.cmpf olt, %[[X]], %[[MIN_NORMAL]] : f32
# CHECK-NEXT: %[[TWO23:.*]] = arith.constant 0x4B000000 : f32
# CHECK-NEXT: %[[SCALED:.*]] = arith.mulf %[[X]], %[[TWO23]] : f32
# CHECK-NEXT: %[[XS:.*]] = arith.select %[[TINY]], %[[SCALED]], %[[X]] : f32
# CHECK: %[[BITS:.*]] = arith.bitcast %[[XS]] : f32 to i32
# CHECK-NEXT: %[[C23:.*]] = arith.constant 23 : i32
# CHECK-NEXT: %[[EXP:.*]] = arith.shrui %[[BITS]], %[[C23]] : i32
# CHECK-NEXT: %[[C126:.*]] = arith.constant 126 : i32
# CHECK-NEXT: arith.subi %[[EXP]], %[[C126]] : i32
# CHECK-NEXT: arith.subi
# CHECK-NEXT: %[[MANT_MASK:.*]] = arith.constant 8388607 : i32
# CHECK-NEXT: %[[MANT:.*]] = arith.andi %[[BITS]], %[[MANT_MASK]] : i32
# CHECK-NEXT: %[[HALF_EXP:.*]] = arith.constant 1056964608 : i32
# CHECK-NEXT: %[[MB:.*]] = arith.ori %[[MANT]], %[[HALF_EXP]] : i32
# CHECK-NEXT: %[[M:.*]] = arith.bitcast %[[MB]] : i32 to f32
# CHECK-NEXT: %[[SQRTH:.*]] = arith.constant 0.707106769 : f32
# CHECK-NEXT: arith.cmpf olt, %[[M]], %[[SQRTH]] : f32
# CHECK-NOT: call
# CHECK: arith.constant 0.0703768358 : f32
# CHECK-COUNT-8: arith.addf
# CHECK-NOT: call
# CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-NEXT: %[[IS_ZERO:.*]] = arith.cmpf oeq, %[[X]], %[[ZERO]] : f32
# CHECK-NEXT: %[[NINF:.*]] = arith.constant 0xFF800000 : f32
# CHECK-NEXT: %[[Y1:.*]] = arith.select %[[IS_ZERO]], %[[NINF]], %{{.*}} : f32
# CHECK-NEXT: %[[ZERO2:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-NEXT: %[[NEG:.*]] = arith.cmpf olt, %[[X]], %[[ZERO2]] : f32
# CHECK-NEXT: %[[QNAN:.*]] = arith.constant 0x7FC00000 : f32
# CHECK-NEXT: %[[Y2:.*]] = arith.select %[[NEG]], %[[QNAN]], %[[Y1]] : f32
# CHECK-NEXT: %[[INF:.*]] = arith.constant 0x7F800000 : f32
# CHECK-NEXT: %[[IS_INF:.*]] = arith.cmpf oeq, %[[X]], %[[INF]] : f32
# CHECK-NEXT: %[[Y3:.*]] = arith.select %[[IS_INF]], %[[X]], %[[Y2]] : f32
# CHECK-NEXT: %[[NAN:.*]] = arith.cmpf uno, %[[X]], %[[X]] : f32
# CHECK-NEXT: %[[OUT:.*]] = arith.select %[[NAN]], %[[X]], %[[Y3]] : f32
# CHECK-NEXT: linalg.yield %[[OUT]] : f32
@run_test
def test_log_f32():
  print(lower(jnp.log, [F32], F32))


# tanh: XLA's CPU approximation (xla/codegen/intrinsic/tanh.cc): x clamped
# to +-7.99881172 by fcmp uge/ule + select (NaN passes through), z = x*x,
# x * P(z) / Q(z) with every Horner step one math.fma (llvm.intr.fma: fused
# at every LLVM level, as XLA's contracted IR on an FMA machine), one
# division; |x| < 0.0004 returns x itself (so -0 -> -0).
# CHECK-LABEL: TEST: test_tanh_f32
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[LO:.*]] = arith.constant -7.99881172 : f32
# CHECK-NEXT: %[[HI:.*]] = arith.constant 7.99881172 : f32
# CHECK-NEXT: %[[GE:.*]] = arith.cmpf uge, %[[X]], %[[LO]] : f32
# CHECK-NEXT: %[[X1:.*]] = arith.select %[[GE]], %[[X]], %[[LO]] : f32
# CHECK-NEXT: %[[LE:.*]] = arith.cmpf ule, %[[X1]], %[[HI]] : f32
# CHECK-NEXT: %[[XC:.*]] = arith.select %[[LE]], %[[X1]], %[[HI]] : f32
# CHECK-NEXT: %[[Z:.*]] = arith.mulf %[[XC]], %[[XC]] : f32
# CHECK-NEXT: %[[P6:.*]] = arith.constant -2.76076837E-16 : f32
# CHECK-NEXT: %[[P5:.*]] = arith.constant 2.00018794E-13 : f32
# CHECK-NEXT: %[[N1:.*]] = math.fma %[[Z]], %[[P6]], %[[P5]] : f32
# CHECK-NEXT: arith.constant -8.60467184E-11 : f32
# CHECK-NEXT: %[[N2:.*]] = math.fma %[[Z]], %[[N1]], %{{.*}} : f32
# CHECK-NEXT: arith.constant 5.12229725E-8 : f32
# CHECK-NEXT: %[[N3:.*]] = math.fma %[[Z]], %[[N2]], %{{.*}} : f32
# CHECK-NEXT: arith.constant 1.48572235E-5 : f32
# CHECK-NEXT: %[[N4:.*]] = math.fma %[[Z]], %[[N3]], %{{.*}} : f32
# CHECK-NEXT: arith.constant 6.37261954E-4 : f32
# CHECK-NEXT: %[[N5:.*]] = math.fma %[[Z]], %[[N4]], %{{.*}} : f32
# CHECK-NEXT: arith.constant 0.00489352457 : f32
# CHECK-NEXT: %[[P:.*]] = math.fma %[[Z]], %[[N5]], %{{.*}} : f32
# CHECK-NEXT: %[[NUM:.*]] = arith.mulf %[[XC]], %[[P]] : f32
# CHECK-NEXT: %[[Q3:.*]] = arith.constant 1.19825836E-6 : f32
# CHECK-NEXT: %[[Q2:.*]] = arith.constant 1.18534706E-4 : f32
# CHECK-NEXT: %[[D1:.*]] = math.fma %[[Z]], %[[Q3]], %[[Q2]] : f32
# CHECK-NEXT: arith.constant 0.00226843474 : f32
# CHECK-NEXT: %[[D2:.*]] = math.fma %[[Z]], %[[D1]], %{{.*}} : f32
# CHECK-NEXT: arith.constant 0.00489352504 : f32
# CHECK-NEXT: %[[Q:.*]] = math.fma %[[Z]], %[[D2]], %{{.*}} : f32
# CHECK-NEXT: %[[R:.*]] = arith.divf %[[NUM]], %[[Q]] : f32
# CHECK-NEXT: %[[AX:.*]] = math.absf %[[X]] : f32
# CHECK-NEXT: %[[CUT:.*]] = arith.constant 4.000000e-04 : f32
# CHECK-NEXT: %[[TINY:.*]] = arith.cmpf olt, %[[AX]], %[[CUT]] : f32
# CHECK-NEXT: %[[OUT:.*]] = arith.select %[[TINY]], %[[X]], %[[R]] : f32
# CHECK-NEXT: linalg.yield %[[OUT]] : f32
@run_test
def test_tanh_f32():
  print(lower(jnp.tanh, [F32], F32))


# logistic(x) = 1 / (1 + exp(-x)), the same inline exp.
# CHECK-LABEL: TEST: test_logistic_f32
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[NX:.*]] = arith.negf %[[X]] : f32
# CHECK-NEXT: arith.constant -1.040000e+02 : f32
# CHECK-NEXT: arith.maximumf %[[NX]], %{{.*}} : f32
# CHECK-NOT: call
# CHECK: %[[NAN:.*]] = arith.cmpf uno, %[[NX]], %[[NX]] : f32
# CHECK-NEXT: %[[E:.*]] = arith.select %[[NAN]], %[[NX]], %{{.*}} : f32
# CHECK-NEXT: %[[D:.*]] = arith.addf %[[ONE]], %[[E]] : f32
# CHECK-NEXT: %[[OUT:.*]] = arith.divf %[[ONE]], %[[D]] : f32
# CHECK-NEXT: linalg.yield %[[OUT]] : f32
@run_test
def test_logistic_f32():
  print(lower(jax.nn.sigmoid, [F32], F32))


# After the whole pipeline, none of the four needs a libm function (only
# the runtime's and malloc/free are declared), so LLVM can vectorize the
# loop.
# CHECK-LABEL: TEST: test_exp_log_tanh_logistic_call_no_libm
# CHECK-NOT: @expf
# CHECK-NOT: @logf
# CHECK-NOT: @tanhf
# CHECK-NOT: @exp(
# CHECK-NOT: llvm.intr.exp
# CHECK-NOT: llvm.intr.log
# CHECK: llvm.func @pallas_cpu_entry(
# CHECK-NOT: @expf
# CHECK-NOT: @logf
# CHECK-NOT: @tanhf
# CHECK-NOT: llvm.intr.exp
# CHECK-NOT: llvm.intr.log
# CHECK: llvm.func @_mlir_ciface_pallas_cpu_entry(
@run_test
def test_exp_log_tanh_logistic_call_no_libm():
  print(lower(lambda x: jnp.exp(x) + jnp.log(x) + jnp.tanh(x)
              + jax.nn.sigmoid(x), [F32], F32, stage="llvm"))


# 16-bit floats: widened to f32, the f32 expansion, one rounding back.
# CHECK-LABEL: TEST: test_exp_bf16_computes_in_f32
# CHECK: ^bb0(%[[X:.*]]: bf16, %{{.*}}: bf16):
# CHECK-NEXT: %[[W:.*]] = arith.extf %[[X]] : bf16 to f32
# CHECK-NEXT: arith.constant -1.040000e+02 : f32
# CHECK-NEXT: arith.maximumf %[[W]], %{{.*}} : f32
# CHECK: %[[E:.*]] = arith.select %{{.*}}, %[[W]], %{{.*}} : f32
# CHECK-NEXT: %[[OUT:.*]] = arith.truncf %[[E]] : f32 to bf16
# CHECK-NEXT: linalg.yield %[[OUT]] : bf16
@run_test
def test_exp_bf16_computes_in_f32():
  print(lower(jnp.exp, [BF16], BF16))


# log1p and expm1 call libm directly (accurate near 0).
# CHECK-LABEL: TEST: test_log1p_expm1_call_libm
# CHECK-DAG: func.func private @log1pf(f32) -> f32
# CHECK-DAG: func.func private @expm1f(f32) -> f32
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[L:.*]] = func.call @log1pf(%[[X]]) : (f32) -> f32
# CHECK-NEXT: %[[E:.*]] = func.call @expm1f(%[[X]]) : (f32) -> f32
# CHECK-NEXT: %[[S:.*]] = arith.addf %[[L]], %[[E]] : f32
# CHECK-NEXT: linalg.yield %[[S]] : f32
@run_test
def test_log1p_expm1_call_libm():
  print(lower(lambda x: jnp.log1p(x) + jnp.expm1(x), [F32], F32))


def math_ops(x, y):
  return (jnp.sin(x) + jnp.cos(x) + jnp.tan(x) + lax.erf(x)
          + jnp.arctan2(x, y) + lax.pow(x, y) + jnp.sqrt(x))


# sin, cos, tan, erf, atan2, pow and sqrt stay math dialect ops in the body;
# the "llvm" stage makes them LLVM intrinsics, except erf, a libm call.
# CHECK-LABEL: TEST: test_math_ops
# CHECK: ^bb0(%[[X:.*]]: f32, %[[Y:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[SIN:.*]] = math.sin %[[X]] : f32
# CHECK-NEXT: %[[COS:.*]] = math.cos %[[X]] : f32
# CHECK-NEXT: %[[A1:.*]] = arith.addf %[[SIN]], %[[COS]] : f32
# CHECK-NEXT: %[[TAN:.*]] = math.tan %[[X]] : f32
# CHECK-NEXT: %[[A2:.*]] = arith.addf %[[A1]], %[[TAN]] : f32
# CHECK-NEXT: %[[ERF:.*]] = math.erf %[[X]] : f32
# CHECK-NEXT: %[[A3:.*]] = arith.addf %[[A2]], %[[ERF]] : f32
# CHECK-NEXT: %[[ATAN2:.*]] = math.atan2 %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[A4:.*]] = arith.addf %[[A3]], %[[ATAN2]] : f32
# CHECK-NEXT: %[[POW:.*]] = math.powf %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[A5:.*]] = arith.addf %[[A4]], %[[POW]] : f32
# CHECK-NEXT: %[[SQRT:.*]] = math.sqrt %[[X]] : f32
# CHECK-NEXT: %[[A6:.*]] = arith.addf %[[A5]], %[[SQRT]] : f32
# CHECK-NEXT: linalg.yield %[[A6]] : f32
#
# CHECK: llvm.func @erff(f32) -> f32
# CHECK: llvm.func @pallas_cpu_entry(
# CHECK: %[[LX:.*]] = llvm.load %{{.*}} : !llvm.ptr -> f32
# CHECK: %[[LY:.*]] = llvm.load %{{.*}} : !llvm.ptr -> f32
# CHECK-NEXT: llvm.intr.sin(%[[LX]]) : (f32) -> f32
# CHECK-NEXT: llvm.intr.cos(%[[LX]]) : (f32) -> f32
# CHECK: llvm.intr.tan(%[[LX]]) : (f32) -> f32
# CHECK: llvm.call @erff(%[[LX]]) : (f32) -> f32
# CHECK: llvm.intr.atan2(%[[LX]], %[[LY]]) : (f32, f32) -> f32
# CHECK: llvm.intr.pow(%[[LX]], %[[LY]]) : (f32, f32) -> f32
# CHECK: llvm.intr.sqrt(%[[LX]]) : (f32) -> f32
@run_test
def test_math_ops():
  print(lower(math_ops, [F32, F32], F32))
  print(lower(math_ops, [F32, F32], F32, stage="llvm"))


# rsqrt is 1 / sqrt(x) (two roundings); jnp.round rounds half to even,
# lax.round's default half away from zero.
# CHECK-LABEL: TEST: test_rsqrt_and_rounding
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[SQ:.*]] = math.sqrt %[[X]] : f32
# CHECK-NEXT: %[[RS:.*]] = arith.divf %[[ONE]], %[[SQ]] : f32
# CHECK-NEXT: %[[EVEN:.*]] = math.roundeven %[[X]] : f32
# CHECK-NEXT: %[[S1:.*]] = arith.addf %[[RS]], %[[EVEN]] : f32
# CHECK-NEXT: %[[AWAY:.*]] = math.round %[[X]] : f32
# CHECK-NEXT: %[[S2:.*]] = arith.addf %[[S1]], %[[AWAY]] : f32
# CHECK-NEXT: linalg.yield %[[S2]] : f32
@run_test
def test_rsqrt_and_rounding():
  print(lower(lambda x: lax.rsqrt(x) + jnp.round(x) + lax.round(x), [F32],
              F32))


# sign: +-0 and NaN fail both ordered comparisons and come back unchanged.
# CHECK-LABEL: TEST: test_sign_f32
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[M1:.*]] = arith.constant -1.000000e+00 : f32
# CHECK-NEXT: %[[POS:.*]] = arith.cmpf ogt, %[[X]], %[[ZERO]] : f32
# CHECK-NEXT: %[[R:.*]] = arith.select %[[POS]], %[[ONE]], %[[X]] : f32
# CHECK-NEXT: %[[NEG:.*]] = arith.cmpf olt, %[[X]], %[[ZERO]] : f32
# CHECK-NEXT: %[[S:.*]] = arith.select %[[NEG]], %[[M1]], %[[R]] : f32
# CHECK-NEXT: linalg.yield %[[S]] : f32
@run_test
def test_sign_f32():
  print(lower(jnp.sign, [F32], F32))


# is_finite: |x| < inf, false for NaN; the i1 is stored as an i8 byte.
# CHECK-LABEL: TEST: test_is_finite
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: i8):
# CHECK-NEXT: %[[INF:.*]] = arith.constant 0x7F800000 : f32
# CHECK-NEXT: %[[ABS:.*]] = math.absf %[[X]] : f32
# CHECK-NEXT: %[[FIN:.*]] = arith.cmpf olt, %[[ABS]], %[[INF]] : f32
# CHECK-NEXT: %[[B:.*]] = arith.extui %[[FIN]] : i1 to i8
# CHECK-NEXT: linalg.yield %[[B]] : i8
@run_test
def test_is_finite():
  print(lower(lax.is_finite, [F32], jnp.bool_))


# nextafter on the bits (XLA's algorithm): step the magnitude by +-1 toward
# y, from 0 to the smallest denormal carrying y's sign; x == y gives y and
# an unordered pair the canonical quiet NaN.
# CHECK-LABEL: TEST: test_nextafter
# CHECK: ^bb0(%[[X:.*]]: f32, %[[Y:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[XB:.*]] = arith.bitcast %[[X]] : f32 to i32
# CHECK-NEXT: %[[YB:.*]] = arith.bitcast %[[Y]] : f32 to i32
# CHECK: %[[XABS:.*]] = arith.andi %[[XB]], %{{.*}} : i32
# CHECK-NEXT: %[[YABS:.*]] = arith.andi %[[YB]], %{{.*}} : i32
# CHECK-NEXT: %[[XSIGN:.*]] = arith.andi %[[XB]], %{{.*}} : i32
# CHECK-NEXT: %[[YSIGN:.*]] = arith.andi %[[YB]], %{{.*}} : i32
# CHECK-NEXT: %[[GT:.*]] = arith.cmpi ugt, %[[XABS]], %[[YABS]] : i32
# CHECK-NEXT: %[[FLIP:.*]] = arith.cmpi ne, %[[XSIGN]], %[[YSIGN]] : i32
# CHECK-NEXT: %[[DOWN:.*]] = arith.ori %[[GT]], %[[FLIP]] : i1
# CHECK-NEXT: %[[M1:.*]] = arith.constant -1 : i32
# CHECK-NEXT: %[[STEP:.*]] = arith.select %[[DOWN]], %[[M1]], %{{.*}} : i32
# CHECK-NEXT: %[[NEXT:.*]] = arith.addi %[[XB]], %[[STEP]] : i32
# CHECK: %[[X_ZERO:.*]] = arith.cmpi eq, %[[XABS]], %{{.*}} : i32
# CHECK-NEXT: %[[R1:.*]] = arith.select %[[X_ZERO]], %{{.*}}, %[[NEXT]] : i32
# CHECK-NEXT: %[[EQ:.*]] = arith.cmpf oeq, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[R2:.*]] = arith.select %[[EQ]], %[[YB]], %[[R1]] : i32
# CHECK-NEXT: %[[UNO:.*]] = arith.cmpf uno, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[QNAN:.*]] = arith.constant 2143289344 : i32
# CHECK-NEXT: %[[R3:.*]] = arith.select %[[UNO]], %[[QNAN]], %[[R2]] : i32
# CHECK-NEXT: %[[R:.*]] = arith.bitcast %[[R3]] : i32 to f32
# CHECK-NEXT: linalg.yield %[[R]] : f32
@run_test
def test_nextafter():
  print(lower(lax.nextafter, [F32, F32], F32))


# erf_inv in 16 bits: XLA's f32 polynomial between one extf and one truncf;
# +-1 gives +-inf.  (Its log1p is math.log1p, which the "llvm" stage
# expands as log(1 + x), not a libm call.)
# CHECK-LABEL: TEST: test_erf_inv_bf16
# CHECK: ^bb0(%[[X:.*]]: bf16, %{{.*}}: bf16):
# CHECK-NEXT: %[[W:.*]] = arith.extf %[[X]] : bf16 to f32
# CHECK-NEXT: %[[NW:.*]] = arith.negf %[[W]] : f32
# CHECK-NEXT: %[[WW:.*]] = arith.mulf %[[W]], %[[NW]] : f32
# CHECK-NEXT: math.log1p %[[WW]] : f32
# CHECK: %[[ABS:.*]] = math.absf %[[W]] : f32
# CHECK-NEXT: %[[C1:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[AT_ONE:.*]] = arith.cmpf oeq, %[[ABS]], %[[C1]] : f32
# CHECK-NEXT: %[[INF:.*]] = arith.constant 0x7F800000 : f32
# CHECK-NEXT: %[[WINF:.*]] = arith.mulf %[[W]], %[[INF]] : f32
# CHECK-NEXT: %[[PW:.*]] = arith.mulf %{{.*}}, %[[W]] : f32
# CHECK-NEXT: %[[R:.*]] = arith.select %[[AT_ONE]], %[[WINF]], %[[PW]] : f32
# CHECK-NEXT: %[[OUT:.*]] = arith.truncf %[[R]] : f32 to bf16
# CHECK-NEXT: linalg.yield %[[OUT]] : bf16
@run_test
def test_erf_inv_bf16():
  print(lower(lax.erf_inv, [BF16], BF16))


# Comparisons are ordered (false on NaN) except ne, which is unordered
# (NaN != NaN is true), as in XLA.  The result is an i1 in the body and a
# byte in memory.
# CHECK-LABEL: TEST: test_float_comparisons
# CHECK: ^bb0(%[[X:.*]]: f32, %[[Y:.*]]: f32, %{{.*}}: i8):
# CHECK-NEXT: %[[EQ:.*]] = arith.cmpf oeq, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[NE:.*]] = arith.cmpf une, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[A:.*]] = arith.xori %[[EQ]], %[[NE]] : i1
# CHECK-NEXT: %[[LT:.*]] = arith.cmpf olt, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[B:.*]] = arith.xori %[[A]], %[[LT]] : i1
# CHECK-NEXT: %[[LE:.*]] = arith.cmpf ole, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[C:.*]] = arith.xori %[[B]], %[[LE]] : i1
# CHECK-NEXT: %[[GT:.*]] = arith.cmpf ogt, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[D:.*]] = arith.xori %[[C]], %[[GT]] : i1
# CHECK-NEXT: %[[GE:.*]] = arith.cmpf oge, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[E:.*]] = arith.xori %[[D]], %[[GE]] : i1
# CHECK-NEXT: %[[M:.*]] = arith.extui %[[E]] : i1 to i8
# CHECK-NEXT: linalg.yield %[[M]] : i8
@run_test
def test_float_comparisons():
  print(lower(lambda x, y: (x == y) ^ (x != y) ^ (x < y) ^ (x <= y)
              ^ (x > y) ^ (x >= y), [F32, F32], jnp.bool_))


# Float max/min propagate NaN: arith.maximumf/minimumf (not maxnumf, which
# would return the other operand); clamp is min(max(x, lo), hi) with the
# same ops, and signed/unsigned integer variants for ints.
# CHECK-LABEL: TEST: test_max_min_clamp
# CHECK: ^bb0(%[[X:.*]]: f32, %[[Y:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[MX:.*]] = arith.maximumf %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[MN:.*]] = arith.minimumf %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[S:.*]] = arith.addf %[[MX]], %[[MN]] : f32
# CHECK-NEXT: %[[CL:.*]] = arith.maximumf %[[S]], %{{.*}} : f32
# CHECK-NEXT: %[[CH:.*]] = arith.minimumf %[[CL]], %{{.*}} : f32
# CHECK-NEXT: linalg.yield %[[CH]] : f32
# CHECK-NOT: maxnumf
# CHECK-NOT: minnumf
#
# CHECK: ^bb0(%[[LO_I:.*]]: i32, %[[X_I:.*]]: i32, %[[HI_I:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: %[[A:.*]] = arith.maxsi %[[X_I]], %[[LO_I]] : i32
# CHECK-NEXT: %[[B:.*]] = arith.minsi %[[A]], %[[HI_I]] : i32
# CHECK-NEXT: linalg.yield %[[B]] : i32
@run_test
def test_max_min_clamp():
  print(lower(lambda x, y: lax.clamp(F32(-1), lax.max(x, y) + lax.min(x, y),
                                     F32(2)), [F32, F32], F32))
  print(lower(lambda lo, x, hi: lax.clamp(lo, x, hi), [I32, I32, I32], I32))


# f32 -> bf16 rounds to nearest even on the bits, as XLA does: an f32
# denormal stays a bf16 denormal (LLVM's fptrunc may become vcvtneps2bf16,
# which flushes it), and a NaN becomes the quiet NaN of its sign.
# CHECK-LABEL: TEST: test_convert_f32_to_bf16
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: bf16):
# CHECK-NEXT: %[[BITS:.*]] = arith.bitcast %[[X]] : f32 to i32
# CHECK-NEXT: %[[C16:.*]] = arith.constant 16 : i32
# CHECK-NEXT: %[[TOP:.*]] = arith.shrui %[[BITS]], %[[C16]] : i32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-NEXT: %[[LSB:.*]] = arith.andi %[[TOP]], %[[ONE]] : i32
# CHECK-NEXT: %[[HALF:.*]] = arith.constant 32767 : i32
# CHECK-NEXT: %[[BIAS:.*]] = arith.addi %[[HALF]], %[[LSB]] : i32
# CHECK-NEXT: %[[SUM:.*]] = arith.addi %[[BITS]], %[[BIAS]] : i32
# CHECK-NEXT: %[[C16B:.*]] = arith.constant 16 : i32
# CHECK-NEXT: %[[ROUNDED:.*]] = arith.shrui %[[SUM]], %[[C16B]] : i32
# CHECK-NEXT: %[[C16C:.*]] = arith.constant 16 : i32
# CHECK-NEXT: %[[TOP2:.*]] = arith.shrui %[[BITS]], %[[C16C]] : i32
# CHECK-NEXT: %[[SIGN_MASK:.*]] = arith.constant 32768 : i32
# CHECK-NEXT: %[[SIGN:.*]] = arith.andi %[[TOP2]], %[[SIGN_MASK]] : i32
# CHECK-NEXT: %[[ABS_MASK:.*]] = arith.constant 2147483647 : i32
# CHECK-NEXT: %[[ABS:.*]] = arith.andi %[[BITS]], %[[ABS_MASK]] : i32
# CHECK-NEXT: %[[INF:.*]] = arith.constant 2139095040 : i32
# CHECK-NEXT: %[[IS_NAN:.*]] = arith.cmpi ugt, %[[ABS]], %[[INF]] : i32
# CHECK-NEXT: %[[QNAN:.*]] = arith.constant 32704 : i32
# CHECK-NEXT: %[[NAN:.*]] = arith.ori %[[SIGN]], %[[QNAN]] : i32
# CHECK-NEXT: %[[R:.*]] = arith.select %[[IS_NAN]], %[[NAN]], %[[ROUNDED]] : i32
# CHECK-NEXT: %[[R16:.*]] = arith.trunci %[[R]] : i32 to i16
# CHECK-NEXT: %[[B:.*]] = arith.bitcast %[[R16]] : i16 to bf16
# CHECK-NEXT: linalg.yield %[[B]] : bf16
# CHECK-NOT: arith.truncf
@run_test
def test_convert_f32_to_bf16():
  print(lower(lambda x: x.astype(BF16), [F32], BF16))


# float -> int saturates, NaN -> 0 (XLA; fptosi/fptoui alone give poison out
# of range).  Unsigned: everything <= 0 is 0.  16-bit floats go through
# f32.  (f32 -> i32 is in int_semantics.py.)
# CHECK-LABEL: TEST: test_convert_bf16_to_u8_saturates
# CHECK: ^bb0(%[[X:.*]]: bf16, %{{.*}}: i8):
# CHECK-NEXT: %[[W:.*]] = arith.extf %[[X]] : bf16 to f32
# CHECK-NEXT: %[[R:.*]] = arith.fptoui %[[W]] : f32 to i8
# CHECK-NEXT: %[[FMAX:.*]] = arith.constant 2.560000e+02 : f32
# CHECK-NEXT: %[[FMIN:.*]] = arith.constant 0.000000e+00 : f32
# CHECK-NEXT: %[[HI:.*]] = arith.cmpf oge, %[[W]], %[[FMAX]] : f32
# CHECK-NEXT: %[[UMAX:.*]] = arith.constant -1 : i8
# CHECK-NEXT: %[[R1:.*]] = arith.select %[[HI]], %[[UMAX]], %[[R]] : i8
# CHECK-NEXT: %[[LO:.*]] = arith.cmpf ole, %[[W]], %[[FMIN]] : f32
# CHECK-NEXT: %[[Z:.*]] = arith.constant 0 : i8
# CHECK-NEXT: %[[R2:.*]] = arith.select %[[LO]], %[[Z]], %[[R1]] : i8
# CHECK-NEXT: %[[NAN:.*]] = arith.cmpf uno, %[[W]], %[[W]] : f32
# CHECK-NEXT: %[[Z2:.*]] = arith.constant 0 : i8
# CHECK-NEXT: %[[R3:.*]] = arith.select %[[NAN]], %[[Z2]], %[[R2]] : i8
# CHECK-NEXT: linalg.yield %[[R3]] : i8
@run_test
def test_convert_bf16_to_u8_saturates():
  print(lower(lambda x: x.astype(jnp.uint8), [BF16], jnp.uint8))


# Bools: bytes in memory (i8 block arguments), i1 in between: trunci on
# the way in, extui on the way out; not is xor with true.
# CHECK-LABEL: TEST: test_bool_ops
# CHECK: ins(%{{.*}}, %{{.*}} : memref<8x128xi8, {{.*}}>, memref<8x128xi8, {{.*}}>) outs(%{{.*}} : memref<8x128xi8, {{.*}}>)
# CHECK-NEXT: ^bb0(%[[A:.*]]: i8, %[[B:.*]]: i8, %{{.*}}: i8):
# CHECK-NEXT: %[[A1:.*]] = arith.trunci %[[A]] : i8 to i1
# CHECK-NEXT: %[[B1:.*]] = arith.trunci %[[B]] : i8 to i1
# CHECK-NEXT: %[[TRUE:.*]] = arith.constant true
# CHECK-NEXT: %[[NB:.*]] = arith.xori %[[B1]], %[[TRUE]] : i1
# CHECK-NEXT: %[[AND:.*]] = arith.andi %[[A1]], %[[NB]] : i1
# CHECK-NEXT: %[[OR:.*]] = arith.ori %[[AND]], %[[B1]] : i1
# CHECK-NEXT: %[[M:.*]] = arith.extui %[[OR]] : i1 to i8
# CHECK-NEXT: linalg.yield %[[M]] : i8
@run_test
def test_bool_ops():
  print(lower(lambda a, b: (a & ~b) | b, [jnp.bool_, jnp.bool_], jnp.bool_))


# select_n with a boolean predicate is one arith.select (case 1 when true);
# with an int32 index, a chain of cmpi eq / select from case 0 up.
# CHECK-LABEL: TEST: test_select_n
# CHECK: ^bb0(%[[X:.*]]: f32, %[[Y:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[P:.*]] = arith.cmpf ogt, %[[X]], %[[Y]] : f32
# CHECK-NEXT: %[[S:.*]] = arith.select %[[P]], %[[Y]], %[[X]] : f32
# CHECK-NEXT: linalg.yield %[[S]] : f32
#
# CHECK: ^bb0(%[[W:.*]]: i32, %[[V:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: %[[V2:.*]] = arith.muli %[[V]], %{{.*}} : i32
# CHECK-NEXT: %[[V3:.*]] = arith.muli %[[V]], %{{.*}} : i32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-NEXT: %[[IS1:.*]] = arith.cmpi eq, %[[W]], %[[ONE]] : i32
# CHECK-NEXT: %[[R1:.*]] = arith.select %[[IS1]], %[[V2]], %[[V]] : i32
# CHECK-NEXT: %[[TWO:.*]] = arith.constant 2 : i32
# CHECK-NEXT: %[[IS2:.*]] = arith.cmpi eq, %[[W]], %[[TWO]] : i32
# CHECK-NEXT: %[[R2:.*]] = arith.select %[[IS2]], %[[V3]], %[[R1]] : i32
# CHECK-NEXT: linalg.yield %[[R2]] : i32
@run_test
def test_select_n():
  print(lower(lambda x, y: lax.select_n(x > y, x, y), [F32, F32], F32))
  print(lower(lambda w, v: lax.select_n(w, v, v * 2, v * 3), [I32, I32], I32))


# integer_pow by square-and-multiply (x**5 = x * (x*x)**2: three
# multiplies); a negative exponent divides 1 by the positive power.
# CHECK-LABEL: TEST: test_integer_pow
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[X2:.*]] = arith.mulf %[[X]], %[[X]] : f32
# CHECK-NEXT: %[[X4:.*]] = arith.mulf %[[X2]], %[[X2]] : f32
# CHECK-NEXT: %[[X5:.*]] = arith.mulf %[[X]], %[[X4]] : f32
# CHECK-NEXT: %[[Y2:.*]] = arith.mulf %[[X]], %[[X]] : f32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[INV:.*]] = arith.divf %[[ONE]], %[[Y2]] : f32
# CHECK-NEXT: %[[S:.*]] = arith.addf %[[X5]], %[[INV]] : f32
# CHECK-NEXT: linalg.yield %[[S]] : f32
@run_test
def test_integer_pow():
  print(lower(lambda x: lax.integer_pow(x, 5) + lax.integer_pow(x, -2), [F32],
              F32))


# pl.reciprocal(approx=True) is interpret mode's value, 1 / f32(bf16(x));
# approx=False is an IEEE division.
# CHECK-LABEL: TEST: test_reciprocal
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[XB:.*]] = arith.truncf %[[X]] : f32 to bf16
# CHECK-NEXT: %[[XW:.*]] = arith.extf %[[XB]] : bf16 to f32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[APPROX:.*]] = arith.divf %[[ONE]], %[[XW]] : f32
# CHECK-NEXT: %[[ONE2:.*]] = arith.constant 1.000000e+00 : f32
# CHECK-NEXT: %[[EXACT:.*]] = arith.divf %[[ONE2]], %[[X]] : f32
# CHECK-NEXT: %[[S:.*]] = arith.addf %[[APPROX]], %[[EXACT]] : f32
# CHECK-NEXT: linalg.yield %[[S]] : f32
@run_test
def test_reciprocal():
  print(lower(lambda x: pl.reciprocal(x, approx=True)
              + pl.reciprocal(x, approx=False), [F32], F32))
