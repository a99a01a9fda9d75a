"""Matrix products (``dot_general``) and ``transpose``.

``dot_general`` lowers to one ``linalg.generic`` over the iteration space
(batch dims, lhs free dims, rhs free dims, contracting dims) -- the output's
dimension order, as in JAX -- with ``reduction`` iterators on the
contracting dims, into a zero-filled accumulator.  Operands are converted
to the accumulator type in the body (``arith.extf`` for bf16 -> f32,
``arith.extsi`` for int8 -> int32), so ``preferred_element_type`` needs no
temporary.  16-bit float results accumulate in f32 and round once at the
end, as XLA's CPU backend does.  A transposed operand (``q @ k.T``) is not
copied: ``transpose`` is a lazy re-indexing, and the generic reads the
operand through the permuted indexing map.
"""
from __future__ import annotations

import numpy as np
from jax._src.lax import lax
from mlir.dialects import arith

from pallas_cpu.lowering import types, values
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.elementwise import convert
from pallas_cpu.lowering.rules.reductions import (
    accumulator_dtype, emit_generic, fill, result)


@register(lax.dot_general_p)
def _dot_general(ctx, lhs, rhs, *, dimension_numbers, precision=None,
                 preferred_element_type=None, **_):
  del precision  # every precision is full f32 precision on a CPU
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc, lb, rb = (tuple(int(d) for d in ds) for ds in (lc, rc, lb, rb))
  lhs_aval, rhs_aval = ctx.avals_in
  out_dtype = np.dtype(ctx.avals_out[0].dtype)
  for aval in (lhs_aval, rhs_aval):
    if types.is_unsigned(aval.dtype):
      # Mosaic's rule: dot_general reads all integer inputs as signed.
      raise NotImplementedError(
          f"Unsigned integer dtype {aval.dtype} is not supported for "
          "dot_general (matmul), as on the Pallas Mosaic TPU backend; cast "
          "to a signed type before the dot operation")
  in_dtypes = [np.dtype(lhs_aval.dtype), np.dtype(rhs_aval.dtype)]
  if types.is_bool(out_dtype) or (
      not types.is_float(out_dtype)
      and any(types.is_float(d) for d in in_dtypes)):
    raise NotImplementedError(
        f"dot_general of {in_dtypes[0]} x {in_dtypes[1]} -> {out_dtype}")
  if isinstance(lhs, values.Scalar) or isinstance(rhs, values.Scalar):
    raise NotImplementedError("dot_general of a rank-0 operand")
  lhs_rank, rhs_rank = len(lhs_aval.shape), len(rhs_aval.shape)
  lf = [d for d in range(lhs_rank) if d not in lc and d not in lb]
  rf = [d for d in range(rhs_rank) if d not in rc and d not in rb]
  nb, nlf, nrf, nc = len(lb), len(lf), len(rf), len(lc)
  # Iteration dims: batch, lhs free, rhs free (the output), contracting.
  lhs_dims = [0] * lhs_rank
  rhs_dims = [0] * rhs_rank
  for i, (a, b) in enumerate(zip(lb, rb)):
    lhs_dims[a] = rhs_dims[b] = i
  for i, a in enumerate(lf):
    lhs_dims[a] = nb + i
  for i, b in enumerate(rf):
    rhs_dims[b] = nb + nlf + i
  for i, (a, b) in enumerate(zip(lc, rc)):
    lhs_dims[a] = rhs_dims[b] = nb + nlf + nrf + i
  n_out = nb + nlf + nrf
  out_shape = tuple(ctx.avals_out[0].shape)
  assert len(out_shape) == n_out, (out_shape, dimension_numbers)

  acc_dtype = accumulator_dtype(out_dtype)
  acc_is_float = types.is_float(acc_dtype)
  kctx = ctx.kernel
  acc = kctx.alloc(out_shape, acc_dtype)
  fill(acc, 0)

  def body(ins, outs):
    a = convert(ins[0], in_dtypes[0], acc_dtype)
    b = convert(ins[1], in_dtypes[1], acc_dtype)
    if acc_is_float:
      return [arith.addf(outs[0], arith.mulf(a, b))]
    return [arith.addi(outs[0], arith.muli(a, b))]

  emit_generic(kctx, [(lhs, lhs_dims), (rhs, rhs_dims)],
               [(acc, range(n_out))],
               ["parallel"] * n_out + ["reduction"] * nc, body)
  return result(kctx, acc, acc_dtype, out_dtype)


@register(lax.transpose_p)
def _transpose(ctx, x, *, permutation):
  """Lazy: output dim ``k`` follows operand dim ``permutation[k]``; the copy
  (a generic with a permuted input map) happens only if the value has to
  be in memory, and a consumer such as dot_general reads through the map."""
  if isinstance(x, values.Scalar):
    return x
  perm = tuple(int(p) for p in permutation)
  dim_map = [0] * len(perm)
  for k, d in enumerate(perm):
    dim_map[d] = k
  shape = tuple(x.shape[d] for d in perm)
  return values.Array(values.reindex(x.node, dim_map, shape), shape, x.dtype)
