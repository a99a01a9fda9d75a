"""Elementwise arithmetic, comparison, logical, bitwise and math primitives,
with XLA's semantics (integer division by zero, shift overflow, saturating
float->int conversion) so results match ``jnp`` and interpret mode."""
from __future__ import annotations

import numpy as np
from jax._src.lax import lax
from jax._src.lax import special
from mlir import ir
from mlir.dialects import arith, math

from pallas_cpu.lowering import types, values
from pallas_cpu.lowering.context import call_external
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules import approx
from pallas_cpu.lowering.rules.common import elementwise
from pallas_cpu.lowering.scalars import cmpf, cmpi, const_like, convert


def _in_dtype(ctx, i=0):
  return np.dtype(ctx.avals_in[i].dtype)


def _select(c, a, b):
  return arith.select(c, a, b)


# -- arithmetic ---------------------------------------------------------------
def binary(float_op, int_op, uint_op=None):
  """The rule of a binary primitive: ``float_op``, ``int_op`` or
  ``uint_op`` (bool and unsigned; default ``int_op``) by the operands'
  dtype, applied pointwise."""
  def rule(ctx, x, y, **_):
    dt = _in_dtype(ctx)
    if types.is_float(dt):
      op = float_op
    elif types.is_unsigned(dt) or types.is_bool(dt):
      op = uint_op or int_op
    else:
      op = int_op
    return elementwise(ctx, lambda a: op(a[0], a[1]), [x, y])
  return rule


# Float ops carry no fast-math flags, not even `contract`: every op rounds
# once, as IEEE says.  XLA's CPU backend does contract a*b+c into an FMA in
# some fusions and not in others (interpret mode and plain jnp disagree in
# the last bit), so strict rounding is the one reproducible choice.
register(lax.add_p)(binary(arith.addf, arith.addi))
register(lax.sub_p)(binary(arith.subf, arith.subi))
register(lax.mul_p)(binary(arith.mulf, arith.muli))
register(lax.max_p)(binary(arith.maximumf, arith.maxsi, arith.maxui))
register(lax.min_p)(binary(arith.minimumf, arith.minsi, arith.minui))


def _sdiv(x, y):
  # XLA: x / 0 == -1 and INT_MIN / -1 == INT_MIN; never trap.
  bits = ir.IntegerType(x.type).width
  zero, one, m1 = const_like(x, 0), const_like(x, 1), const_like(x, -1)
  int_min = const_like(x, -(2 ** (bits - 1)))
  by_zero = cmpi("eq", y, zero)
  overflow = arith.andi(cmpi("eq", x, int_min), cmpi("eq", y, m1))
  safe = _select(arith.ori(by_zero, overflow), one, y)
  q = arith.divsi(x, safe)
  q = _select(overflow, int_min, q)
  return _select(by_zero, m1, q)


def _udiv(x, y):
  zero, one = const_like(x, 0), const_like(x, 1)
  by_zero = cmpi("eq", y, zero)
  q = arith.divui(x, _select(by_zero, one, y))
  return _select(by_zero, const_like(x, -1), q)


def _srem(x, y):
  # XLA: x % 0 == x and INT_MIN % -1 == 0.
  bits = ir.IntegerType(x.type).width
  zero, one, m1 = const_like(x, 0), const_like(x, 1), const_like(x, -1)
  int_min = const_like(x, -(2 ** (bits - 1)))
  by_zero = cmpi("eq", y, zero)
  overflow = arith.andi(cmpi("eq", x, int_min), cmpi("eq", y, m1))
  r = arith.remsi(x, _select(arith.ori(by_zero, overflow), one, y))
  r = _select(overflow, zero, r)
  return _select(by_zero, x, r)


def _urem(x, y):
  zero, one = const_like(x, 0), const_like(x, 1)
  by_zero = cmpi("eq", y, zero)
  r = arith.remui(x, _select(by_zero, one, y))
  return _select(by_zero, x, r)


register(lax.div_p)(binary(arith.divf, _sdiv, _udiv))
register(lax.rem_p)(binary(arith.remf, _srem, _urem))


@register(lax.neg_p)
def _neg(ctx, x, **_):
  if types.is_float(_in_dtype(ctx)):
    return elementwise(ctx, lambda a: arith.negf(a[0]), [x])
  return elementwise(ctx, lambda a: arith.subi(const_like(a[0], 0), a[0]), [x])


@register(lax.abs_p)
def _abs(ctx, x, **_):
  if types.is_float(_in_dtype(ctx)):
    return elementwise(ctx, lambda a: math.absf(a[0]), [x])
  def build(a):  # math.absi has no LLVM lowering here; INT_MIN stays INT_MIN
    v = a[0]
    zero = const_like(v, 0)
    return _select(cmpi("slt", v, zero), arith.subi(zero, v), v)
  return elementwise(ctx, build, [x])


