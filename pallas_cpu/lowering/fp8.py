"""float8 types: bytes in memory, f32 in registers.

LLVM has no 8-bit float type, so an fp8 value is computed in f32 and every
result is rounded to the format (round to nearest even), as XLA computes
fp8 arithmetic; loads decode and stores encode the byte with integer ops.
Formats: float8_e4m3fn (no inf; 0x7F/0xFF are NaN; overflow gives NaN),
float8_e5m2 (IEEE-like, with inf), float8_e4m3b11fnuz (bias 11; no inf, no
negative zero; 0x80 is the only NaN).
"""
from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
from mlir import ir
from mlir.dialects import arith, math


@dataclasses.dataclass(frozen=True)
class Format:
  exp_bits: int
  mant_bits: int
  bias: int
  kind: str  # "fn" | "ieee" | "fnuz"

  @property
  def max_code(self) -> int:
    """The largest finite magnitude's code."""
    return {"fn": 0x7E, "ieee": 0x7B, "fnuz": 0x7F}[self.kind]


FORMATS = {
    np.dtype(ml_dtypes.float8_e4m3fn): Format(4, 3, 7, "fn"),
    np.dtype(ml_dtypes.float8_e5m2): Format(5, 2, 15, "ieee"),
    np.dtype(ml_dtypes.float8_e4m3b11fnuz): Format(4, 3, 11, "fnuz"),
}


def is_fp8(dtype) -> bool:
  try:
    return np.dtype(dtype) in FORMATS
  except TypeError:
    return False


def _i32(c: int) -> ir.Value:
  t = ir.IntegerType.get_signless(32)
  return arith.constant(t, ir.IntegerAttr.get(t, c))


def _f32(c: float) -> ir.Value:
  t = ir.F32Type.get()
  return arith.constant(t, ir.FloatAttr.get(t, c))


def _eq(a, b):
  return arith.cmpi(arith.CmpIPredicate.eq, a, b)


def decode(byte: ir.Value, dtype) -> ir.Value:
  """i8 bits -> the f32 value."""
  fmt = FORMATS[np.dtype(dtype)]
  f32, i32 = ir.F32Type.get(), ir.IntegerType.get_signless(32)
  b = arith.extui(i32, byte)
  m_mask = (1 << fmt.mant_bits) - 1
  e_mask = (1 << fmt.exp_bits) - 1
  sign = arith.andi(b, _i32(0x80))
  exp = arith.andi(arith.shrui(b, _i32(fmt.mant_bits)), _i32(e_mask))
  mant = arith.andi(b, _i32(m_mask))
  # Normal: rebias the exponent, widen the mantissa, in f32's bit layout.
  normal_bits = arith.ori(
      arith.shli(arith.addi(exp, _i32(127 - fmt.bias)), _i32(23)),
      arith.shli(mant, _i32(23 - fmt.mant_bits)))
  normal = arith.bitcast(f32, normal_bits)
  # Subnormal: mant * 2**(1 - bias - M).
  sub = arith.mulf(arith.sitofp(f32, mant),
                   _f32(2.0 ** (1 - fmt.bias - fmt.mant_bits)))
  mag = arith.select(_eq(exp, _i32(0)), sub, normal)
  if fmt.kind == "ieee":
    top = _eq(exp, _i32(e_mask))
    special = arith.select(_eq(mant, _i32(0)), _f32(float("inf")),
                           _f32(float("nan")))
    mag = arith.select(top, special, mag)
  elif fmt.kind == "fn":
    is_nan = arith.andi(_eq(exp, _i32(e_mask)), _eq(mant, _i32(m_mask)))
    mag = arith.select(is_nan, _f32(float("nan")), mag)
  signed = arith.bitcast(f32, arith.ori(arith.bitcast(i32, mag),
                                        arith.shli(sign, _i32(24))))
  if fmt.kind == "fnuz":
    signed = arith.select(_eq(b, _i32(0x80)), _f32(float("nan")), signed)
  return signed


def encode(v: ir.Value, dtype) -> ir.Value:
  """f32 -> i8 bits, rounding to nearest even; overflow to inf (e5m2) or
  NaN (the fn/fnuz formats), as ml_dtypes and XLA convert."""
  fmt = FORMATS[np.dtype(dtype)]
  i32, i8 = ir.IntegerType.get_signless(32), ir.IntegerType.get_signless(8)
  bits = arith.bitcast(i32, v)
  sign = arith.andi(arith.shrui(bits, _i32(24)), _i32(0x80))
  mag_bits = arith.andi(bits, _i32(0x7FFFFFFF))
  mag = arith.bitcast(ir.F32Type.get(), mag_bits)
  shift = 23 - fmt.mant_bits
  # Normal range: round the f32 mantissa to M bits (ties to even), rebias.
  lsb = arith.andi(arith.shrui(mag_bits, _i32(shift)), _i32(1))
  rounded = arith.addi(mag_bits, arith.addi(_i32((1 << (shift - 1)) - 1), lsb))
  code = arith.subi(arith.shrui(rounded, _i32(shift)),
                    _i32((127 - fmt.bias) << fmt.mant_bits))
  # Subnormal range: mag / 2**(1 - bias - M), rounded to even.
  scaled = arith.mulf(mag, _f32(2.0 ** (fmt.bias - 1 + fmt.mant_bits)))
  sub_code = arith.fptosi(i32, math.roundeven(scaled))
  min_normal = 2.0 ** (1 - fmt.bias)
  is_sub = arith.cmpf(arith.CmpFPredicate.OLT, mag, _f32(min_normal))
  code = arith.select(is_sub, sub_code, code)
  overflow = arith.cmpi(arith.CmpIPredicate.sgt, code, _i32(fmt.max_code))
  too_big = _i32(0x7C if fmt.kind == "ieee" else 0x7F)
  is_nan = arith.cmpf(arith.CmpFPredicate.UNO, v, v)
  nan_code = _i32(0x7E if fmt.kind == "ieee" else 0x7F)
  if fmt.kind == "fnuz":
    # One NaN (0x80), no negative zero, overflow is NaN.
    code = arith.select(overflow, _i32(0x80), arith.ori(code, sign))
    code = arith.select(_eq(code, _i32(0x80)), _i32(0), code)  # -0 -> +0
    code = arith.select(overflow, _i32(0x80), code)
    code = arith.select(is_nan, _i32(0x80), code)
    return arith.trunci(i8, code)
  code = arith.select(overflow, too_big, code)
  code = arith.select(is_nan, nan_code, code)
  return arith.trunci(i8, arith.ori(code, sign))


def round_to(v: ir.Value, dtype) -> ir.Value:
  """An f32 value rounded to the fp8 format (and kept in f32)."""
  return decode(encode(v, dtype), dtype)
