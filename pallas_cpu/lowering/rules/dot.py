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

Matrix products proper -- f32 or bf16 operands, one free dimension on each
side, one contracting dimension, any batch dimensions -- go to the runtime's
register-tiled microkernel instead (runtime/matmul.cc): operand views are
passed in place (transposes as strides), f32 accumulation.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from jax._src.lax import lax
from mlir import ir
from mlir.dialects import arith, memref, scf

from pallas_cpu import abi
from pallas_cpu.lowering import types, values, views
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.memory import apply_transforms, note_access
from pallas_cpu.lowering.rules.reductions import (
    accumulator_dtype, emit_generic, fill, result)
from pallas_cpu.lowering.scalars import convert


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
  use_microkernel = _use_microkernel(in_dtypes, acc_dtype, nlf, nrf, nc,
                                     lhs_aval, lc)
  target = ctx.accumulate_into
  if use_microkernel and out_dtype == acc_dtype and target is not None:
    dest = _accumulator_view(ctx, target, lhs, rhs)
    if dest is not None:
      _matmul_microkernel(kctx, lhs, rhs, dest, in_dtypes, lhs_dims,
                          rhs_dims, nb, out_shape, accumulate=True)
      return None  # the fused add and swap never read the product
  acc = kctx.alloc(out_shape, acc_dtype)
  if use_microkernel:
    _matmul_microkernel(kctx, lhs, rhs, acc, in_dtypes,
                        lhs_dims, rhs_dims, nb, out_shape)
    return result(kctx, acc, acc_dtype, out_dtype)
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


# -- the microkernel path ---------------------------------------------------
_MICROKERNEL_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16))
# Below this many multiply-adds the generic loop nest wins: packing costs.
_MICROKERNEL_MIN_WORK = 8 * 8 * 8


def _use_microkernel(in_dtypes, acc_dtype, nlf, nrf, nc, lhs_aval, lc) -> bool:
  if acc_dtype != np.float32 or any(d not in _MICROKERNEL_DTYPES
                                   for d in in_dtypes):
    return False
  if (nlf, nrf, nc) != (1, 1, 1):
    return False
  return int(np.prod(lhs_aval.shape)) * 8 >= _MICROKERNEL_MIN_WORK


def _matrix_view(kctx, v: values.Array, dims: list[int], nb: int,
                 batch_ivs: list[ir.Value], row_it: int) -> ir.Value:
  """A 2-D strided view of the operand for one batch element, whose rows
  follow iteration dim ``row_it`` (the lhs: its free dim; the rhs: the
  contracting dim).  ``dims[d]``: the iteration dim of operand dim d.

  An operand that is a plain (possibly transposed) load is viewed in place;
  anything else is computed into a temporary first."""
  node = v.node
  if (isinstance(node, values.Load) and None not in node.index_map
      and len(node.index_map) == len(v.shape)):
    base, value_dim_of = node.memref, list(node.index_map)
  else:
    # Computed into a temporary in the order its loads read memory (a
    # transposed masked tile is written row by row, not gathered column by
    # column); the view below transposes it back through strides.
    value_dim_of = _memory_order(node, len(v.shape))
    dim_map = [value_dim_of.index(d) for d in range(len(v.shape))]
    in_order = values.Array(values.reindex(node, dim_map),
                            tuple(v.shape[d] for d in value_dim_of), v.dtype)
    base = views.with_layout(kctx.materialize(in_order))
  # Memref dim m holds value dim value_dim_of[m], iteration dim
  # dims[value_dim_of[m]].
  it_of = [dims[vd] for vd in value_dim_of]
  offsets, sizes, drop = [], [], []
  shape = ir.MemRefType(base.type).shape
  for m, it in enumerate(it_of):
    if it < nb:
      offsets.append(batch_ivs[it])
      sizes.append(1)
      drop.append(m)
    else:
      offsets.append(0)
      sizes.append(shape[m])
  view = views.subview(base, offsets, sizes, drop=drop)
  kept = [it for m, it in enumerate(it_of) if m not in drop]
  t = ir.MemRefType(view.type)
  if kept[0] != row_it:  # stored (cols, rows): transpose the view
    strides = types.memref_strides(t)
    transposed = ir.MemRefType.get(
        [t.shape[1], t.shape[0]], t.element_type,
        layout=types.strided_layout([strides[1], strides[0]]),
        memory_space=t.memory_space)
    perm = ir.AffineMap.get_permutation([1, 0])
    view = memref.TransposeOp(transposed, view,
                              ir.AffineMapAttr.get(perm)).result
    t = ir.MemRefType(view.type)
  dyn = ir.ShapedType.get_dynamic_size()
  flat = views.space_cast(view, None)
  generic = ir.MemRefType.get([dyn, dyn], t.element_type,
                              layout=types.strided_layout([None, None]))
  return memref.CastOp(generic, flat).result


