"""Bit-level primitives.

* ``bitcast_convert_type`` (lax): same width is one ``arith.bitcast`` per
  element; a wider source gains a trailing dimension of its parts, a
  narrower source loses its trailing dimension -- parts little-endian (part
  ``k`` is bits ``[k*w, (k+1)*w)``), as XLA does on CPU.
* ``bitcast`` (``pltpu.bitcast``, values only -- ref bitcasts are a ref
  transform): the second-minor dimension shrinks or grows by the width ratio;
  rows ``i*p .. i*p+p-1`` of the narrow array are the parts of row ``i`` of
  the wide one (the interleaving of Mosaic's and interpret mode's rule).
* ``population_count`` / ``clz``: the LLVM intrinsics ``llvm.intr.ctpop`` /
  ``llvm.intr.ctlz`` (``clz(0)`` is the width; see the note at the rule).
* ``nextafter``: XLA's (chlo) integer algorithm, for every float width.
* ``erf_inv``: XLA's single-precision polynomial (Giles), 16-bit floats
  computed in f32; its ``log1p`` is MLIR's ``log(1 + x)`` expansion and no
  FMA is contracted, so results may differ from XLA's by an ulp or two.
  float64: Mosaic's double-precision polynomial (``pallas/utils.py``,
  lowered through the rules), within ~21 ulp of XLA's own.
* ``reciprocal`` (``pl.reciprocal``): ``approx=False`` is an IEEE ``1/x``;
  ``approx=True`` reproduces interpret mode bit for bit: its rule computes
  ``f32(1 / bf16(x))`` in bfloat16, and XLA's CPU backend (excess precision
  allowed, its default) divides in f32 and drops the final rounding, so the
  value is ``1 / f32(bf16(x))``: x keeps ~8 significant bits (the TPU's
  approximate reciprocal is of that order), the division is exact.
  ``full_range`` is ignored (always full range).
* ``stochastic_round`` (TPU): f32 -> bf16.  Rounds the magnitude up iff
  ``random_bits < (dropped bits << 16)`` (XLA's StochasticConvert
  convention: up with probability equal to the dropped fraction); NaN stays
  NaN, infinities stay infinite.  Interpret mode cannot run it.
* ``pack_elementwise`` / ``unpack_elementwise`` (TPU): the interleaved
  packing of their docstrings (source ``i`` in bits ``[i*w, (i+1)*w)``,
  integers truncated, f32 -> bf16 rounded to nearest even).  Interpret mode
  cannot run them either.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax._src import dtypes as jax_dtypes
from jax._src.lax import lax
from jax._src.lax import special
from jax._src.pallas import primitives as pallas_primitives
from jax._src.pallas import utils as pallas_utils
from jax._src.pallas.mosaic import primitives as tpu_primitives
from mlir import ir
from mlir.dialects import arith, llvm, math

from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.jaxpr import lower_fun
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules import shape as shape_rules
from pallas_cpu.lowering.rules.common import elementwise, in_memory, load_view
from pallas_cpu.lowering.scalars import (cmpf, cmpi, const, const_like,
                                         from_bits, int_type, resize, to_bits,
                                         width)


def _check_bitcastable(*dts):
  for dt in dts:
    if types.is_bool(dt):
      raise NotImplementedError("bitcast of bool values")
    types.element_type(dt)  # raises for dtypes pallas_cpu does not know


def _combine(parts: list[ir.Value], part_bits: int, dst_t: ir.Type) -> ir.Value:
  """``parts[k]`` (``part_bits`` wide) at bits ``[k*part_bits, ...)`` of
  one ``dst_t`` value."""
  bits = width(dst_t)
  acc = None
  for k, p in enumerate(parts):
    # (a sub-byte part read raw is its extended byte: keep its own bits)
    v = resize(resize(to_bits(p), part_bits), bits)
    if k:
      v = arith.shli(v, const(v.type, k * part_bits))
    acc = v if acc is None else arith.ori(acc, v)
  return from_bits(acc, dst_t)


def _extract(v: ir.Value, k: ir.Value, part_bits: int,
             dst_t: ir.Type) -> ir.Value:
  """Part ``k`` (a dynamic integer) of ``v``, ``part_bits`` wide."""
  bits = to_bits(v)
  k = resize(k, width(bits.type))
  shift = arith.muli(k, const(bits.type, part_bits))
  return from_bits(arith.trunci(int_type(part_bits),
                                arith.shrui(bits, shift)), dst_t)


def _same_width_bitcast(ctx, x, dst):
  dst_t = types.element_type(dst)
  return elementwise(ctx, lambda a: from_bits(to_bits(a[0]), dst_t), [x],
                     out_dtype=dst)


def _node_of(x: values.Value):
  return values.Splat(x.value) if isinstance(x, values.Scalar) else x.node


def _strided_parts(ctx, x: values.Array, dim: int, p: int) -> list:
  """The ``p`` interleaved parts ``x[..., k::p, ...]`` along ``dim`` (or,
  for ``dim`` the last of size ``p``, ``x[..., k]`` with it dropped)."""
  buf, root = in_memory(ctx, x)
  shape = list(x.shape)
  rank = len(shape)
  out = []
  for k in range(p):
    offsets = [0] * rank
    offsets[dim] = k
    sizes = list(shape)
    steps = [1] * rank
    drop = ()
    if dim == rank - 1 and shape[dim] == p:
      sizes[dim], drop = 1, (dim,)
    else:
      sizes[dim] = shape[dim] // p
      steps[dim] = p
    out.append(load_view(views.subview(buf, offsets, sizes, steps, drop=drop),
                         root, x.dtype))
  return out


# -- bitcasts --------------------------------------------------------------------
def _widths(src, dst) -> tuple[int, int, ir.Type]:
  _check_bitcastable(src, dst)
  return types.dtype_bits(src), types.dtype_bits(dst), types.element_type(dst)


def _joined(parts, sb: int, dst_t, out_shape, dst) -> values.Value:
  """Narrow ``parts`` (lowest bits first) joined into wide elements."""
  if not out_shape:
    return values.Scalar(_combine([v.value for v in parts], sb, dst_t), dst)
  return values.Array(values.Op(lambda a: _combine(a, sb, dst_t),
                                tuple(v.node for v in parts)), out_shape, dst)


def _split(node, k_dim: int, sb: int, db: int, dst_t, shape, dst
           ) -> values.Array:
  """Wide elements of ``node`` split into db-bit pieces, piece number the
  iteration index along ``k_dim``."""
  k = values.Iota(k_dim, np.dtype(f"uint{sb}"))
  return values.Array(
      values.Op(lambda a: _extract(a[0], a[1], db, dst_t), (node, k)),
      shape, dst)


@register(lax.bitcast_convert_type_p)
def _bitcast_convert_type(ctx, x, *, new_dtype):
  dst = np.dtype(new_dtype)
  sb, db, dst_t = _widths(np.dtype(ctx.avals_in[0].dtype), dst)
  if sb == db:
    return _same_width_bitcast(ctx, x, dst)
  out_shape = tuple(ctx.avals_out[0].shape)
  if sb > db:  # each element splits into a trailing dimension of sb // db
    rank = len(out_shape)
    node = _node_of(x)
    if not isinstance(x, values.Scalar):
      node = values.reindex(node, list(range(rank - 1)), out_shape)
    return _split(node, rank - 1, sb, db, dst_t, out_shape, dst)
  # sb < db: the trailing dimension (of db // sb parts) joins into one element
  parts = _strided_parts(ctx, x, len(x.shape) - 1, db // sb)
  return _joined(parts, sb, dst_t, out_shape, dst)


@register(tpu_primitives.bitcast_p)
def _tpu_bitcast(ctx, x, *, ty):
  """TPU packing: the second-minor dimension scales (rows k::p of the
  narrow value are bit slot k of the wide one)."""
  dst = np.dtype(ty)
  sb, db, dst_t = _widths(np.dtype(ctx.avals_in[0].dtype), dst)
  if sb == db:
    return _same_width_bitcast(ctx, x, dst)
  if isinstance(x, values.Scalar) or len(x.shape) < 2:
    raise NotImplementedError("pltpu.bitcast of a value of rank < 2")
  out_shape = tuple(ctx.avals_out[0].shape)
  rank = len(x.shape)
  if sb < db:
    parts = _strided_parts(ctx, x, rank - 2, db // sb)
    return _joined(parts, sb, dst_t, out_shape, dst)
  # sb > db: row i of x becomes rows i*p .. i*p+p-1; computed as
  # (..., m, p, n) and reshaped.
  *lead, m, n = x.shape
  wide = (*lead, m, sb // db, n)
  node = values.reindex(x.node, [*range(rank - 1), rank], wide)
  return shape_rules.reshape(
      ctx, _split(node, rank - 1, sb, db, dst_t, wide, dst), out_shape)


# -- counting ------------------------------------------------------------------------
def _int_unary(fn):
  def rule(ctx, x, **_):
    dt = np.dtype(ctx.avals_in[0].dtype)
    if not types.is_int(dt):
      raise NotImplementedError(f"{ctx.eqn.primitive.name} on {dt}")
    return elementwise(ctx, lambda a: fn(a[0]), [x])
  return rule


# math.ctpop / math.ctlz would be the natural ops, but the pipeline's
# convert-math-to-libm pass marks the whole math dialect illegal and fails on
# them (as on math.absi); the LLVM intrinsics are what convert-math-to-llvm
# would produce anyway.
register(lax.population_count_p)(_int_unary(llvm.intr_ctpop))
register(lax.clz_p)(_int_unary(
    lambda v: llvm.intr_ctlz(v, ir.BoolAttr.get(False))))


# -- nextafter ---------------------------------------------------------------------
def _nextafter(x: ir.Value, y: ir.Value) -> ir.Value:
  """XLA's (chlo) nextafter, on the bits."""
  t = x.type
  n = width(t)
  xi, yi = to_bits(x), to_bits(y)
  sign = const(xi.type, 1 << (n - 1))
  not_sign = const(xi.type, (1 << (n - 1)) - 1)
  zero, one = const(xi.type, 0), const(xi.type, 1)
  nan_bits = {16: 0x7E00, 32: 0x7FC00000, 64: 0x7FF8000000000000}[n]
  if t == ir.BF16Type.get():
    nan_bits = 0x7FC0
  x_abs, y_abs = arith.andi(xi, not_sign), arith.andi(yi, not_sign)
  x_sign, y_sign = arith.andi(xi, sign), arith.andi(yi, sign)
  smaller = arith.ori(cmpi("ugt", x_abs, y_abs), cmpi("ne", x_sign, y_sign))
  adjust = arith.select(smaller, const(xi.type, -1), one)
  r = arith.addi(xi, adjust)
  from_zero = arith.select(cmpi("eq", y_abs, zero), yi, arith.ori(y_sign, one))
  r = arith.select(cmpi("eq", x_abs, zero), from_zero, r)
  r = arith.select(cmpf("oeq", x, y), yi, r)
  r = arith.select(cmpf("uno", x, y), const(xi.type, nan_bits), r)
  return from_bits(r, t)


