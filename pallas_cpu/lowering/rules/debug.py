"""Debugging primitives: pl.debug_print (printed from compiled code through
the runtime, formatted by JAX's own formatter as in interpret mode) and
pl.debug_check (an error naming the check and grid point, when
pl.enable_debug_checks() is on at trace time); jax.debug.callback is
dropped, with a warning, as Mosaic drops it."""
from __future__ import annotations

import warnings

import numpy as np
from jax._src import checkify
from jax._src import debugging
from jax._src import tree_util
from jax._src.pallas import core as pallas_core
from mlir import ir
from mlir.dialects import arith, memref, scf

from pallas_cpu import abi
from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.scalars import i64


def _raw_bits(v: ir.Value, dtype) -> ir.Value:
  """A register value's bits as stored in memory (bool: 0/1, float8: its
  byte), zero-extended to i64 (decoded by runtime_lib)."""
  v = values.to_memory(v, dtype)
  if not isinstance(v.type, ir.IntegerType):
    v = arith.bitcast(ir.IntegerType.get_signless(types.bitwidth(dtype)), v)
  if ir.IntegerType(v.type).width == 64:
    return v
  return arith.extui(ir.IntegerType.get_signless(64), v)


@register(debugging.debug_print_p, barrier=True)
def _debug_print(ctx, *dyn_args, fmt, ordered, in_tree, static_args,
                 np_printoptions, has_placeholders, **_):
  """Records the raw bits of every printed element (scalars, and arrays
  element by element in row-major order: interpret mode prints any mix,
  beyond Mosaic's "scalars or one vector") in one i64 buffer; the runtime
  hands them with the print id to runtime_lib, which rebuilds the values
  from the table entry's dtypes and shapes and formats them with JAX's own
  formatter."""
  if ordered:
    raise NotImplementedError("ordered debug_print")
  args, kwargs = debugging.merge_callback_args(in_tree, dyn_args, static_args)
  if kwargs:
    raise ValueError("debug_print in a kernel takes positional arguments only")
  kctx = ctx.kernel
  shapes = [tuple(int(d) for d in np.shape(a)) for a in ctx.avals_in]
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  print_id = len(kctx.debug_prints)
  kctx.debug_prints.append({
      "fmt": fmt, "has_placeholders": bool(has_placeholders),
      "dtypes": [str(np.dtype(a.dtype)) for a in ctx.avals_in],
      "shapes": [list(s) for s in shapes],
      "np_printoptions": [list(kv) for kv in dict(np_printoptions).items()]})
  n = sum(sizes)
  buf = views.with_layout(kctx.alloc((max(n, 1),), np.int64))
  pos = 0
  for a, aval, shape, size in zip(dyn_args, ctx.avals_in, shapes, sizes):
    dtype = np.dtype(aval.dtype)
    if not shape:
      bits = _raw_bits(scalar_of(kctx, a).value, dtype)
      memref.store(bits, buf, [views.as_index(pos)])
    elif size:
      if isinstance(a, values.Scalar):  # a splat
        a = values.Array(values.Splat(a.value), shape, dtype)
      raw = values.Array(
          values.Op(lambda v, dt=dtype: _raw_bits(v[0], dt), (a.node,)),
          shape, np.dtype(np.int64))
      kctx.store(raw, views.reshape(views.subview(buf, [pos], [size], [1]),
                                    shape))
    pos += size
  window = views.space_cast(
      views.subview(buf, [0], [n], [1]), None)
  # One declaration for every arity: a dynamically sized memref.
  dynamic = ir.MemRefType.get([ir.ShapedType.get_dynamic_size()],
                              ir.IntegerType.get_signless(64),
                              layout=ir.MemRefType(window.type).layout)
  kctx.call_runtime(abi.RT_DEBUG_PRINT, [
      kctx.runtime_ctx, i64(print_id), memref.CastOp(dynamic, window).result])
  return []


@register(checkify.check_p, barrier=True)
def _check(ctx, *err_args, err_tree, debug):
  if not debug:
    raise NotImplementedError(
        "pallas_cpu: non-debug checks; functionalize them with "
        "jax.experimental.checkify")
  if not pallas_core.debug_checks_enabled():
    return []
  error = tree_util.tree_unflatten(err_tree, err_args)
  [pred] = error._pred.values()
  [exception_tree] = error._metadata.values()
  [payload] = error._payload.values()
  exception = tree_util.tree_unflatten(exception_tree, payload)
  kctx = ctx.kernel
  check_id = len(kctx.check_messages)
  kctx.check_messages.append(f"{exception.fmt_string} (at {ctx.source})")
  failed = scalar_of(kctx, pred).value  # check_p's predicate means "failed"
  if_op = scf.IfOp(failed)
  with ir.InsertionPoint(if_op.then_block):
    kctx.call_runtime(abi.RT_CHECK_FAILED, [
        kctx.runtime_ctx, i64(check_id), kctx.grid_index()])
    scf.YieldOp([])
  return []


@register(debugging.debug_callback_p)
def _debug_callback(ctx, *args, callback, effect, partitioned):
  """A no-op, as in Mosaic's lowering: the callback is a Python object, which
  compiled (and persistently cached) native code cannot call back into.
  Python's default warning filter shows the warning once per call site."""
  del args, callback, effect, partitioned
  warnings.warn(
      f"pallas_cpu: jax.debug.callback at {ctx.source} is dropped: compiled "
      "kernels do not run Python callbacks (nor does Mosaic on TPU); use "
      "pl.debug_print, or interpret mode, to see values from a kernel")
  return []