def _memory_order(node: values.Node, rank: int) -> list[int]:
  """The value dims in the order the first full-rank load of ``node`` lays
  them out in memory (identity when there is none)."""
  stack = [node]
  while stack:
    n = stack.pop()
    if isinstance(n, values.Load):
      if (len(n.index_map) == rank and None not in n.index_map
          and sorted(n.index_map) == list(range(rank))):
        return list(n.index_map)
    elif isinstance(n, values.Op):
      stack.extend(reversed(n.args))
  return list(range(rank))


def _accumulator_view(ctx, target, lhs, rhs) -> ir.Value | None:
  """The ref view of a fused ``acc_ref[idx] += dot(...)`` (see
  lowering/fusion.py) when the microkernel can accumulate into it in place:
  f32 in memory, operands not reading it.  Accepting flushes lazy reads of
  the ref, since it is now written before the add's position."""
  try:
    view, _ = apply_transforms(ctx, target.ref, target.tree,
                               target.index_args)
  except NotImplementedError:
    return None  # not a memref view (a width-changing ref bitcast)
  if view.dtype != np.float32 or view.sem_id is not None:
    return None
  # The microkernel writes each row of C contiguously (it takes no column
  # stride): acc_ref[:, :, j] or a strided column slice is not fused.
  if types.memref_strides(ir.MemRefType(view.memref.type))[-1] != 1:
    return None
  if any(view.root in values.roots_read(v.node) for v in (lhs, rhs)):
    return None
  target.flush(view.root)
  target.accepted = True
  # The fused swap writes the view (its get already read it).
  note_access(ctx, view, write=True)
  return view.memref


def _matmul_microkernel(kctx, lhs, rhs, acc, in_dtypes, lhs_dims, rhs_dims,
                        nb, out_shape, accumulate: bool = False) -> None:
  """acc (+)= lhs . rhs through runtime/matmul.cc, one call per batch
  element (a loop nest over the batch dims)."""
  names = ["bf16" if d == ml_dtypes.bfloat16 else "f32" for d in in_dtypes]
  acc_view = views.with_layout(acc)

  def emit(batch_ivs):
    # Iteration dims: batch < lhs free (nb) < rhs free (nb+1) < contracting.
    a = _matrix_view(kctx, lhs, lhs_dims, nb, batch_ivs, row_it=nb)
    b = _matrix_view(kctx, rhs, rhs_dims, nb, batch_ivs, row_it=nb + 2)
    c = views.subview(acc_view, [*batch_ivs, 0, 0],
                      [1] * nb + list(out_shape[nb:]), drop=list(range(nb)))
    c = views.space_cast(c, None)
    dyn = ir.ShapedType.get_dynamic_size()
    c = memref.CastOp(ir.MemRefType.get(
        [dyn, dyn], ir.F32Type.get(),
        layout=types.strided_layout([None, None])), c).result
    kctx.call_runtime(abi.rt_matmul(*names), [
        kctx.runtime_ctx, a, b, c,
        arith.constant(ir.IntegerType.get_signless(64), int(accumulate))])

  def nest(d, ivs):
    if d == nb:
      emit(ivs)
      return
    loop = scf.ForOp(views.as_index(0), views.as_index(out_shape[d]),
                     views.as_index(1))
    with ir.InsertionPoint(loop.body):
      nest(d + 1, [*ivs, loop.induction_variable])
      scf.YieldOp([])

  nest(0, [])
