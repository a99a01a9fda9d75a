"""The explicit MXU primitives: ``pltpu.matmul_push_rhs``,
``pltpu.matmul_acc_lhs`` and ``pltpu.matmul_pop``, on an emulated MXU.

No JAX interpreter defines them; their CPU semantics here, following the
docstrings in ``jax/_src/pallas/mosaic/primitives.py``:

- Each ``mxu_index`` names an independent MXU with
  - staging registers (one per ``staging_register`` index the kernel uses),
    each empty or holding one pushed RHS;
  - the loaded RHS (the "weights") the MXU multiplies by;
  - an accumulator of rows, addressed by row (``acc_addr``).
- ``matmul_push_rhs(rhs, r, m, transpose=t)`` copies ``rhs`` (``rhs.T`` when
  ``t``) into staging register ``r`` of MXU ``m``, which must be empty.
- ``matmul_acc_lhs(a, lhs, m, load_staged_rhs=r)`` first, when ``r`` is not
  None, moves staging register ``r`` into the weights (the register becomes
  empty), then does ``acc[a:a+M, :N] += lhs @ weights`` (lhs is M x K, the
  weights K x N), accumulating in f32 for float inputs (bf16 included: the
  products of bf16 values are exact in f32) and in int32 when both inputs
  are integers (int8 -> int32 is exact).  With ``r`` None the weights of an
  earlier load are reused.  f32 inputs are multiplied at full f32 precision
  (``precision=HIGHEST``), as every dot on this backend.
- ``matmul_pop(a, (M, N), dtype, m)`` returns ``acc[a:a+M, :N]`` and zeroes
  those accumulator rows (all of their columns).  ``dtype`` is the
  accumulator's: float32 for a float MXU, int32 for an integer one.

The state lives in kernel-lifetime buffers allocated at kernel entry (the
accumulator zeroed there), so it persists across grid steps as on a TPU
core; each thread of a parallel grid has its own, as each TPU core has its
own MXUs.  Their sizes come from a pre-scan of the whole kernel body, nested
jaxprs included: per MXU, one RHS shape (K x N, after transposition) and
dtype -- the hardware's is always 256 x 256; smaller ones are accepted when
every push of that MXU agrees -- and as many accumulator rows as the
largest ``acc_addr + M``.

Errors: shapes that do not fit (an LHS whose K differs from the MXU's RHS,
a pop wider than the RHS, mixed float and integer use of one MXU), a load
from a staging register that is never pushed, or an ``acc_lhs`` on an MXU
whose weights are never loaded, are ValueErrors at lowering.  Whether a
staging register holds an RHS, and whether weights were loaded, depends on
the path taken at run time: those are checked when the kernel runs (pushing
into a full staging register, loading from an empty one, multiplying before
any load), and fail the call with a message naming the primitive, the MXU
and the user's source line.  What the kernel leaves in staging registers or
the accumulator at exit (which the TPU forbids) is not checked.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from jax._src import core as jax_core
from jax._src import tree_util
from jax._src.lax import lax
from jax._src.pallas.mosaic import primitives as tpu_primitives
from mlir import ir
from mlir.dialects import arith, linalg, memref, scf

from pallas_cpu import abi
from pallas_cpu.lowering import fusion, registry, types, values, views
from pallas_cpu.lowering.context import Ref
from pallas_cpu.lowering.jaxpr import source_line, sub_jaxprs
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.reductions import fill
from pallas_cpu.lowering.scalars import cmpi, i32, i64

_PUSH = tpu_primitives.matmul_push_rhs_p
_ACC = tpu_primitives.matmul_acc_lhs_p
_POP = tpu_primitives.matmul_pop_p


# -- the pre-scan -------------------------------------------------------------
@dataclasses.dataclass
class _Plan:
  """What the kernel does with one MXU, from every equation naming it."""
  index: int
  rhs_shape: tuple[int, int] | None = None   # K x N, as the weights hold it
  rhs_dtype: np.dtype | None = None
  pushed: set = dataclasses.field(default_factory=set)      # staging regs
  loaded_from: set = dataclasses.field(default_factory=set)
  rows: int = 0
  width: int = 0                             # N; pops may read fewer
  acc_dtype: np.dtype | None = None
  acc_why: str = ""                          # what fixed acc_dtype
  first_acc: jax_core.JaxprEqn | None = None  # for messages

  def set_acc_dtype(self, dtype: np.dtype, why: str) -> None:
    if self.acc_dtype is None:
      self.acc_dtype, self.acc_why = dtype, why
    elif self.acc_dtype != dtype:
      raise ValueError(
          f"MXU {self.index} is used with a {dtype} accumulator ({why}) and "
          f"with a {self.acc_dtype} one ({self.acc_why}); one MXU "
          "accumulates either floats or integers within a kernel")


def _check_input_dtype(prim: str, what: str, dtype) -> np.dtype:
  dtype = np.dtype(dtype)
  if types.is_float(dtype) and types.bitwidth(dtype) <= 32:
    return dtype
  if types.is_int(dtype) and not types.is_unsigned(dtype) and (
      types.bitwidth(dtype) <= 32):
    return dtype
  raise NotImplementedError(
      f"{prim}: {what} of dtype {dtype}; the MXU takes floats of up to 32 "
      "bits and signed integers of up to 32 bits")


def _matrix_shape(prim: str, what: str, shape) -> tuple[int, int]:
  shape = tuple(shape)
  if len(shape) != 2:
    raise ValueError(f"{prim}: {what} must be a matrix (2-D), got shape "
                     f"{shape}")
  return shape


def _acc_dtype_of(*dtypes) -> np.dtype:
  if all(types.is_int(d) for d in dtypes):
    return np.dtype(np.int32)
  return np.dtype(np.float32)


def _eqns(jaxpr: jax_core.Jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in sub_jaxprs(eqn):
      yield from _eqns(sub)


def _where(eqn) -> str:
  return f"{eqn.primitive.name} at {source_line(eqn)}"


def _scan(jaxpr: jax_core.Jaxpr) -> dict[int, _Plan]:
  """The per-MXU plans of a kernel body; ValueError for uses that cannot
  fit together."""
  plans: dict[int, _Plan] = {}
  mxu_eqns = [e for e in _eqns(jaxpr) if e.primitive in (_PUSH, _ACC, _POP)]

  def plan(eqn) -> _Plan:
    m = int(eqn.params["mxu_index"])
    if m < 0:
      raise ValueError(f"{_where(eqn)}: mxu_index must be >= 0, got {m}")
    return plans.setdefault(m, _Plan(m))

  # Pushes first: they fix each MXU's RHS, which the others are checked by.
  for eqn in mxu_eqns:
    if eqn.primitive is not _PUSH:
      continue
    p = plan(eqn)
    aval = eqn.invars[0].aval
    k, n = _matrix_shape("matmul_push_rhs", "the RHS", aval.shape)
    if eqn.params["transpose"]:
      k, n = n, k
    dtype = _check_input_dtype("matmul_push_rhs", "an RHS", aval.dtype)
    if p.rhs_shape is None:
      p.rhs_shape, p.rhs_dtype = (k, n), dtype
    elif (p.rhs_shape, p.rhs_dtype) != ((k, n), dtype):
      raise ValueError(
          f"{_where(eqn)}: pushes a {k}x{n} {dtype} RHS (after transpose) to "
          f"MXU {p.index}, which another push gives a {p.rhs_shape[0]}x"
          f"{p.rhs_shape[1]} {p.rhs_dtype} one; pallas_cpu keeps one RHS "
          "shape and dtype per MXU (the TPU's is always 256x256)")
    r = int(eqn.params["staging_register"])
    if r < 0:
      raise ValueError(f"{_where(eqn)}: staging_register must be >= 0, got "
                       f"{r}")
    p.pushed.add(r)
    p.width = n

  for eqn in mxu_eqns:
    if eqn.primitive is _ACC:
      p = plan(eqn)
      aval = eqn.invars[0].aval
      rows, k = _matrix_shape("matmul_acc_lhs", "the LHS", aval.shape)
      dtype = _check_input_dtype("matmul_acc_lhs", "an LHS", aval.dtype)
      r = eqn.params["load_staged_rhs"]
      if p.rhs_shape is None:
        raise ValueError(f"{_where(eqn)}: no RHS is ever pushed to MXU "
                         f"{p.index} (matmul_push_rhs)")
      if r is not None and int(r) not in p.pushed:
        raise ValueError(
            f"{_where(eqn)}: load_staged_rhs={r}, but staging register {r} "
            f"of MXU {p.index} is never pushed (pushed: {sorted(p.pushed)})")
      if k != p.rhs_shape[0]:
        raise ValueError(
            f"{_where(eqn)}: the LHS is {rows}x{k} but MXU {p.index}'s RHS is "
            f"{p.rhs_shape[0]}x{p.rhs_shape[1]}: the LHS must have "
            f"{p.rhs_shape[0]} columns")
      if r is not None:
        p.loaded_from.add(int(r))
      if p.first_acc is None:
        p.first_acc = eqn
      p.set_acc_dtype(_acc_dtype_of(dtype, p.rhs_dtype),
                      f"{dtype} LHS x {p.rhs_dtype} RHS, "
                      f"{_where(eqn)}")
      p.rows = max(p.rows, _addr(eqn) + rows)
    elif eqn.primitive is _POP:
      p = plan(eqn)
      rows, n = _matrix_shape("matmul_pop", "shape", eqn.params["shape"])
      dtype = np.dtype(eqn.params["dtype"])
      p.set_acc_dtype(dtype, _where(eqn))
      if p.rhs_shape is not None and n > p.width:
        raise ValueError(
            f"{_where(eqn)}: pops {n} columns but MXU {p.index}'s RHS has "
            f"{p.width}")
      p.width = max(p.width, n)
      p.rows = max(p.rows, _addr(eqn) + rows)

  for p in plans.values():
    if p.first_acc is not None and not p.loaded_from:
      raise ValueError(
          f"{_where(p.first_acc)}: no matmul_acc_lhs ever loads an RHS into "
          f"MXU {p.index} (pass load_staged_rhs=<staging register> to load the "
          "pushed RHS)")
  return plans


def _addr(eqn) -> int:
  a = eqn.params["acc_addr"]
  if not isinstance(a, (int, np.integer)) or a < 0:
    raise ValueError(f"{_where(eqn)}: acc_addr must be a static integer "
                     f">= 0, got {a!r}")
  return int(a)


# -- the state ----------------------------------------------------------------
@dataclasses.dataclass
class _Mxu:
  """One MXU's buffers: staging registers and their full flags (i32, 1 when
  holding an RHS), the weights and their loaded flag, the accumulator."""
  plan: _Plan
  staging: dict[int, ir.Value]
  full: dict[int, ir.Value]
  weights: ir.Value | None
  loaded: ir.Value
  acc: ir.Value | None


def _named_alloc(kctx, shape, dtype, name: str) -> ir.Value:
  buf = kctx.alloc(shape, dtype)
  # Names the buffer in dumped IR (kernel stage) for readers and tests.
  buf.owner.attributes["pallas_cpu.name"] = ir.StringAttr.get(name)
  return buf


def _flag(kctx, name: str) -> ir.Value:
  buf = _named_alloc(kctx, (), np.int32, name)
  with kctx.init_ip:
    memref.store(i32(0), buf, [])
  return buf


def _state(ctx, m: int) -> _Mxu:
  """MXU ``m``'s buffers, allocated for every MXU on the first MXU
  primitive of the kernel."""
  kctx = ctx.kernel
  mxus = kctx.rule_state.get("mxu")
  if mxus is None:
    if kctx.jaxpr is None:
      raise NotImplementedError(
          "MXU primitives outside a kernel body lowered by pallas_cpu")
    mxus = kctx.rule_state["mxu"] = {}
    for i, p in sorted(_scan(kctx.jaxpr).items()):
      staging, full = {}, {}
      for r in sorted(p.pushed):
        staging[r] = _named_alloc(kctx, p.rhs_shape, p.rhs_dtype,
                                  f"mxu{i}.staging{r}")
        full[r] = _flag(kctx, f"mxu{i}.staging{r}.full")
      weights = (None if p.rhs_shape is None else _named_alloc(
          kctx, p.rhs_shape, p.rhs_dtype, f"mxu{i}.weights"))
      loaded = _flag(kctx, f"mxu{i}.weights.loaded")
      acc = None
      if p.acc_dtype is not None:  # else only pushed to
        acc = _named_alloc(kctx, (p.rows, p.width), p.acc_dtype,
                           f"mxu{i}.acc")
        with kctx.init_ip:
          fill(acc, 0)
      mxus[i] = _Mxu(p, staging, full, weights, loaded, acc)
  if m not in mxus:  # the equation is not in the scanned body
    raise NotImplementedError(
        f"MXU {m} is used where pallas_cpu's pre-scan of the kernel body "
        "does not see it")
  return mxus[m]


def _fail_unless(ctx, flag: ir.Value, want: int, message: str) -> None:
  """Fails the kernel call (the runtime's check failure, with ``message``
  and the grid point) when ``flag`` does not hold ``want``."""
  kctx = ctx.kernel
  check_id = len(kctx.check_messages)
  kctx.check_messages.append(f"{message} (at {ctx.source})")
  bad = cmpi("ne", memref.load(flag, []), i32(want))
  if_op = scf.IfOp(bad)
  with ir.InsertionPoint(if_op.then_block):
    kctx.call_runtime(abi.RT_CHECK_FAILED, [
        kctx.runtime_ctx, i64(check_id), kctx.grid_index()])
    scf.YieldOp([])


# -- the rules -----------------------------------------------------------------
@register(_PUSH, pure=False)
def _push_rhs(ctx, rhs, *, staging_register, mxu_index, transpose):
  mxu = _state(ctx, mxu_index)
  r = int(staging_register)
  _fail_unless(ctx, mxu.full[r], 0,
               f"matmul_push_rhs: staging register {r} of MXU {mxu_index} "
               "already holds an RHS; load it with matmul_acc_lhs("
               f"load_staged_rhs={r}) before pushing again")
  if transpose:
    shape = tuple(reversed(rhs.shape))
    rhs = values.Array(values.reindex(rhs.node, [1, 0], shape), shape,
                       rhs.dtype)
  ctx.kernel.store(rhs, mxu.staging[r])
  memref.store(i32(1), mxu.full[r], [])
  return []


@register(_ACC, pure=False)
def _acc_lhs(ctx, lhs, *, acc_addr, mxu_index, load_staged_rhs):
  mxu = _state(ctx, mxu_index)
  p = mxu.plan
  if load_staged_rhs is not None:
    r = int(load_staged_rhs)
    _fail_unless(ctx, mxu.full[r], 1,
                 f"matmul_acc_lhs: load_staged_rhs={r}, but staging register "
                 f"{r} of MXU {mxu_index} is empty (push an RHS with "
                 "matmul_push_rhs first)")
    linalg.copy(mxu.staging[r], outs=[mxu.weights])
    memref.store(i32(0), mxu.full[r], [])
    memref.store(i32(1), mxu.loaded, [])
  else:
    _fail_unless(ctx, mxu.loaded, 1,
                 f"matmul_acc_lhs: MXU {mxu_index} has no RHS loaded (pass "
                 "load_staged_rhs=<staging register> to load a pushed RHS)")
  rows = lhs.shape[0]
  n = p.rhs_shape[1]
  window = views.subview(mxu.acc, [int(acc_addr), 0], [rows, n])
  # The product, by dot_general's own rule, offered the accumulator window
  # as an accumulation target (the microkernel adds into it in place);
  # otherwise (integer products, linalg loops) added below.
  target = fusion.AccumulateTarget(
      Ref(window, values.PrivateRoot(f"MXU {mxu_index} accumulator"),
          p.acc_dtype),
      tree_util.tree_structure(()), [],
      flush=lambda root: None)  # pops copy the accumulator out: no lazy reads
  dot = registry.lookup(lax.dot_general_p).fn
  dot_ctx = dataclasses.replace(
      ctx, avals_in=[ctx.avals_in[0],
                     jax_core.ShapedArray(p.rhs_shape, p.rhs_dtype)],
      avals_out=[jax_core.ShapedArray((rows, n), p.acc_dtype)],
      accumulate_into=target)
  product = dot(dot_ctx, lhs, values.load_array(mxu.weights, p.rhs_dtype),
                dimension_numbers=(((1,), (0,)), ((), ())),
                precision=lax.Precision.HIGHEST,
                preferred_element_type=p.acc_dtype)
  if target.accepted:
    return []
  add = arith.addf if types.is_float(p.acc_dtype) else arith.addi
  total = values.Array(
      values.Op(lambda xs: add(xs[0], xs[1]),
                (values.load_array(window, p.acc_dtype).node, product.node)),
      (rows, n), p.acc_dtype)
  ctx.kernel.store(total, window)
  return []


@register(_POP, pure=False)
def _pop(ctx, *, acc_addr, shape, dtype, mxu_index):
  mxu = _state(ctx, mxu_index)
  kctx = ctx.kernel
  rows, n = (int(d) for d in shape)
  acc_dtype = mxu.plan.acc_dtype
  out = kctx.alloc((rows, n), acc_dtype)
  linalg.copy(views.subview(mxu.acc, [int(acc_addr), 0], [rows, n]),
              outs=[out])
  fill(views.subview(mxu.acc, [int(acc_addr), 0], [rows, mxu.plan.width]), 0)
  return values.load_array(out, np.dtype(dtype))