@register(lax.nextafter_p)
def _nextafter_rule(ctx, x, y):
  dt = np.dtype(ctx.avals_in[0].dtype)
  if not types.is_float(dt):
    raise NotImplementedError(f"nextafter on {dt}")
  return elementwise(ctx, lambda a: _nextafter(a[0], a[1]), [x, y])


# -- erf_inv -------------------------------------------------------------------------
_ERF_INV_LT5 = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06,
                -4.39150654e-06, 0.00021858087, -0.00125372503,
                -0.00417768164, 0.246640727, 1.50140941)
_ERF_INV_GE5 = (-0.000200214257, 0.000100950558, 0.00134934322,
                -0.00367342844, 0.00573950773, -0.0076224613,
                0.00943887047, 1.00167406, 2.83297682)


def _erf_inv_f32(x: ir.Value) -> ir.Value:
  t = x.type
  c = lambda v: const(t, np.float32(v))
  w = arith.negf(math.log1p(arith.mulf(x, arith.negf(x))))
  lt5 = cmpf("olt", w, c(5.0))
  w = arith.select(lt5, arith.subf(w, c(2.5)),
                   arith.subf(math.sqrt(w), c(3.0)))
  coef = lambda i: arith.select(lt5, c(_ERF_INV_LT5[i]), c(_ERF_INV_GE5[i]))
  p = coef(0)
  for i in range(1, len(_ERF_INV_LT5)):
    p = arith.addf(coef(i), arith.mulf(p, w))
  at_one = cmpf("oeq", math.absf(x), c(1.0))
  return arith.select(at_one, arith.mulf(x, c(np.inf)), arith.mulf(p, x))


