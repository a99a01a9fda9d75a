"""Reductions: ``reduce_{sum,max,min,prod,and,or}`` and ``argmax``/``argmin``
over any subset of axes; the cumulative ``cum{sum,prod,max,min,logsumexp}``
along one axis, either direction (beyond Mosaic's table).

Each lowers to one ``linalg.generic`` whose iteration space is the operand's
shape, with ``reduction`` iterators on the reduced axes, into a fresh buffer
filled with the reduction's identity.  A lazy operand is not materialized
first: its elementwise expression is computed inside the reduction's body
(``jnp.sum(jnp.exp(x - m), axis=1)`` is one loop nest, no temporary).

Semantics follow XLA: float max/min propagate NaN (``arith.maximumf``);
16-bit float sums and products accumulate in f32 and round once at the end;
argmax/argmin pick the first index of the extreme value, and the first NaN
if there is one.  Float sums and products are never reassociated: along
the innermost axis they keep LANES strided partial results combined by a
pairwise tree at the end (in order along other axes), an order that LLVM
vectorizes as written -- the same bits at every optimisation level and on
every machine (XLA's own order differs: the last bits may).

A cumulative reduction is a sequential scan, each step combining the
previous result with the next slice by JAX's own reducer (``lax.add`` ...
``logaddexp``, re-lowered with ``lower_fun``), rounded to the operand's
dtype; interpret mode's reduce_window (which XLA rewrites into a tree for
long axes) adds in another order, so float cumsums and cumprods agree to
rounding, max/min and integer ones exactly.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import jax
from jax._src.lax import lax
from jax._src.lax import other as lax_other
from jax._src.lax.control_flow import loops
from mlir import ir
from mlir.dialects import arith, linalg, memref, scf

from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.jaxpr import lower_fun
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.common import loop_nest
from pallas_cpu.lowering.scalars import cmpf, cmpi, const, convert

PARALLEL = "#linalg.iterator_type<parallel>"
REDUCTION = "#linalg.iterator_type<reduction>"


# -- a linalg.generic over lazy operands --------------------------------------
def _affine_map(index_map, rank: int) -> ir.AffineMap:
  exprs = [ir.AffineConstantExpr.get(0) if k is None else ir.AffineDimExpr.get(k)
           for k in index_map]
  return ir.AffineMap.get(rank, 0, exprs)


def _dims_read(node, acc: set) -> set:
  """The iteration dims that ``node``'s loads index with (an access that
  fixes a dim's loop bound)."""
  if isinstance(node, values.Load):
    acc.update(k for k in node.index_map if k is not None)
  elif isinstance(node, values.Op):
    for a in node.args:
      _dims_read(a, acc)
  return acc