@register(lax.sign_p)
def _sign(ctx, x, **_):
  dt = _in_dtype(ctx)

  def build(a):
    v = a[0]
    zero, one, m1 = const_like(v, 0), const_like(v, 1), const_like(v, -1)
    if types.is_float(dt):
      # +-0 and NaN map to themselves.
      r = _select(cmpf("ogt", v, zero), one, v)
      return _select(cmpf("olt", v, zero), m1, r)
    if types.is_unsigned(dt):
      return _select(cmpi("eq", v, zero), zero, one)
    r = _select(cmpi("sgt", v, zero), one, zero)
    return _select(cmpi("slt", v, zero), m1, r)
  return elementwise(ctx, build, [x])


@register(lax.square_p)
def _square(ctx, x, **_):
  op = arith.mulf if types.is_float(_in_dtype(ctx)) else arith.muli
  return elementwise(ctx, lambda a: op(a[0], a[0]), [x])


@register(lax.integer_pow_p)
def _integer_pow(ctx, x, *, y):
  is_float = types.is_float(_in_dtype(ctx))
  mul = arith.mulf if is_float else arith.muli

  def build(a):
    base, n = a[0], abs(y)
    acc = None
    while n:  # square-and-multiply, as XLA expands it
      if n & 1:
        acc = base if acc is None else mul(acc, base)
      n >>= 1
      if n:
        base = mul(base, base)
    if acc is None:
      acc = const_like(a[0], 1)
    if y < 0:
      acc = arith.divf(const_like(acc, 1), acc) if is_float else _sdiv(
          const_like(acc, 1), acc)
    return acc
  return elementwise(ctx, build, [x])


# -- transcendental: computed in f32 for 16-bit floats ------------------------
def _float_unary(fn, cost: int = values.TRANSCENDENTAL_COST):
  def rule(ctx, x, **_):
    dt = _in_dtype(ctx)
    if not types.is_float(dt):
      raise NotImplementedError(f"{ctx.eqn.primitive.name} on {dt}")

    def build(a):
      v = a[0]
      if types.bitwidth(dt) < 32:
        f32 = ir.F32Type.get()
        return arith.truncf(v.type, fn(arith.extf(f32, v)))
      return fn(v)
    return elementwise(ctx, build, [x], cost=cost)
  return rule


def _f32_or(fast, exact):
  """The vectorizable approximation (rules/approx.py) in f32; libm in f64."""
  def build(v):
    return fast(v) if isinstance(v.type, ir.F32Type) else exact(v)
  return build


_exp = _f32_or(approx.exp_f32, math.exp)
_log = _f32_or(approx.log_f32, math.log)
_tanh = _f32_or(approx.tanh_f32, math.tanh)


def _libm(name_f32: str, name_f64: str):
  """A direct call to a libm function: MLIR's math-to-llvm expands log1p and
  expm1 as log(1 + x) and exp(x) - 1, which lose all precision near 0."""
  def build(v):
    name = name_f32 if isinstance(v.type, ir.F32Type) else name_f64
    return call_external(name, [v], v.type)
  return build


def _rsqrt(v):
  return arith.divf(const_like(v, 1), math.sqrt(v))


def _logistic(v):
  one = const_like(v, 1)
  return arith.divf(one, arith.addf(one, _exp(arith.negf(v))))


for _p, _fn in [
    (lax.exp_p, _exp), (lax.exp2_p, math.exp2), (lax.log_p, _log),
    (lax.log1p_p, _libm("log1pf", "log1p")),
    (lax.expm1_p, _libm("expm1f", "expm1")),
    (lax.tanh_p, _tanh), (lax.logistic_p, _logistic),
    (lax.sin_p, math.sin), (lax.cos_p, math.cos), (lax.tan_p, math.tan),
    (special.erf_p, math.erf),
]:
  register(_p)(_float_unary(_fn))
for _p, _fn in [(lax.sqrt_p, math.sqrt), (lax.rsqrt_p, _rsqrt),
                (lax.floor_p, math.floor), (lax.ceil_p, math.ceil)]:
  register(_p)(_float_unary(_fn, cost=1))  # one instruction (or two)


# Beyond Mosaic's table: jnp.arcsin & co. bind these primitives directly
# (Mosaic rejects them).  math-to-libm turns each into its libm call (glibc:
# within 1 ulp in f32 and f64); XLA -- interpret mode -- expands them
# (acos as 2 atan2(sqrt(1 - x^2), 1 + x), ...), so the two agree within a
# few ulps, not bitwise (test/py/test_beyond_mosaic.py).
for _p, _fn in [
    (lax.acos_p, math.acos), (lax.asin_p, math.asin), (lax.atan_p, math.atan),
    (lax.acosh_p, math.acosh), (lax.asinh_p, math.asinh),
    (lax.atanh_p, math.atanh), (lax.sinh_p, math.sinh),
    (lax.cosh_p, math.cosh), (lax.cbrt_p, math.cbrt),
    (special.erfc_p, math.erfc),
]:
  register(_p)(_float_unary(_fn))