@register(special.erf_inv_p)
def _erf_inv(ctx, x):
  dt = np.dtype(ctx.avals_in[0].dtype)
  if dt == np.float64:  # Mosaic's double-precision polynomial (Giles)
    return lower_fun(ctx, pallas_utils.erf_inv_lowering_helper, x)
  if not types.is_float(dt) or types.bitwidth(dt) > 32:
    raise NotImplementedError(f"erf_inv on {dt} (float64, float32, bfloat16 "
                              "and float16 are supported)")

  def build(a):
    v = a[0]
    if types.bitwidth(dt) < 32:
      return arith.truncf(v.type, _erf_inv_f32(arith.extf(ir.F32Type.get(), v)))
    return _erf_inv_f32(v)
  return elementwise(ctx, build, [x])


# -- pl.reciprocal -------------------------------------------------------------------
@register(pallas_primitives.reciprocal_p)
def _reciprocal(ctx, x, *, approx, full_range=True):
  del full_range
  dt = np.dtype(ctx.avals_in[0].dtype)
  if not types.is_float(dt) or types.bitwidth(dt) > 32:
    raise NotImplementedError(f"reciprocal on {dt}")
  if approx and dt != np.float32:
    raise NotImplementedError(
        f"reciprocal(approx=True) on {dt} (only float32, as on TPU)")
  f32, bf16 = ir.F32Type.get(), ir.BF16Type.get()

  def build(a):
    v = a[0]
    if approx:  # interpret mode's value: 1 / f32(bf16(x)), see the docstring
      v = arith.extf(f32, arith.truncf(bf16, v))
      return arith.divf(const(f32, 1.0), v)
    if types.bitwidth(dt) < 32:  # exact: f32 has > 2p+2 bits
      r = arith.divf(const(f32, 1.0), arith.extf(f32, v))
      return arith.truncf(v.type, r)
    return arith.divf(const_like(v, 1.0), v)
  return elementwise(ctx, build, [x])


