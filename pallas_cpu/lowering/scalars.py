"""Scalar arith helpers shared by the rules and the views below them:
constants, compares, bit-level reinterpretation and resizing, bf16
rounding and XLA's dtype conversion of one register value.

Everything here emits scalar ops at the current insertion point, so the
same helper serves straight-line code and the bodies of fused loops.
"""
from __future__ import annotations

import numpy as np
from mlir import ir
from mlir.dialects import arith

from pallas_cpu.lowering import fp8, types


# -- types and constants ---------------------------------------------------------
def int_type(bits: int) -> ir.Type:
  return ir.IntegerType.get_signless(bits)


def width(t: ir.Type) -> int:
  """The bit width of an integer or float type."""
  if isinstance(t, ir.IntegerType):
    return ir.IntegerType(t).width
  return ir.FloatType(t).width


def const(t: ir.Type, value) -> ir.Value:
  """An arith constant of element type ``t``; integers are taken modulo
  2**width (so unsigned values and -1 both fit), i1 true is -1."""
  if isinstance(t, ir.IntegerType):
    bits = ir.IntegerType(t).width
    v = int(value) % (2 ** bits)
    if bits > 1 and v >= 2 ** (bits - 1):
      v -= 2 ** bits
    if bits == 1:
      v = -1 if v else 0
    return arith.constant(t, ir.IntegerAttr.get(t, v))
  return arith.constant(t, ir.FloatAttr.get(t, float(value)))


def const_like(v: ir.Value, value) -> ir.Value:
  """A constant of ``v``'s type."""
  return const(v.type, value)


def i32(value: int) -> ir.Value:
  return const(int_type(32), value)


def i64(value: int) -> ir.Value:
  return const(int_type(64), value)


# -- compares ----------------------------------------------------------------------
def cmpi(pred: str, a: ir.Value, b: ir.Value) -> ir.Value:
  """``arith.cmpi`` by predicate name: "eq", "slt", "uge"..."""
  return arith.cmpi(getattr(arith.CmpIPredicate, pred), a, b)


def cmpf(pred: str, a: ir.Value, b: ir.Value) -> ir.Value:
  """``arith.cmpf`` by predicate name: "oeq", "olt", "uno"... (any case)."""
  return arith.cmpf(getattr(arith.CmpFPredicate, pred.upper()), a, b)


# -- bits ----------------------------------------------------------------------------
def to_bits(v: ir.Value) -> ir.Value:
  """A float as the signless integer of its width (integers unchanged)."""
  if isinstance(v.type, ir.IntegerType):
    return v
  return arith.bitcast(int_type(width(v.type)), v)


def from_bits(v: ir.Value, t: ir.Type) -> ir.Value:
  """The integer ``v`` reinterpreted as ``t`` (of the same width)."""
  return v if v.type == t else arith.bitcast(t, v)


def resize(v: ir.Value, bits: int) -> ir.Value:
  """Zero-extends or truncates the integer ``v`` to ``bits`` bits."""
  w = width(v.type)
  if w < bits:
    return arith.extui(int_type(bits), v)
  if w > bits:
    return arith.trunci(int_type(bits), v)
  return v


def f32_to_bf16(v: ir.Value) -> ir.Value:
  """An f32 rounded to bf16 (nearest even) on its bits, as XLA does: an f32
  denormal stays a bf16 denormal (LLVM's ``fptrunc`` may use
  ``vcvtneps2bf16``, which flushes it), and NaN becomes the quiet NaN of
  its sign."""
  t = int_type(32)
  bits = to_bits(v)
  lsb = arith.andi(arith.shrui(bits, const(t, 16)), const(t, 1))
  rounded = arith.shrui(arith.addi(bits, arith.addi(const(t, 0x7FFF), lsb)),
                        const(t, 16))
  sign = arith.andi(arith.shrui(bits, const(t, 16)), const(t, 0x8000))
  nan = cmpi("ugt", arith.andi(bits, const(t, 0x7FFFFFFF)),
             const(t, 0x7F800000))
  out = arith.select(nan, arith.ori(sign, const(t, 0x7FC0)), rounded)
  return from_bits(arith.trunci(int_type(16), out), ir.BF16Type.get())


# -- dtype conversion ------------------------------------------------------------------
def convert(v: ir.Value, src, dst) -> ir.Value:
  """Converts one scalar from JAX dtype ``src`` to ``dst`` as XLA does."""
  src, dst = np.dtype(src), np.dtype(dst)
  if src == dst:
    return v
  f32 = np.dtype(np.float32)
  if fp8.is_fp8(src):  # its register already holds the exact f32 value
    return convert(v, f32, dst)
  if fp8.is_fp8(dst):
    return fp8.round_to(convert(v, src, f32), dst)
  out_t = types.element_type(dst)
  if types.is_bool(dst):
    if types.is_float(src) and types.bitwidth(src) == 16:
      # XLA tests the bits of a 16-bit float, so a bf16 denormal is true;
      # a float compare would see it flushed to zero (denormals are flushed).
      bits = arith.bitcast(int_type(16), v)
      return cmpi("ne", arith.andi(bits, const_like(bits, 0x7FFF)),
                  const_like(bits, 0))
    zero = const_like(v, 0)
    return cmpf("une", v, zero) if types.is_float(src) else cmpi("ne", v, zero)
  if types.is_float(src) and types.is_float(dst):
    if types.bitwidth(src) < types.bitwidth(dst):
      return arith.extf(out_t, v)
    if types.bitwidth(src) == 64 and out_t == ir.BF16Type.get():
      # XLA narrows f64 to bf16 through f32 (rounding twice, f32 denormals
      # flushed); LLVM's direct route needs __truncdfbf2, which no library
      # here has.
      return convert(arith.truncf(ir.F32Type.get(), v), f32, dst)
    if out_t == ir.BF16Type.get():  # from f32, or exactly from f16
      if src != f32:
        v = arith.extf(ir.F32Type.get(), v)
      return f32_to_bf16(v)
    if types.bitwidth(src) > types.bitwidth(dst):
      return arith.truncf(out_t, v)
    return arith.truncf(out_t, arith.extf(ir.F32Type.get(), v))  # bf16->f16
  if not types.is_float(src) and not types.is_float(dst):
    sb, db = types.bitwidth(src), types.bitwidth(dst)
    if sb < db:
      unsigned = types.is_unsigned(src) or types.is_bool(src)
      return arith.extui(out_t, v) if unsigned else arith.extsi(out_t, v)
    if sb > db:
      return arith.trunci(out_t, v)
    return v
  if not types.is_float(src):  # int -> float
    unsigned = types.is_unsigned(src) or types.is_bool(src)
    return arith.uitofp(out_t, v) if unsigned else arith.sitofp(out_t, v)
  # float -> int saturates, NaN -> 0 (XLA's semantics; fptosi alone is UB).
  bits = types.bitwidth(dst)
  info = types.iinfo(dst)
  if types.bitwidth(src) < 32:
    v = arith.extf(ir.F32Type.get(), v)
  r = arith.fptoui(out_t, v) if types.is_unsigned(dst) else arith.fptosi(out_t, v)
  hi = const_like(v, float(2.0 ** (bits if types.is_unsigned(dst) else bits - 1)))
  lo = const_like(v, float(info.min))
  r = arith.select(cmpf("oge", v, hi), const_like(r, int(info.max)), r)
  r = arith.select(cmpf("olt", v, lo) if not types.is_unsigned(dst)
                   else cmpf("ole", v, lo), const_like(r, int(info.min)), r)
  return arith.select(cmpf("uno", v, v), const_like(r, 0), r)
