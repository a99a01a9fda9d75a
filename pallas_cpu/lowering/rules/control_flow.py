"""Control flow: cond (pl.when), scan (fori_loop), while, and inlined calls
(nested jit, custom_jvp/custom_vjp).

Scalars cross region boundaries as SSA values (scf results and iter_args);
arrays through buffers allocated once at the kernel's entry: a cond's
branches store their results into them, a loop's body reads its carries from
them and copies the next carries back at the end of each iteration.
"""
from __future__ import annotations

import numpy as np
from jax._src import core as jax_core
from jax._src import custom_derivatives
from jax._src import pjit
from jax._src.lax import control_flow as lax_cf
from mlir import ir
from mlir.dialects import arith, linalg, scf

from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.jaxpr import lower_closed_jaxpr
from pallas_cpu.lowering.registry import register


def _is_array_aval(aval) -> bool:
  return isinstance(aval, jax_core.ShapedArray) and aval.shape != ()


# -- calls ----------------------------------------------------------------------
@register(pjit.jit_p, pure=False)
def _jit(ctx, *args, jaxpr, **_):
  return lower_closed_jaxpr(ctx, jaxpr, args)


@register(jax_core.closed_call_p, pure=False)
def _closed_call(ctx, *args, call_jaxpr, **_):
  return lower_closed_jaxpr(ctx, call_jaxpr, args)


@register(custom_derivatives.custom_jvp_call_p, pure=False)
def _custom_jvp_call(ctx, *args, call_jaxpr, **_):
  return lower_closed_jaxpr(ctx, call_jaxpr, args)


@register(custom_derivatives.custom_vjp_call_p, pure=False)
def _custom_vjp_call(ctx, *args, call_jaxpr, **_):
  return lower_closed_jaxpr(ctx, call_jaxpr, args)


# -- carried values ----------------------------------------------------------------
class _Carry:
  """How one value crosses a region boundary: a scalar SSA value or a
  buffer allocated at the kernel entry."""

  def __init__(self, kctx, aval):
    self.aval = aval
    self.is_ref = not isinstance(aval, jax_core.ShapedArray)
    self.is_buffer = not self.is_ref and _is_array_aval(aval)
    self.dtype = None if self.is_ref else np.dtype(aval.dtype)
    if self.is_buffer:
      self.buf = kctx.alloc(aval.shape, aval.dtype)
      # Told apart by identity; numbered per kernel for readers.
      n = kctx.rule_state.get("carries", 0)
      kctx.rule_state["carries"] = n + 1
      self.root = values.PrivateRoot(f"carry {n}")

  @property
  def ssa_type(self):
    return types.element_type(self.dtype)

  def read(self) -> values.Array:
    return values.load_array(self.buf, self.dtype, root=self.root)


def _reads_pointwise_only(node, root, buf) -> bool:
  """Whether every load of ``root`` in ``node`` reads ``buf`` itself at the
  point being computed (so computing ``node`` into ``buf`` is in-place safe)."""
  if isinstance(node, values.Load):
    return node.root != root or (
        node.memref == buf
        and node.index_map == values.identity_map(len(node.index_map)))
  if isinstance(node, values.Op):
    return all(_reads_pointwise_only(a, root, buf) for a in node.args)
  return True


def _store_carries(kctx, carries, vals) -> list[ir.Value]:
  """Writes buffer carries; returns the scalar ones as SSA values.

  A carry passed through unchanged is not copied, and one whose new value
  reads its own buffer only pointwise (``acc + x``) and no other new value
  reads at all is computed straight into its buffer.  The rest go through
  temporaries, since one carry's new value may read another's old one."""
  arrays = [(c, v) for c, v in zip(carries, vals) if c.is_buffer]
  direct, copied = [], []
  for c, v in arrays:
    if (isinstance(v, values.Array) and isinstance(v.node, values.Load)
        and v.node.memref == c.buf
        and v.node.index_map == values.identity_map(len(v.shape))):
      continue  # unchanged
    others_read = any(c.root in values.roots_read(w.node)
                      for d, w in arrays
                      if d is not c and isinstance(w, values.Array))
    if (isinstance(v, values.Array) and not others_read
        and _reads_pointwise_only(v.node, c.root, c.buf)):
      direct.append((c, v))
    else:
      copied.append((c, kctx.materialize(v, reuse=True)))
  for c, v in direct:
    kctx.store(v, c.buf)
  for c, t in copied:
    linalg.copy(t, outs=[c.buf])
  return [scalar_of(kctx, v).value for c, v in zip(carries, vals)
          if not c.is_buffer and not c.is_ref]


def _bind(carries, ssa_values, passthrough=None):
  """Values of carries inside a region: SSA args for scalars, buffer reads
  for arrays, the given Refs for refs."""
  it = iter(ssa_values)
  out = []
  for i, c in enumerate(carries):
    if c.is_ref:
      out.append(passthrough[i])
    elif c.is_buffer:
      out.append(c.read())
    else:
      out.append(values.Scalar(next(it), c.dtype))
  return out


