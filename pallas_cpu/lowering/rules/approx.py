"""Vectorizable f32 approximations of exp, log and tanh.

libm's scalar expf/logf/tanhf calls cannot be vectorized by LLVM here (no
vector math library is linked into the kernels), so a fused loop that
calls them runs one element at a time.  exp and log are the classic Cephes
single-precision algorithms written in arith ops -- range reduction, a short
polynomial, exponent arithmetic on the bits -- so LLVM vectorizes the whole
fused loop; they are within 2 ulp of the correctly rounded result over the
whole f32 range (tested in test/py/test_approx.py), close to what XLA's own
CPU approximations give.  tanh is XLA's own CPU approximation (a rational
function, one division), computed in the same operations: bit for bit what
jnp.tanh gives, max 4.9 ulp as XLA's.
"""
from __future__ import annotations

from mlir import ir
from mlir.dialects import arith, math

from pallas_cpu.lowering.scalars import cmpf, const_like, i32


def _poly(x: ir.Value, coeffs) -> ir.Value:
  """Horner: coeffs from the highest degree down."""
  acc = const_like(x, coeffs[0])
  for c in coeffs[1:]:
    acc = arith.addf(arith.mulf(acc, x), const_like(x, c))
  return acc


def _round_small(y: ir.Value) -> ir.Value:
  """floor(y + 0.5) as i32 for |y| < 2**30, in plain arith (math.floor
  would become a libm call in our pipeline, which runs math-to-libm first)."""
  i32_t = ir.IntegerType.get_signless(32)
  h = arith.addf(y, const_like(y, 0.5))
  t = arith.fptosi(i32_t, h)                        # truncates toward zero
  back = arith.sitofp(y.type, t)
  return arith.select(cmpf("OGT", back, h), arith.subi(t, i32(1)), t)


def _pow2(n: ir.Value) -> ir.Value:
  """2**n for an i32 n in [-126, 127], built from the exponent bits."""
  bits = arith.shli(arith.addi(n, i32(127)), i32(23))
  return arith.bitcast(ir.F32Type.get(), bits)


def exp_f32(x: ir.Value) -> ir.Value:
  f32 = ir.F32Type.get()
  # exp(x) = 2**n * exp(r), n = round(x / ln2), |r| <= ln2 / 2.
  xc = arith.minimumf(arith.maximumf(x, const_like(x, -104.0)),
                      const_like(x, 89.0))
  n = _round_small(arith.mulf(xc, const_like(x, 1.44269504088896341)))
  n_f = arith.sitofp(f32, n)
  r = arith.subf(xc, arith.mulf(n_f, const_like(x, 0.693359375)))
  r = arith.subf(r, arith.mulf(n_f, const_like(x, -2.12194440e-4)))
  p = _poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1])
  e_r = arith.addf(arith.addf(arith.mulf(arith.mulf(p, r), r), r),
                   const_like(x, 1.0))
  # 2**n in two halves so that results down to the denormals are exact.
  n1 = arith.shrsi(n, i32(1))
  n2 = arith.subi(n, n1)
  y = arith.mulf(arith.mulf(e_r, _pow2(n1)), _pow2(n2))
  y = arith.select(cmpf("OGT", x, const_like(x, 88.72283935546875)),
                   const_like(x, float("inf")), y)
  y = arith.select(cmpf("OLT", x, const_like(x, -103.972084)),
                   const_like(x, 0.0), y)
  return arith.select(cmpf("UNO", x, x), x, y)


