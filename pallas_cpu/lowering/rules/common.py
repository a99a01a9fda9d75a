"""Helpers shared by rule families: pointwise application of a scalar
builder, operands as memrefs with lazy loads of their views, and plain
loop nests."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from mlir import ir
from mlir.dialects import memref, scf

from pallas_cpu.lowering import fp8, values, views
from pallas_cpu.lowering.context import RuleContext, scalar_of


def elementwise(ctx: RuleContext, build: Callable[[list[ir.Value]], ir.Value],
                args: Sequence[values.Value], out_dtype=None,
                cost: int = 1) -> values.Value:
  """Applies the scalar builder pointwise: directly on scalars, as a lazy
  fused expression on arrays (``cost``: ``values.Op.cost``)."""
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
  return values.Array(values.Op(build, tuple(nodes), cost), shape, dtype)


def in_memory(ctx, x: values.Array) -> tuple[ir.Value, object]:
  """``x`` as a strided memref of its shape, and the storage root its lazy
  loads must name: the memref ``x`` already reads when it is a plain load
  (no copy), else a fresh immutable temporary (root None)."""
  node = x.node
  if (isinstance(node, values.Load) and node.converted is None
      and node.index_map == values.identity_map(len(x.shape))
      and tuple(ir.MemRefType(node.memref.type).shape) == tuple(x.shape)):
    return views.with_layout(node.memref), node.root
  return views.with_layout(ctx.kernel.materialize(x)), None


def load_view(view: ir.Value, root, dtype) -> values.Value:
  """A lazy load of ``view`` (a scalar load now when it has rank 0).  Its
  key is None: never the view a store writes through, so a store into the
  same root is not done in place (rules/memory.py)."""
  shape = tuple(ir.MemRefType(view.type).shape)
  if not shape:
    return values.Scalar(memref.load(view, []), np.dtype(dtype))
  return values.Array(values.Load(view, values.identity_map(len(shape)),
                                  root), shape, np.dtype(dtype))


def loop_nest(bounds: Sequence[views.Index],
              body: Callable[[list[ir.Value]], None], ivs=()) -> None:
  """for i0 in range(bounds[0]): for i1 ...: body([i0, i1, ...]) -- scf.for
  loops without results; a bound is an int or an index value."""
  if len(ivs) == len(bounds):
    body(list(ivs))
    return
  loop = scf.ForOp(views.as_index(0), views.as_index(bounds[len(ivs)]),
                   views.as_index(1))
  with ir.InsertionPoint(loop.body):
    loop_nest(bounds, body, (*ivs, loop.induction_variable))
    scf.YieldOp([])
