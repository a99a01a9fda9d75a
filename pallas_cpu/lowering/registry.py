"""The lowering-rule registry: one rule per JAX primitive.

A rule is ``rule(ctx: RuleContext, *args: Value, **params) -> Value | list``.
Rules register themselves from the modules of ``pallas_cpu.lowering.rules``;
the jaxpr walker is the only place that reports a missing rule.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jax._src import core as jax_core


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
  return _RULES.get(prim)


def registered() -> dict[jax_core.Primitive, Rule]:
  _load_rules()
  return dict(_RULES)


_loaded = False


def _load_rules():
  global _loaded
  if not _loaded:
    _loaded = True
    from pallas_cpu.lowering import rules  # noqa: F401  (registers rules)
