"""Sub-byte integers (int4, uint4, int2, uint2) at the custom call's boundary.

XLA's CPU client packs them: the buffers an FFI handler receives hold two
int4 (four int2) per byte, element ``2k`` in the low nibble of byte ``k``
(element ``4k + i`` of an int2 array in bits ``[2i, 2i + 2)``), and the
FFI's ``size_bytes()`` still counts one byte per element (checked with a
handler that dumps its operand's bytes, jaxlib 0.10.2).  Inside a kernel
every memory space is byte-addressed instead -- one element per byte, the
value in the low bits, stores sign- or zero-extending (``lowering/types.py``)
-- so DMAs, windows, strides and the runtime's byte counts need nothing
special.  The custom call therefore takes and returns such operands as
int8/uint8: XLA converts (sign- or zero-extends) them before the call and
narrows (truncates) the results after it, fused with whatever produces or
consumes them.  Aliased operands stay aliased: the widened input is donated
to the widened output.
"""
from __future__ import annotations

import numpy as np
from jax._src import core as jax_core
from jax._src import dtypes as jax_dtypes
from jax._src.interpreters import mlir
from jax._src.lib.mlir.dialects import hlo


def is_subbyte(dtype) -> bool:
  dtype = np.dtype(dtype)
  return (jax_dtypes.issubdtype(dtype, np.integer)
          and jax_dtypes.itemsize_bits(dtype) < 8)


def storage_dtype(dtype) -> np.dtype:
  """The one-byte integer a sub-byte dtype travels as (others: itself)."""
  dtype = np.dtype(dtype)
  if not is_subbyte(dtype):
    return dtype
  unsigned = jax_dtypes.issubdtype(dtype, np.unsignedinteger)
  return np.dtype(np.uint8 if unsigned else np.int8)


def _storage_aval(aval):
  if not isinstance(aval, jax_core.ShapedArray) or not is_subbyte(aval.dtype):
    return aval
  return aval.update(dtype=storage_dtype(aval.dtype))


def _convert(ctx, node, aval):
  return hlo.convert(mlir.aval_to_ir_type(ctx.module_context, aval), node)


def at_boundary(ctx: mlir.LoweringRuleContext, in_nodes):
  """``(ctx, in_nodes, narrow)`` for the custom call: sub-byte operands
  widened to a byte each, ``ctx`` with the widened avals, and ``narrow``
  turning the call's results back into the kernel's output dtypes."""
  avals_in = [_storage_aval(a) for a in ctx.avals_in]
  avals_out = [_storage_aval(a) for a in ctx.avals_out]
  if avals_in == list(ctx.avals_in) and avals_out == list(ctx.avals_out):
    return ctx, in_nodes, lambda outs: outs
  nodes = [n if a is w else _convert(ctx, n, w)
           for n, a, w in zip(in_nodes, ctx.avals_in, avals_in)]
  originals = list(ctx.avals_out)

  def narrow(outs):
    return [o if a is w else _convert(ctx, o, a)
            for o, a, w in zip(outs, originals, avals_out)]
  return ctx.replace(avals_in=avals_in, avals_out=avals_out), nodes, narrow
