"""The lowering-rule registry: one rule per JAX primitive.

A rule is ``rule(ctx: RuleContext, *args: Value, **params) -> Value | list``.
Rules register themselves from the modules of ``pallas_cpu.lowering.rules``;
the jaxpr walker is the only place that reports a missing rule.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jax._src import core as jax_core
from jax._src import dtypes as jax_dtypes


@dataclasses.dataclass(frozen=True)
class Rule:
  fn: Callable
  # False when the rule may write memory: the walker first materializes the
  # live lazy values that read memory the rule could write.
  pure: bool
  # The rule materializes its own operands (e.g. a store): the walker keeps
  # them lazy so they can be computed straight into their destination.
  takes_lazy_operands: bool = False
  # Memory may change in ways the equation's effects do not name (a
  # semaphore wait runs pending DMAs): always materialize lazy reads first.
  barrier: bool = False


_RULES: dict[jax_core.Primitive, Rule] = {}


def register(*prims: jax_core.Primitive, pure: bool = True,
             takes_lazy_operands: bool = False, barrier: bool = False):
  def wrap(fn):
    for p in prims:
      _RULES[p] = Rule(fn, pure and not barrier, takes_lazy_operands, barrier)
    return fn
  return wrap


def lookup(prim: jax_core.Primitive) -> Rule | None:
  _load_rules()
  rule = _RULES.get(prim)
  if rule is not None and prim in _KEY_RULES:  # see register_key_rule
    rule = dataclasses.replace(rule, fn=_key_dispatch(_KEY_RULES[prim],
                                                      rule.fn))
  return rule


def registered() -> dict[jax_core.Primitive, Rule]:
  _load_rules()
  return dict(_RULES)


_loaded = False


def _load_rules():
  global _loaded
  if not _loaded:
    _loaded = True
    from pallas_cpu.lowering import rules  # noqa: F401  (registers rules)


# -- PRNG key arrays ---------------------------------------------------------------
# Key arrays (extended dtypes) are carried as their key data, with trailing
# key dimensions; a primitive's ordinary rule (slice, squeeze...) does not
# know that.  A key rule, ``key_rule(ordinary_fn, ctx, *args, **params)``,
# takes over when an operand or result of the equation is a key array
# (rules/random.py registers them).
_KEY_RULES: dict[jax_core.Primitive, Callable] = {}


def register_key_rule(*prims: jax_core.Primitive):
  def wrap(fn):
    for p in prims:
      _KEY_RULES[p] = fn
    return fn
  return wrap


def _is_key(aval) -> bool:
  dtype = getattr(aval, "dtype", None)
  return (isinstance(dtype, jax_dtypes.ExtendedDType)
          and jax_dtypes.issubdtype(dtype, jax_dtypes.prng_key))


def _key_dispatch(key_fn: Callable, fn: Callable) -> Callable:
  def rule(ctx, *args, **params):
    if any(_is_key(a) for a in (*ctx.avals_in, *ctx.avals_out)):
      return key_fn(fn, ctx, *args, **params)
    return fn(ctx, *args, **params)
  return rule


def lower_fun(ctx, fn: Callable, *args, multiple_results: bool = False):
  """Lowers ``fn`` -- a traceable JAX function of the equation's operands --
  with the rules: a primitive defined by a JAX reference implementation
  needs no rule of its own."""
  import jax
  import numpy as np
  from pallas_cpu.lowering import jaxpr as jaxpr_lowering
  closed = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(a.shape, a.dtype)
                                for a in ctx.avals_in])
  kctx = ctx.kernel
  if any(np.ndim(c) for c in closed.consts):
    raise NotImplementedError("lower_fun of a function capturing arrays")
  consts = [kctx.constant(c, np.asarray(c).dtype) for c in closed.consts]
  jaxpr_lowering.check_supported(closed.jaxpr, kctx.name)
  outs = jaxpr_lowering.lower_jaxpr(kctx, closed.jaxpr, args, consts=consts,
                                    parent=ctx.source)
  return outs if multiple_results else outs[0]