def emit_generic(kctx, operands: Sequence[tuple[values.Value, Sequence[int]]],
                 outputs: Sequence[tuple[ir.Value, Sequence[int]]],
                 iterators: Sequence[str],
                 body: Callable[[list[ir.Value], list[ir.Value]],
                                list[ir.Value]]) -> None:
  """Emits one ``linalg.generic`` over an iteration space of
  ``len(iterators)`` dimensions (``"parallel"`` / ``"reduction"``).

  ``operands``: (value, dims) where operand dimension ``d`` follows iteration
  dimension ``dims[d]``; lazy arrays are evaluated inside the body (their
  loads become inputs of the generic), scalars are used as they are.
  ``outputs``: (memref, dims) likewise.  ``body(ins, outs)`` gets the operand
  values (registers: bools as i1) and the output block arguments (memory
  element types) and returns the values to yield (memory element types).

  linalg derives every loop bound from an operand's shape: an iteration dim
  that no load and no output indexes (a reduced dim of a broadcast, a splat
  or an iota) gets it from a materialized copy of an operand spanning it.
  """
  rank = len(iterators)
  covered = {k for _, dims in outputs for k in dims}
  for v, dims in operands:
    if isinstance(v, values.Array):
      covered |= _dims_read(values.reindex(v.node, list(dims), None), set())
  operands = list(operands)
  for i, (v, dims) in enumerate(operands):
    if isinstance(v, values.Array) and not set(dims) <= covered:
      operands[i] = (kctx.as_temp(v), dims)
      covered |= set(dims)
  assert covered == set(range(rank)), (covered, rank)
  nodes = []
  for v, dims in operands:
    if isinstance(v, values.Scalar):
      nodes.append(values.Splat(v.value))
    else:
      assert len(dims) == len(v.shape), (dims, v.shape)
      nodes.append(values.reindex(v.node, list(dims), None))
  loads: dict[tuple, int] = {}
  inputs, maps = [], []

  def collect(node):
    if isinstance(node, values.Load):
      key = (node.memref, node.index_map)
      if key not in loads:
        loads[key] = len(inputs)
        inputs.append(node.memref)
        maps.append(_affine_map(node.index_map, rank))
    elif isinstance(node, values.Op):
      for a in node.args:
        collect(a)

  for n in nodes:
    collect(n)
  out_bufs = [buf for buf, _ in outputs]
  maps.extend(_affine_map(tuple(dims), rank) for _, dims in outputs)
  op = linalg.GenericOp(
      result_tensors=[], inputs=inputs, outputs=out_bufs,
      indexing_maps=ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps]),
      iterator_types=ir.ArrayAttr.get(
          [ir.Attribute.parse(f"#linalg.iterator_type<{it}>")
           for it in iterators]))
  elem_types = [ir.MemRefType(v.type).element_type for v in inputs + out_bufs]
  block = op.regions[0].blocks.append(*elem_types)
  with ir.InsertionPoint(block):
    emit = values.generic_body_emitter(block, loads)
    ins = [emit(n) for n in nodes]
    outs = list(block.arguments[len(inputs):])
    linalg.YieldOp(body(ins, outs))


def fill(buf: ir.Value, value) -> None:
  linalg.fill(const(ir.MemRefType(buf.type).element_type, value), outs=[buf])


def result(kctx, buf: ir.Value, buf_dtype, out_dtype) -> values.Value:
  """The value held by ``buf`` as ``out_dtype`` (a lazy conversion when the
  buffer holds a wider accumulator); rank 0 gives a Scalar."""
  buf_dtype, out_dtype = np.dtype(buf_dtype), np.dtype(out_dtype)
  if not ir.MemRefType(buf.type).shape:
    s = values.load_scalar(buf, buf_dtype)
    return values.Scalar(convert(s.value, buf_dtype, out_dtype), out_dtype)
  arr = values.load_array(buf, buf_dtype)
  if buf_dtype != out_dtype:
    arr = values.Array(values.Op(lambda a: convert(a[0], buf_dtype, out_dtype),
                                 (arr.node,)), arr.shape, out_dtype)
  return arr


def accumulator_dtype(dtype) -> np.dtype:
  """16-bit floats accumulate in f32, as XLA's CPU backend does."""
  dtype = np.dtype(dtype)
  if types.is_float(dtype) and types.bitwidth(dtype) < 32:
    return np.dtype(np.float32)
  return dtype


# -- reduce_* -----------------------------------------------------------------
def _kind_ops(kind: str, dtype):
  """(identity, combine(acc, x)) of a reduction on register values of
  ``dtype`` (the accumulator's dtype)."""
  dtype = np.dtype(dtype)
  if types.is_bool(dtype):
    table = {"sum": (0, arith.ori), "max": (0, arith.ori),
             "min": (1, arith.andi), "prod": (1, arith.andi),
             "and": (1, arith.andi), "or": (0, arith.ori)}
    return table[kind]
  if types.is_float(dtype):
    # Sums and products round in the order the loops give them, never
    # reassociated: along the innermost axis that order is LANES strided
    # partial results and a pairwise tree (_reduce_trailing), which LLVM
    # vectorizes as it is.  Max and min are exact in any order.
    table = {"sum": (0.0, arith.addf), "prod": (1.0, arith.mulf),
             "max": (float("-inf"), arith.maximumf),
             "min": (float("inf"), arith.minimumf)}
    if kind not in table:
      raise NotImplementedError(f"reduce_{kind} on {dtype}")
    return table[kind]
  info = types.iinfo(dtype)
  unsigned = types.is_unsigned(dtype)
  table = {"sum": (0, arith.addi), "prod": (1, arith.muli),
           "and": (-1, arith.andi), "or": (0, arith.ori),
           "max": (info.min, arith.maxui if unsigned else arith.maxsi),
           "min": (info.max, arith.minui if unsigned else arith.minsi)}
  return table[kind]


