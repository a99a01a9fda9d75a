"""Helpers shared by rule families."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from mlir import ir
from mlir.dialects import arith

from pallas_cpu.lowering import fp8, values
from pallas_cpu.lowering.context import RuleContext, scalar_of


def elementwise(ctx: RuleContext, build: Callable[[list[ir.Value]], ir.Value],
                args: Sequence[values.Value], out_dtype=None) -> values.Value:
  """Applies the scalar builder pointwise: directly on scalars, as a lazy
  fused expression on arrays."""
  out_aval = ctx.avals_out[0]
  dtype = np.dtype(out_dtype if out_dtype is not None else out_aval.dtype)
  shape = tuple(out_aval.shape)
  if fp8.is_fp8(dtype):  # computed in f32, each result rounded (as XLA)
    inner = build
    build = lambda ops: fp8.round_to(inner(ops), dtype)  # noqa: E731
  if not shape:
    scalars = [scalar_of(ctx.kernel, a).value for a in args]
    return values.Scalar(build(scalars), dtype)
  nodes = []
  for a in args:
    if isinstance(a, values.Scalar):
      nodes.append(values.Splat(a.value))
    elif tuple(a.shape) == shape:
      nodes.append(a.node)
    elif len(a.shape) == len(shape):  # lax broadcasts size-1 dimensions
      dim_map = [None if n == 1 and m != 1 else d
                 for d, (n, m) in enumerate(zip(a.shape, shape))]
      nodes.append(values.reindex(a.node, dim_map, shape))
    else:
      raise ValueError(f"operand of shape {a.shape} does not broadcast to "
                       f"{shape}")
  return values.Array(values.Op(build, tuple(nodes)), shape, dtype)


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
