"""Jaxpr-level fusions: equation patterns the walker hands to one rule.

The one pattern so far is the accumulator update of every tiled matmul,

    a = get acc_ref[idx]; d = dot_general(x, y); s = add(a, d)
    swap acc_ref[idx] <- s

(the ``get`` may also follow the dot: ``d = dot(x, y); acc_ref[idx] += d``),
which, lowered equation by equation, costs a product temporary plus one more
pass over the accumulator.  When nothing between the ``get`` and the
``swap`` touches ``acc_ref`` and the intermediate values have no other use,
the ``dot_general`` rule is offered an ``AccumulateTarget`` and may write
``acc_ref[idx] += x . y`` itself (the microkernel's accumulate mode); if it
accepts, the walker skips the ``add`` and the ``swap``.

Moving the write from the ``swap`` to the ``dot_general`` is safe because no
equation in between reads the ref (checked), and lazy values that read it
from before the ``get`` are computed first (``flush``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jax._src import ad_util
from jax._src import core as jax_core
from jax._src.lax import lax
from jax._src.state import primitives as state_primitives
from jax._src.state import types as state_types

_ADDS = (lax.add_p, ad_util.add_any_p)


@dataclasses.dataclass
class AccumulateTarget:
  """Where a dot_general may accumulate its product: ``ref`` viewed through
  the swap's transforms (``tree``, ``index_args``).  The rule calls
  ``flush(root)`` before writing and sets ``accepted``."""
  ref: object
  tree: object
  index_args: list
  flush: Callable[[object], None]
  accepted: bool = False


@dataclasses.dataclass
class DotAccumulate:
  get_eqn: jax_core.JaxprEqn
  acc_var: jax_core.Var      # the get's result, dead once fused
  fused: tuple[int, int]     # indices of the add and the swap


def users_of(jaxpr: jax_core.Jaxpr) -> dict:
  """var -> indices of the equations reading it (len(eqns) for outvars)."""
  users: dict = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if isinstance(v, jax_core.Var):
        users.setdefault(v, []).append(i)
  for v in jaxpr.outvars:
    if isinstance(v, jax_core.Var):
      users.setdefault(v, []).append(len(jaxpr.eqns))
  return users


def _same_atom(a, b) -> bool:
  if isinstance(a, jax_core.Literal) and isinstance(b, jax_core.Literal):
    return a.val is b.val or (type(a.val) is type(b.val) and a.val == b.val)
  return a is b


def match_dot_accumulate(jaxpr: jax_core.Jaxpr, i: int, users: dict
                         ) -> DotAccumulate | None:
  eqns = jaxpr.eqns
  dot = eqns[i]
  if dot.primitive is not lax.dot_general_p:
    return None
  (d,) = dot.outvars
  if len(users.get(d, ())) != 1:
    return None
  (j,) = users[d]
  if j >= len(eqns) or eqns[j].primitive not in _ADDS:
    return None
  add = eqns[j]
  others = [v for v in add.invars if v is not d]
  if len(others) != 1 or not isinstance(others[0], jax_core.Var):
    return None
  a = others[0]
  (s,) = add.outvars
  if len(users.get(a, ())) != 1 or len(users.get(s, ())) != 1:
    return None
  (k,) = users[s]
  if k >= len(eqns) or eqns[k].primitive is not state_primitives.swap_p:
    return None
  swap = eqns[k]
  old = swap.outvars[0]
  if swap.invars[1] is not s or (not isinstance(old, jax_core.DropVar)
                                 and users.get(old)):
    return None
  ref = swap.invars[0]
  # The get that produced `a`: same ref, same transforms, same indices --
  # before the dot (acc_ref[...] += dot(x, y)) or after it (d = dot(x, y);
  # ...; acc_ref[...] += d).
  g = next((n for n in range(j) if a in eqns[n].outvars), None)
  if g is None or eqns[g].primitive is not state_primitives.get_p:
    return None
  if g > i:
    # The write moves to the dot: the swap's indices must exist there.
    later = {v for n in range(i, k) for v in eqns[n].outvars}
    if any(isinstance(x, jax_core.Var) and x in later
           for x in swap.invars[2:]):
      return None
  get = eqns[g]
  if (get.invars[0] is not ref or get.params["tree"] != swap.params["tree"]
      or len(get.invars) != len(swap.invars) - 1
      or not all(_same_atom(x, y) for x, y in zip(get.invars[1:],
                                                  swap.invars[2:]))):
    return None
  if (a.aval.dtype != d.aval.dtype or a.aval.shape != d.aval.shape
      or s.aval.dtype != d.aval.dtype):
    return None
  for n in range(min(g, i) + 1, k):
    if n in (i, j, g):
      continue
    if any(v is ref for v in eqns[n].invars):
      return None  # the ref is read or written in between
    # Another ref may name the same storage (input_output_aliases): only
    # reads, before the dot, may touch refs -- lazy ones are flushed there.
    if any(isinstance(v.aval, state_types.AbstractRef)
           for v in eqns[n].invars) and (
               n > i or eqns[n].primitive is not state_primitives.get_p):
      return None
  if any(v is ref for v in dot.invars):
    return None
  return DotAccumulate(get, a, (j, k))
