"""The lowering-rule registry: one rule per JAX primitive.

A rule is ``rule(ctx: RuleContext, *args: Value, **params) -> Value | list``.
This is a table and imports nothing of pallas_cpu: the modules of
``pallas_cpu.lowering.rules`` register their rules here when they are
imported, and the entry (``lowering/kernel.py``) imports them, as JAX's
lowering rules fill ``mlir.register_lowering``'s table.  The jaxpr walker
is the only place that reports a missing rule.
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
  rule = _RULES.get(prim)
  if rule is not None and prim in _KEY_RULES:  # see register_key_rule
    rule = dataclasses.replace(rule, fn=_key_dispatch(_KEY_RULES[prim],
                                                      rule.fn))
  return rule


def registered() -> dict[jax_core.Primitive, Rule]:
  """Every registered rule (the rules package must have been imported)."""
  return dict(_RULES)


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
