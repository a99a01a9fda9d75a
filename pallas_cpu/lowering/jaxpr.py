"""The jaxpr walker: the only place that looks up lowering rules, and
``lower_fun``, which lowers a traceable JAX function with them.

It sits below the rules: a rule with a sub-jaxpr (cond, scan, run_scoped,
emit_pipeline) or a reference implementation calls back into it, as JAX's
rules call ``mlir.jaxpr_subcomp``.  It needs the rule table only, never a
rule module; the entry (kernel.py) imports the rules, which fill the table.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax._src import core as jax_core
from jax._src import source_info_util
from jax._src.state import types as state_types
from mlir import ir

from pallas_cpu.lowering import errors, fusion, registry, values
from pallas_cpu.lowering.context import KernelContext, RuleContext


def source_line(eqn: jax_core.JaxprEqn, parent: str = "") -> str:
  """The user's line of ``eqn``; equations nested in a library's jit (e.g.
  the sort inside jnp.sort) have none and take their caller's, ``parent``."""
  return source_info_util.summarize(eqn.source_info) or parent


def _user_frame(eqn: jax_core.JaxprEqn) -> source_info_util.Frame | None:
  return source_info_util.user_frame(eqn.source_info.traceback)


def _location(eqn: jax_core.JaxprEqn) -> ir.Location:
  frame = _user_frame(eqn)
  if frame is None:  # keep the enclosing equation's location
    try:
      return ir.Location.current
    except ValueError:
      return ir.Location.unknown()
  return ir.Location.file(frame.file_name, frame.start_line,
                          frame.start_column)


def _writes_memory(eqn: jax_core.JaxprEqn) -> bool:
  return any(isinstance(e, (state_types.WriteEffect, state_types.AccumEffect))
             for e in eqn.effects)


def sub_jaxprs(eqn: jax_core.JaxprEqn):
  """The jaxprs in ``eqn``'s parameters (branches, bodies, calls)."""
  for p in eqn.params.values():
    for x in (p if isinstance(p, (tuple, list)) else (p,)):
      if isinstance(x, jax_core.ClosedJaxpr):
        yield x.jaxpr
      elif isinstance(x, jax_core.Jaxpr):
        yield x


def unsupported_primitives(jaxpr: jax_core.Jaxpr, parent: str = ""
                           ) -> list[tuple[str, str]]:
  """(primitive, source line) for every equation that has no rule,
  sub-jaxprs of supported control flow included."""
  found = []
  for eqn in jaxpr.eqns:
    line = source_line(eqn, parent)
    if registry.lookup(eqn.primitive) is None:
      found.append((eqn.primitive.name, line))
    else:
      for sub in sub_jaxprs(eqn):
        found.extend(unsupported_primitives(sub, line))
  return found


def check_supported(jaxpr: jax_core.Jaxpr, kernel_name: str) -> None:
  """Raises NotImplementedError naming every equation of ``jaxpr`` (nested
  ones included) that has no rule, each with its source line."""
  missing = unsupported_primitives(jaxpr)
  if missing:
    lines = "\n".join(f"  {p} at {src}" for p, src in missing)
    names = sorted({p for p, _ in missing})
    raise NotImplementedError(
        f"pallas_cpu cannot lower kernel '{kernel_name}': unsupported "
        f"primitive(s) {', '.join(names)}:\n{lines}")