@register(lax.round_p)
def _round(ctx, x, *, rounding_method):
  away = int(rounding_method) == int(lax.RoundingMethod.AWAY_FROM_ZERO)
  return _float_unary(math.round if away else math.roundeven,
                      cost=1)(ctx, x)


@register(lax.pow_p)
def _pow(ctx, x, y, **_):
  xdt, ydt = _in_dtype(ctx, 0), _in_dtype(ctx, 1)
  if not types.is_float(xdt):
    raise NotImplementedError(f"pow with a {xdt} base")
  if types.is_float(ydt):
    return elementwise(ctx, lambda a: math.powf(a[0], a[1]), [x, y],
                       cost=values.TRANSCENDENTAL_COST)
  # An integer exponent (x ** n_array): XLA converts it to the base's dtype
  # and takes the float power (jax's _pow_lower), so does interpret mode.
  return elementwise(
      ctx, lambda a: math.powf(a[0], convert(a[1], ydt, xdt)), [x, y],
      cost=values.TRANSCENDENTAL_COST)


@register(lax.atan2_p)
def _atan2(ctx, x, y, **_):
  return elementwise(ctx, lambda a: math.atan2(a[0], a[1]), [x, y],
                     cost=values.TRANSCENDENTAL_COST)


@register(lax.is_finite_p)
def _is_finite(ctx, x, **_):
  def build(a):
    v = a[0]
    inf = const_like(v, float("inf"))
    return cmpf("olt", math.absf(v), inf)  # false for NaN and +-inf
  return elementwise(ctx, build, [x])


# -- comparisons ----------------------------------------------------------------
def _compare(fpred, spred, upred):
  def rule(ctx, x, y, **_):
    dt = _in_dtype(ctx)
    if types.is_float(dt):
      build = lambda a: cmpf(fpred, a[0], a[1])
    elif types.is_unsigned(dt) or types.is_bool(dt):
      build = lambda a: cmpi(upred, a[0], a[1])
    else:
      build = lambda a: cmpi(spred, a[0], a[1])
    return elementwise(ctx, build, [x, y])
  return rule


register(lax.eq_p)(_compare("oeq", "eq", "eq"))
register(lax.ne_p)(_compare("une", "ne", "ne"))
register(lax.lt_p)(_compare("olt", "slt", "ult"))
register(lax.le_p)(_compare("ole", "sle", "ule"))
register(lax.gt_p)(_compare("ogt", "sgt", "ugt"))
register(lax.ge_p)(_compare("oge", "sge", "uge"))


# -- logical and bitwise ----------------------------------------------------------
register(lax.and_p)(binary(None, arith.andi))
register(lax.or_p)(binary(None, arith.ori))
register(lax.xor_p)(binary(None, arith.xori))


@register(lax.not_p)
def _not(ctx, x, **_):
  return elementwise(ctx, lambda a: arith.xori(a[0], const_like(a[0], -1)), [x])


def _shift(kind):
  def build(a):
    x, s = a
    bits = ir.IntegerType(x.type).width
    too_far = cmpi("uge", s, const_like(s, bits))  # unsigned: s < 0 too
    if kind == "left":
      return _select(too_far, const_like(x, 0), arith.shli(x, s))
    if kind == "logical":
      return _select(too_far, const_like(x, 0), arith.shrui(x, s))
    return arith.shrsi(x, _select(too_far, const_like(s, bits - 1), s))

  def rule(ctx, x, y, **_):
    return elementwise(ctx, build, [x, y])
  return rule


register(lax.shift_left_p)(_shift("left"))
register(lax.shift_right_logical_p)(_shift("logical"))
register(lax.shift_right_arithmetic_p)(_shift("arithmetic"))


# -- select and conversion -----------------------------------------------------------
@register(lax.select_n_p)
def _select_n(ctx, which, *cases):
  def build(a):
    w, cs = a[0], a[1:]
    if ir.IntegerType(w.type).width == 1:
      return _select(w, cs[1], cs[0]) if len(cs) == 2 else cs[0]
    out = cs[0]
    for i, c in enumerate(cs[1:], start=1):
      out = _select(cmpi("eq", w, const_like(w, i)), c, out)
    return out
  return elementwise(ctx, build, [which, *cases])


@register(lax.clamp_p)
def _clamp(ctx, lo, x, hi):
  dt = _in_dtype(ctx, 1)
  if types.is_float(dt):
    mx, mn = arith.maximumf, arith.minimumf
  elif types.is_unsigned(dt):
    mx, mn = arith.maxui, arith.minui
  else:
    mx, mn = arith.maxsi, arith.minsi
  return elementwise(ctx, lambda a: mn(mx(a[1], a[0]), a[2]), [lo, x, hi])


@register(lax.convert_element_type_p)
def _convert_element_type(ctx, x, *, new_dtype, **_):
  src = _in_dtype(ctx)
  return elementwise(ctx, lambda a: convert(a[0], src, new_dtype), [x],
                     out_dtype=new_dtype)