# -- TPU: stochastic rounding and elementwise packing ------------------------------
def _stochastic_round_bf16(x: ir.Value, rnd: ir.Value) -> ir.Value:
  i32 = int_type(32)
  bits = to_bits(x)
  mag = arith.andi(bits, const(i32, 0x7FFFFFFF))
  sign = arith.andi(bits, const(i32, 0x80000000))
  trunc = arith.andi(mag, const(i32, 0xFFFF0000))
  up = cmpi("ult", rnd, arith.shli(mag, const(i32, 16)))
  mag = arith.select(up, arith.addi(trunc, const(i32, 0x10000)), trunc)
  out = arith.trunci(int_type(16), arith.shrui(arith.ori(sign, mag),
                                               const(i32, 16)))
  rounded = from_bits(out, ir.BF16Type.get())
  nan = cmpf("uno", x, x)
  return arith.select(nan, arith.truncf(ir.BF16Type.get(), x), rounded)


@register(tpu_primitives.stochastic_round_p)
def _stochastic_round(ctx, x, random_bits, *, target_dtype):
  src, dst = np.dtype(ctx.avals_in[0].dtype), np.dtype(target_dtype)
  if src != np.float32:
    raise NotImplementedError(f"stochastic_round of {src} (only float32)")
  if dst != np.dtype(jax_dtypes.bfloat16):
    raise NotImplementedError(
        f"stochastic_round to {dst} (only bfloat16: pallas_cpu has no "
        "float8 types)")
  return elementwise(ctx, lambda a: _stochastic_round_bf16(a[0], a[1]),
                     [x, random_bits], out_dtype=dst)


@register(tpu_primitives.pack_elementwise_p)
def _pack_elementwise(ctx, *xs, packed_dtype):
  src = np.dtype(ctx.avals_in[0].dtype)
  packed = np.dtype(packed_dtype)
  ub, pb = types.dtype_bits(src), types.dtype_bits(packed)
  out_t = int_type(ub)
  floats = types.is_float(src)
  if floats:
    packed_t = types.element_type(packed)

  def build(a):
    parts = []
    for v in a:
      if floats:  # rounded to the packed float type, then its bits
        v = to_bits(arith.truncf(packed_t, v))
      else:  # the low pb bits
        v = resize(v, pb)
      parts.append(v)
    return _combine(parts, pb, out_t)
  return elementwise(ctx, build, list(xs), out_dtype=np.dtype(f"uint{ub}"))


@register(tpu_primitives.unpack_elementwise_p)
def _unpack_elementwise(ctx, x, *, index, packed_dtype, unpacked_dtype):
  packed, unpacked = np.dtype(packed_dtype), np.dtype(unpacked_dtype)
  ub, pb = types.dtype_bits(unpacked), types.dtype_bits(packed)
  out_t = types.element_type(unpacked)
  if types.is_float(packed) != types.is_float(unpacked):
    raise NotImplementedError(
        f"unpack_elementwise from {packed} to {unpacked}")

  def build(a):
    bits = to_bits(a[0])
    if index:
      bits = arith.shrui(bits, const(bits.type, index * pb))
    part = resize(bits, pb)
    if pb == ub:
      return from_bits(part, out_t)
    if types.is_float(packed):
      return arith.extf(out_t, from_bits(part, types.element_type(packed)))
    if jnp.issubdtype(packed, jnp.signedinteger):
      return arith.extsi(out_t, part)
    return arith.extui(out_t, part)
  return elementwise(ctx, build, [x], out_dtype=unpacked)