def lower_jaxpr(kctx: KernelContext, jaxpr: jax_core.Jaxpr,
                args: Sequence, consts: Sequence = (), parent: str = "") -> list:
  """Lowers ``jaxpr`` at the current insertion point; returns its outputs
  (``values.Value`` for arrays and scalars, ``context.Ref`` for refs).  ``parent``
  is the source line of the equation whose sub-jaxpr this is."""
  env: dict = {}
  users = fusion.users_of(jaxpr)  # var -> equations reading it, in order
  counts = {v: len(u) for v, u in users.items()}
  last_use = {v: u[-1] for v, u in users.items()}
  fused_away: set[int] = set()

  def read(atom):
    if isinstance(atom, jax_core.Literal):
      return kctx.constant(atom.val, atom.aval.dtype)
    return env[atom]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x

  for i, eqn in enumerate(jaxpr.eqns):
    if i in fused_away:
      continue
    rule = registry.lookup(eqn.primitive)
    line = source_line(eqn, parent)
    if rule is None:  # check_supported ran first; this is a bug guard
      raise NotImplementedError(
          f"unsupported primitive {eqn.primitive.name} at {line}")
    # Lazy values read memory when they are finally computed: before an
    # equation writes memory, the ones still needed are computed now.
    if rule.barrier or (not rule.pure and _writes_memory(eqn)):
      _materialize_mutable_reads(kctx, env, last_use, i,
                                 keep=eqn.invars if rule.takes_lazy_operands
                                 else ())
    args_in = [read(a) for a in eqn.invars]
    ctx = RuleContext(kctx, eqn, [a.aval for a in eqn.invars],
                      [v.aval for v in eqn.outvars], line,
                      [counts.get(v, 0) > 0 for v in eqn.outvars])
    match = fusion.match_dot_accumulate(jaxpr, i, users)
    if match is not None:
      swap = jaxpr.eqns[match.fused[1]]
      ctx.accumulate_into = fusion.AccumulateTarget(
          read(swap.invars[0]), swap.params["tree"],
          [read(a) for a in swap.invars[2:]],
          flush=lambda root, i=i, dead=match.acc_var: _materialize_reads_of(
              kctx, env, last_use, i, root, dead))
    # While the rule runs, JAX's source context is the equation's: what the
    # rule traces (lower_fun) is attributed to the user's line, and an error
    # gets the user's traceback attached below it (JAX's user_context).
    with (_location(eqn),
          source_info_util.user_context(eqn.source_info.traceback)):
      try:
        out = rule.fn(ctx, *args_in, **eqn.params)
      except Exception as e:  # noqa: BLE001 - wrapped with the source line
        if isinstance(e, errors.LoweringError):
          # Wrapped at the innermost equation already; one nested in a
          # library's jit has no user frame of its own: its caller's is it.
          if e.user_frame is None:
            e.user_frame = _user_frame(eqn)
          raise
        raise errors.from_rule(e, primitive=eqn.primitive.name,
                               source_line=line,
                               user_frame=_user_frame(eqn)) from e
    if match is not None and ctx.accumulate_into.accepted:
      fused_away.update(match.fused)  # the add and the swap: done
    outs = out if eqn.primitive.multiple_results else [out]
    for v, o in zip(eqn.outvars, outs):
      if isinstance(v, jax_core.DropVar):
        continue
      # A lazy expression used twice may be computed twice (once per fused
      # loop that ends up reading it): a cheap one stays lazy -- values
      # built from values each used twice (philox's rounds) then fuse
      # into one loop --, a costlier one is kept once.  The bound also
      # keeps expression trees small for the walkers that visit them as
      # trees (values.RECOMPUTE_LIMIT).
      if (isinstance(o, values.Array) and not o.is_leaf
          and counts.get(v, 0) > 1
          and values.recompute_cost(o.node) > values.RECOMPUTE_LIMIT):
        o = kctx.as_temp(o)
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _materialize_mutable_reads(kctx, env, last_use, i, keep) -> None:
  """Computes into temporaries the live lazy values that read mutable
  memory, before an equation that may write it."""
  keep_vars = {v for v in keep if isinstance(v, jax_core.Var)}
  for var, val in list(env.items()):
    if not isinstance(val, values.Array) or last_use.get(var, -1) < i:
      continue
    if var in keep_vars and last_use[var] == i:
      continue
    if any(not isinstance(r, values.PrivateRoot)
           for r in values.roots_read(val.node)):
      env[var] = kctx.as_temp(val)


def _materialize_reads_of(kctx, env, last_use, i, root, dead) -> None:
  """Like ``_materialize_mutable_reads`` for one root, before an equation
  that writes it early (a fused accumulation); ``dead`` is skipped."""
  for var, val in list(env.items()):
    if (var is dead or not isinstance(val, values.Array)
        or last_use.get(var, -1) < i):
      continue
    if root in values.roots_read(val.node):
      env[var] = kctx.as_temp(val)


# -- sub-computations and reference implementations ---------------------------------
def lower_closed_jaxpr(ctx: RuleContext, closed: jax_core.ClosedJaxpr,
                       args: Sequence) -> list:
  """Lowers a rule's sub-computation (a branch, a loop body, a call) on
  ``args`` at the current insertion point; its scalar constants become
  arith constants."""
  kctx = ctx.kernel
  if any(np.ndim(c) for c in closed.consts):
    raise NotImplementedError(
        "pallas_cpu: array constants captured by a kernel sub-computation are "
        "not supported yet")
  consts = [kctx.constant(c, np.asarray(c).dtype) for c in closed.consts]
  return lower_jaxpr(kctx, closed.jaxpr, list(args), consts=consts,
                     parent=ctx.source)


def lower_fun(ctx: RuleContext, fn: Callable, *args, avals_in=None,
              multiple_results: bool = False):
  """Lowers ``fn`` -- a traceable JAX function of the equation's operands
  -- with the rules: a primitive defined by a JAX reference implementation
  needs no rule of its own.  ``fn`` is traced on ``avals_in`` (default: the
  equation's); its results take the equation's output dtypes (physical
  ones for key arrays), the same bits in signless registers."""
  avals_in = ctx.avals_in if avals_in is None else avals_in
  closed = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(a.shape, a.dtype)
                                for a in avals_in])
  check_supported(closed.jaxpr, ctx.kernel.name)
  outs = lower_closed_jaxpr(ctx, closed, args)
  outs = [*(_retagged(o, a) for o, a in zip(outs, ctx.avals_out)),
          *outs[len(ctx.avals_out):]]
  return outs if multiple_results else outs[0]


def _retagged(v, aval):
  dtype = np.dtype(jax_core.physical_aval(aval).dtype)
  if isinstance(v, values.Scalar) and v.dtype != dtype:
    return values.Scalar(v.value, dtype)
  if isinstance(v, values.Array) and v.dtype != dtype:
    return values.Array(v.node, v.shape, dtype)
  return v
