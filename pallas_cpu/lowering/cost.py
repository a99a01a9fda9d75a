"""How much work a kernel does per call, estimated from its jaxpr: what picks
the LLVM optimisation level when nobody set one.

A test suite's kernels are small and run once, so their first call is all
compile time: LLVM at -O3 spends ~22 ms (passes and code generation, CPU
time, assertions-enabled libLLVM) on a small kernel that -O0 builds in ~3 ms
(``benchmarks`` case ``test_suite_50``).  -O0 code is not vectorized and
spills, a few ns per element operation: for a kernel of at most
``SMALL_WORK`` element operations per call that is at most a few ms, less
than the compile time it saves.  Anything larger, or whose work the jaxpr
does not bound (a while loop, a dynamic trip count), is built at -O3; a
small kernel that is called again and again tiers up to -O3 once its calls
have taken PALLAS_CPU_TIER_UP_MS (``tier_up_after_us``).
Results do not depend on the level: no fast-math flags, no FMA contraction,
every float op rounds once at every level, float sums in a fixed order
(``test_opt_levels.py`` checks bit equality across levels).
"""
from __future__ import annotations

import math

from jax._src import core as jax_core

# Element operations per call at or under which -O0 is chosen.
SMALL_WORK = 1 << 20
# What one grid step costs besides its body (index maps, bounds checks,
# block changes), in element operations: a long grid of tiny steps is
# per-step overhead, which -O0 would multiply.
STEP_WORK = 64
DEFAULT_OPT_LEVEL = 3
SMALL_OPT_LEVEL = 0

# Primitives whose work is the runtime's, not the kernel's generated code
# (the matmul microkernel, DMAs): they count as their output's size.
_LOOPS_WITH_BOUNDS = ("scan",)
_UNBOUNDED = ("while",)


def _size(aval) -> int:
  shape = getattr(aval, "shape", None)
  if shape is None:
    return 1
  inner = getattr(aval, "inner_aval", None)  # refs
  if inner is not None:
    shape = getattr(inner, "shape", shape)
  return math.prod(int(d) for d in shape) if shape else 1


def _eqn_work(eqn) -> int | None:
  """Element operations of one equation, sub-jaxprs included; None when
  unbounded."""
  name = eqn.primitive.name
  if name in _UNBOUNDED:
    return None
  subs = [j.jaxpr if hasattr(j, "jaxpr") else j
          for j in jax_core.jaxprs_in_params(eqn.params)]
  if subs:
    works = [jaxpr_work(s) for s in subs]
    if any(w is None for w in works):
      return None
    if name == "cond":
      inner = max(works)           # one branch runs
    else:
      inner = sum(works)
    if name in _LOOPS_WITH_BOUNDS:
      inner *= int(eqn.params.get("length", 1))
    return inner + 1
  out = sum(_size(v.aval) for v in eqn.outvars) or 1
  ins = sum(_size(v.aval) for v in eqn.invars
            if hasattr(v, "aval"))
  if name == "dot_general":
    # the microkernel does the multiply; loops around it still read both
    return out + ins
  return max(out, ins)


def jaxpr_work(jaxpr) -> int | None:
  """Element operations of one run of ``jaxpr``; None when unbounded."""
  total = 0
  for eqn in jaxpr.eqns:
    w = _eqn_work(eqn)
    if w is None:
      return None
    total += w
  return total


def kernel_work(jaxpr, grid: tuple) -> int | None:
  """Element operations of one call: the body's and the step's own, once
  per grid step."""
  body = jaxpr_work(jaxpr)
  if body is None:
    return None
  steps = 1
  for g in grid:
    if not isinstance(g, int):
      return None           # a dynamic grid
    steps *= g
  return (body + STEP_WORK) * max(steps, 1)


def tier_up_after_us(opt_level: int, tier_up_ms: float | None) -> int | None:
  """The tier-up budget of a kernel this module chose ``opt_level`` for:
  -O0 code is a few times slower than -O3's, so a small kernel that turns
  out to be called often gets its -O3 build (compiled in the background,
  swapped in by the runtime) once its calls took ``tier_up_ms`` (the knob
  PALLAS_CPU_TIER_UP_MS; None: never).  A call sees the same bits as the
  call before it: results do not depend on the level (float sums keep a
  fixed order, rules/reductions.py)."""
  if opt_level >= DEFAULT_OPT_LEVEL or tier_up_ms is None:
    return None
  return int(round(tier_up_ms * 1000))


def default_opt_level(jaxpr, grid: tuple) -> int:
  """The LLVM level for a kernel nobody chose one for."""
  try:
    work = kernel_work(jaxpr, grid)
  except Exception:  # noqa: BLE001 - an estimate never fails a call
    work = None
  if work is not None and work <= SMALL_WORK:
    return SMALL_OPT_LEVEL
  return DEFAULT_OPT_LEVEL