def log_f32(x: ir.Value) -> ir.Value:
  f32 = ir.F32Type.get()
  i32_t = ir.IntegerType.get_signless(32)
  # Normalize denormals: scale by 2**23 and correct the exponent.
  tiny = cmpf("OLT", x, const_like(x, 1.17549435e-38))
  xs = arith.select(tiny, arith.mulf(x, const_like(x, 8388608.0)), x)
  bias = arith.select(tiny, i32(23), i32(0))
  bits = arith.bitcast(i32_t, xs)
  e = arith.subi(arith.shrui(bits, i32(23)), i32(126))
  e = arith.subi(e, bias)
  # Mantissa in [0.5, 1).
  m = arith.bitcast(f32, arith.ori(arith.andi(bits, i32(0x007FFFFF)),
                                   i32(0x3F000000)))
  # If m < sqrt(1/2): m = 2m, e -= 1  -> m in [sqrt(1/2), sqrt(2)).
  small = cmpf("OLT", m, const_like(x, 0.707106781186547524))
  e = arith.select(small, arith.subi(e, i32(1)), e)
  m = arith.select(small, arith.addf(m, m), m)
  t = arith.subf(m, const_like(x, 1.0))
  z = arith.mulf(t, t)
  p = _poly(t, [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1,
                -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1])
  y = arith.mulf(arith.mulf(p, t), z)
  e_f = arith.sitofp(f32, e)
  y = arith.addf(y, arith.mulf(e_f, const_like(x, -2.12194440e-4)))
  y = arith.subf(y, arith.mulf(z, const_like(x, 0.5)))
  y = arith.addf(arith.addf(t, y),
                 arith.mulf(e_f, const_like(x, 0.693359375)))
  # Special values: log(0) = -inf, log(<0) = NaN, log(inf) = inf, NaN.
  y = arith.select(cmpf("OEQ", x, const_like(x, 0.0)),
                   const_like(x, float("-inf")), y)
  y = arith.select(cmpf("OLT", x, const_like(x, 0.0)),
                   const_like(x, float("nan")), y)
  y = arith.select(cmpf("OEQ", x, const_like(x, float("inf"))), x, y)
  return arith.select(cmpf("UNO", x, x), x, y)


# XLA's f32 tanh on CPU (openxla/xla, xla/codegen/intrinsic/tanh.cc,
# EmitFastTanh with_fma=true; the same approximation as Eigen's ptanh_float,
# Eigen/src/Core/arch/Default/GenericPacketMathFunctions.h): tanh(x) ~
# x * P(x^2) / Q(x^2), P of degree 6 and Q of degree 3 in x^2, Horner steps
# fused (XLA's IR allows contraction, so every a*b+c of the two polynomials
# is one FMA on an FMA machine; math.fma is llvm.intr.fma, fused at every
# LLVM level).  The input is clamped to +-7.99881172 first, the smallest
# float where the FMA evaluation gives exactly +-1 (unclamped, some inputs
# from 8.13 up would give more than 1), with XLA's fast min/max (fcmp
# uge/ule + select: a NaN input stays NaN and the quotient is that NaN).
# XLA's last select, |x| >= 20 -> copysign(1, x), is left out: after the
# clamp those inputs already give +-1.  |x| < 0.0004 returns x itself
# (tanh(x) = x to f32 precision there; it also keeps -0 and denormals).
# The same operations in the same order as XLA's, so results equal
# jnp.tanh's (and interpret=True's) bit for bit, NaN payloads included
# (checked on all 2**32 inputs); accuracy is XLA's: max 4.90 ulp of the
# correctly rounded tanh over all f32 (at x = 5.126039), where the
# exp-based formula this replaced was within 2 ulp at ~2.2x the time.
_TANH_CLAMP = 7.99881172180175781
_TANH_P = [-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03]
_TANH_Q = [1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
           4.89352518554385e-03]


def _poly_fma(z: ir.Value, coeffs) -> ir.Value:
  """Horner with each step one fused multiply-add: coeffs highest first."""
  acc = const_like(z, coeffs[0])
  for c in coeffs[1:]:
    acc = math.fma(z, acc, const_like(z, c))
  return acc


def tanh_f32(x: ir.Value) -> ir.Value:
  lo, hi = const_like(x, -_TANH_CLAMP), const_like(x, _TANH_CLAMP)
  xc = arith.select(cmpf("UGE", x, lo), x, lo)
  xc = arith.select(cmpf("ULE", xc, hi), xc, hi)
  z = arith.mulf(xc, xc)
  num = arith.mulf(xc, _poly_fma(z, _TANH_P))
  y = arith.divf(num, _poly_fma(z, _TANH_Q))
  tiny = cmpf("OLT", math.absf(x), const_like(x, 0.0004))
  return arith.select(tiny, x, y)