def reduce(ctx, x: values.Value, axes: Sequence[int], kind: str
           ) -> values.Value:
  """``x`` reduced over ``axes`` with ``kind`` (sum/prod/max/min/and/or)."""
  dtype = np.dtype(ctx.avals_in[0].dtype)
  out_dtype = np.dtype(ctx.avals_out[0].dtype)
  axes = sorted(int(a) for a in axes)
  if not axes:
    return x
  if isinstance(x, values.Scalar):  # rank 0 has no axes to reduce
    raise ValueError(f"reducing a scalar over axes {axes}")
  shape = tuple(x.shape)
  rank = len(shape)
  kept = [d for d in range(rank) if d not in axes]
  out_shape = tuple(shape[d] for d in kept)
  acc_dtype = (accumulator_dtype(dtype) if kind in ("sum", "prod")
               else dtype)
  identity, combine = _kind_ops(kind, acc_dtype)
  kctx = ctx.kernel
  buf = kctx.alloc(out_shape, acc_dtype)
  if axes == list(range(rank - len(axes), rank)) and isinstance(
      x, values.Array) and not types.is_bool(acc_dtype):
    lanes = None
    if types.is_float(acc_dtype) and kind in ("sum", "prod"):
      lanes = _lane_buffer(kctx, _lanes(shape[-1]), acc_dtype)
    _reduce_trailing(x, dtype, acc_dtype, identity, combine, buf, len(kept),
                     lanes)
    return result(kctx, buf, acc_dtype, out_dtype)
  fill(buf, identity)

  def body(ins, outs):
    v = convert(ins[0], dtype, acc_dtype)
    acc = values.from_memory(outs[0], acc_dtype)
    return [values.to_memory(combine(acc, v), acc_dtype)]

  emit_generic(kctx, [(x, range(rank))], [(buf, kept)],
               ["reduction" if d in axes else "parallel" for d in range(rank)],
               body)
  return result(kctx, buf, acc_dtype, out_dtype)


# A float sum or product along the innermost axis keeps this many strided
# partial results (fewer for a shorter axis: the next power of two): four
# AVX-512 vectors of f32, which LLVM keeps in registers.
LANES = 64


def _lanes(n: int) -> int:
  lanes = 1
  while lanes < min(n, LANES):
    lanes *= 2
  return lanes


def _lane_buffer(kctx, lanes: int, acc_dtype) -> ir.Value:
  """The partial results of one reduction: a stack buffer made once at the
  kernel's entry (local to each thread's call, known to alias nothing)."""
  t = ir.MemRefType.get([lanes], types.element_type(acc_dtype))
  with kctx.alloc_ip:
    return memref.AllocaOp(t, [], [], alignment=64).result