# -- cond ----------------------------------------------------------------------
@register(lax_cf.cond_p, pure=False)
def _cond(ctx, index, *ops, branches, **_):
  kctx = ctx.kernel
  outs = [_Carry(kctx, a) for a in ctx.avals_out]
  if any(c.is_ref for c in outs):
    raise NotImplementedError("pallas_cpu: cond returning refs")
  idx = scalar_of(kctx, index).value
  if ir.IntegerType(idx.type).width == 1:
    idx = arith.extui(ir.IntegerType.get_signless(32), idx)
  scalar_types = [c.ssa_type for c in outs if not c.is_buffer]

  def emit(k):
    """Branches k.. as nested ifs (the index is clamped, as lax.cond does)."""
    if k == len(branches) - 1:
      res = lower_closed_jaxpr(ctx, branches[k], ops)
      return _store_carries(kctx, outs, res)
    pred = arith.cmpi(arith.CmpIPredicate.sle, idx,
                      arith.constant(idx.type, k))
    if_op = scf.IfOp(pred, scalar_types, has_else=True)
    with ir.InsertionPoint(if_op.then_block):
      scf.YieldOp(_store_carries(
          kctx, outs, lower_closed_jaxpr(ctx, branches[k], ops)))
    with ir.InsertionPoint(if_op.else_block):
      scf.YieldOp(emit(k + 1))
    return list(if_op.results)

  return _bind(outs, emit(0))


# -- scan --------------------------------------------------------------------------
@register(lax_cf.scan_p, pure=False)
def _scan(ctx, *args, jaxpr, length, reverse, num_consts, num_carry, **_):
  kctx = ctx.kernel
  consts, init, xs = (args[:num_consts], args[num_consts:num_consts + num_carry],
                      args[num_consts + num_carry:])
  carry_avals = ctx.avals_out[:num_carry]
  ys_avals = ctx.avals_out[num_carry:]
  carries = [_Carry(kctx, a) for a in carry_avals]
  xs_bufs = [views.with_layout(kctx.materialize(x)) if isinstance(x, values.Array)
             else None for x in xs]
  if any(b is None for b in xs_bufs):
    raise NotImplementedError("pallas_cpu: scan over refs or scalars")
  ys_bufs = [views.with_layout(kctx.alloc(a.shape, a.dtype)) for a in ys_avals]
  init_ssa = _store_carries(kctx, carries, init)

  loop = scf.ForOp(views.as_index(0), views.as_index(length), views.as_index(1),
                   init_ssa)
  with ir.InsertionPoint(loop.body):
    i = loop.induction_variable
    if reverse:
      i = arith.subi(views.as_index(length - 1), i)
    xs_vals = [_slice_leading(b, i, x.dtype) for b, x in zip(xs_bufs, xs)]
    body_args = [*consts, *_bind(carries, loop.inner_iter_args, init), *xs_vals]
    res = lower_closed_jaxpr(ctx, jaxpr, body_args)
    new_carry, ys = res[:num_carry], res[num_carry:]
    for y, buf, a in zip(ys, ys_bufs, ys_avals):
      dst = views.subview(buf, [i] + [0] * (len(a.shape) - 1),
                          [1, *a.shape[1:]], drop=[0])
      kctx.store(y, dst)
    scf.YieldOp(_store_carries(kctx, carries, new_carry))
  ys_out = [values.load_array(b, a.dtype) for b, a in zip(ys_bufs, ys_avals)]
  return [*_bind(carries, loop.results, init), *ys_out]


def _slice_leading(buf, i, dtype):
  t = ir.MemRefType(buf.type)
  shape = t.shape
  view = views.subview(buf, [i] + [0] * (len(shape) - 1), [1, *shape[1:]],
                       drop=[0])
  if len(shape) == 1:
    return values.load_scalar(view, dtype)
  return values.load_array(view, dtype)


# -- while ---------------------------------------------------------------------------
@register(lax_cf.while_p, pure=False)
def _while(ctx, *args, cond_jaxpr, body_jaxpr, cond_nconsts, body_nconsts):
  kctx = ctx.kernel
  cconsts = args[:cond_nconsts]
  bconsts = args[cond_nconsts:cond_nconsts + body_nconsts]
  init = args[cond_nconsts + body_nconsts:]
  carries = [_Carry(kctx, a) for a in ctx.avals_out]
  init_ssa = _store_carries(kctx, carries, init)
  ssa_types = [c.ssa_type for c in carries if not c.is_buffer and not c.is_ref]
  op = scf.WhileOp(ssa_types, init_ssa)
  before = op.before.blocks.append(*ssa_types)
  after = op.after.blocks.append(*ssa_types)
  with ir.InsertionPoint(before):
    state = _bind(carries, before.arguments, init)
    (pred,) = lower_closed_jaxpr(ctx, cond_jaxpr, [*cconsts, *state])
    scf.ConditionOp(scalar_of(kctx, pred).value, list(before.arguments))
  with ir.InsertionPoint(after):
    state = _bind(carries, after.arguments, init)
    new = lower_closed_jaxpr(ctx, body_jaxpr, [*bconsts, *state])
    scf.YieldOp(_store_carries(kctx, carries, new))
  return _bind(carries, op.results, init)