def _reduce_trailing(x: values.Array, dtype, acc_dtype, identity, combine,
                     buf: ir.Value, n_kept: int,
                     lanes: ir.Value | None = None) -> None:
  """Reduction over the trailing axes with the accumulator in a register
  (an scf.for iter_arg): as a linalg.generic the accumulator is a memory
  cell LLVM cannot keep in a register (it may alias the input), and the
  innermost loop -- the one to vectorize -- would not vectorize.

  With ``lanes`` (a float sum or product: a buffer of L partial results),
  the order is fixed here, not by the vectorizer: element i of the
  innermost axis goes to partial result i mod L (in order, over all the
  reduced axes), then the L partial results combine as a pairwise tree.
  The inner loop over the L lanes has independent iterations, so LLVM
  vectorizes it without reassociating anything: the same bits at every
  optimisation level and on every machine."""
  shape = x.shape
  step = views.as_index(1)

  def nest(d, ivs):
    if d == n_kept:
      if lanes is not None:
        total = lane_reduce(d, ivs)
      else:
        init = const(types.element_type(acc_dtype), identity)
        total = reduce_nest(d, ivs, init)
      values.store_scalar(total, _at(buf, ivs), acc_dtype)
      return
    loop = scf.ForOp(views.as_index(0), views.as_index(shape[d]), step)
    with ir.InsertionPoint(loop.body):
      nest(d + 1, [*ivs, loop.induction_variable])
      scf.YieldOp([])

  def reduce_nest(d, ivs, acc):
    if d == len(shape):
      v = values.evaluate_at(x.node, ivs)
      return combine(acc, convert(v, dtype, acc_dtype))
    loop = scf.ForOp(views.as_index(0), views.as_index(shape[d]), step, [acc])
    with ir.InsertionPoint(loop.body):
      scf.YieldOp([reduce_nest(d + 1, [*ivs, loop.induction_variable],
                               loop.inner_iter_args[0])])
    return loop.results[0]

  def lane_reduce(d, ivs):
    n_lanes = ir.MemRefType(lanes.type).shape[0]
    et = types.element_type(acc_dtype)
    loop_nest([n_lanes], lambda k: memref.store(const(et, identity), lanes, k))
    # The reduced axes before the innermost in order, then the lanes.
    loop_nest(shape[d:-1], lambda outer: lane_row([*ivs, *outer], n_lanes))
    half = n_lanes // 2
    while half >= 1:
      def fold(k, half=half):
        other = arith.addi(k[0], views.as_index(half))
        memref.store(combine(memref.load(lanes, k),
                             memref.load(lanes, [other])), lanes, k)
      loop_nest([half], fold)
      half //= 2
    return memref.load(lanes, [views.as_index(0)])

  def lane_row(ivs, n_lanes):
    """Element i of the innermost axis into lane i mod n_lanes."""
    full, rest = divmod(shape[-1], n_lanes)

    def accumulate(base, count):
      def lane(k):
        v = values.evaluate_at(x.node, [*ivs, arith.addi(base, k[0])])
        acc = memref.load(lanes, k)
        memref.store(combine(acc, convert(v, dtype, acc_dtype)), lanes, k)
      loop_nest([count], lane)

    if full:
      loop_nest([full], lambda j: accumulate(
          arith.muli(j[0], views.as_index(n_lanes)), n_lanes))
    if rest:
      accumulate(views.as_index(full * n_lanes), rest)

  nest(0, [])


def _at(buf: ir.Value, ivs) -> ir.Value:
  """The single element of ``buf`` at ``ivs`` as a rank-0 view."""
  if not ivs:
    return buf
  rank = len(ivs)
  return views.subview(buf, list(ivs), [1] * rank, drop=list(range(rank)))


def _reduce_rule(kind):
  def rule(ctx, x, *, axes, **_):
    return reduce(ctx, x, axes, kind)
  return rule


register(lax.reduce_sum_p)(_reduce_rule("sum"))
register(lax.reduce_max_p)(_reduce_rule("max"))
register(lax.reduce_min_p)(_reduce_rule("min"))
register(lax.reduce_prod_p)(_reduce_rule("prod"))
register(lax.reduce_and_p)(_reduce_rule("and"))
register(lax.reduce_or_p)(_reduce_rule("or"))


# -- argmax / argmin ----------------------------------------------------------
def _arg_reduce(ctx, x, axes, index_dtype, is_max: bool) -> values.Value:
  dtype = np.dtype(ctx.avals_in[0].dtype)
  index_dtype = np.dtype(index_dtype)
  if len(axes) != 1:
    raise NotImplementedError(
        f"arg{'max' if is_max else 'min'} over {len(axes)} axes (only one "
        "axis is supported)")
  if not types.is_int(index_dtype):
    raise NotImplementedError(f"argmax/argmin with index_dtype {index_dtype}")
  if isinstance(x, values.Scalar):
    raise ValueError("argmax/argmin of a scalar")
  axis = int(axes[0])
  shape = tuple(x.shape)
  rank = len(shape)
  kept = [d for d in range(rank) if d != axis]
  out_shape = tuple(shape[d] for d in kept)
  kctx = ctx.kernel
  best = kctx.alloc(out_shape, dtype)   # the extreme value so far
  index = kctx.alloc(out_shape, index_dtype)
  is_float = types.is_float(dtype)
  if is_float:
    fill(best, float("-inf") if is_max else float("inf"))
  elif types.is_bool(dtype):
    fill(best, 0 if is_max else 1)
  else:
    info = types.iinfo(dtype)
    fill(best, info.min if is_max else info.max)
  fill(index, 0)
  unsigned = types.is_unsigned(dtype) or types.is_bool(dtype)

  def body(ins, outs):
    v = ins[0]
    acc = values.from_memory(outs[0], dtype)
    if is_float:
      # Strictly better, or the first NaN (XLA: NaN beats every number, the
      # first of several NaNs wins); ties keep the earlier index.
      better = cmpf("ogt" if is_max else "olt", v, acc)
      first_nan = arith.andi(cmpf("uno", v, v), cmpf("ord", acc, acc))
      take = arith.ori(better, first_nan)
    else:
      name = ("u" if unsigned else "s") + ("gt" if is_max else "lt")
      take = cmpi(name, v, acc)
    i = linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64),
                                          axis)).result
    i = values.index_to_element(i, types.element_type(index_dtype))
    return [values.to_memory(arith.select(take, v, acc), dtype),
            arith.select(take, i, outs[1])]

  emit_generic(kctx, [(x, range(rank))], [(best, kept), (index, kept)],
               ["reduction" if d == axis else "parallel" for d in range(rank)],
               body)
  return result(kctx, index, index_dtype, index_dtype)


@register(lax.argmax_p)
def _argmax(ctx, x, *, axes, index_dtype, **_):
  return _arg_reduce(ctx, x, axes, index_dtype, True)


@register(lax.argmin_p)
def _argmin(ctx, x, *, axes, index_dtype, **_):
  return _arg_reduce(ctx, x, axes, index_dtype, False)


# -- cumsum / cumprod / cummax / cummin / cumlogsumexp ------------------------
def _cumulative(combine, identity):
  def rule(ctx, x, *, axis, reverse):
    dtype = np.dtype(ctx.avals_in[0].dtype)
    if isinstance(x, values.Scalar):
      raise ValueError("a cumulative reduction of a scalar")
    shape = tuple(x.shape)
    rank, n = len(shape), shape[axis]
    if n == 0:
      return x
    kctx = ctx.kernel
    src = views.with_layout(kctx.materialize(x))
    out = kctx.alloc(shape, dtype)
    dst = views.with_layout(out)
    step_shape = tuple(1 if d == axis else s for d, s in enumerate(shape))
    step_aval = jax.core.ShapedArray(step_shape, dtype)

    def at(buf, k):  # the slice at position k along the axis (kept, size 1)
      return views.subview(buf, [k if d == axis else 0 for d in range(rank)],
                           list(step_shape))

    def step(prev, k):
      new = lower_fun(ctx, combine, prev, values.load_array(at(src, k), dtype),
                      avals_in=[step_aval, step_aval])
      kctx.store(new, at(dst, k))

    first = kctx.constant(identity(dtype), dtype)
    step(values.Array(values.Splat(first.value), step_shape, dtype),
         n - 1 if reverse else 0)
    loop = scf.ForOp(views.as_index(1), views.as_index(n), views.as_index(1))
    with ir.InsertionPoint(loop.body):
      i = loop.induction_variable
      if reverse:  # k = n - 1 - i, after k + 1 = n - i
        k = arith.subi(views.as_index(n - 1), i)
        prev = arith.subi(views.as_index(n), i)
      else:
        k, prev = i, arith.subi(i, views.as_index(1))
      step(values.load_array(at(dst, prev), dtype), k)
      scf.YieldOp([])
    return values.load_array(out, dtype)
  return rule


register(loops.cumsum_p)(_cumulative(lax.add, lax._get_sum_identity))
register(loops.cumprod_p)(_cumulative(lax.mul, lax._get_prod_identity))
register(loops.cummax_p)(_cumulative(lax.max, lax._get_max_identity))
register(loops.cummin_p)(_cumulative(lax.min, lax._get_min_identity))
register(loops.cumlogsumexp_p)(
    _cumulative(lax_other.logaddexp, lambda dt: -np.inf))
