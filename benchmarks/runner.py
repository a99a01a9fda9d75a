"""Running a case: correctness first, the interpreter budget, interleaved
timing, ratios and target verdicts.

  1. every backend is called once and checked against the XLA result
     (correctness before timing); the compiled backend's first call is its
     compile time (trace + lowering + MLIR compile + first run);
  2. each backend is timed ``repeats`` times, backends interleaved (the
     order rotates every repeat), keeping the minimum;
  3. ratios cpu/XLA, interpret/cpu and tpu-interpret/cpu (and µs per grid
     step) are checked against the case's targets.

A case's variants (more cells of the compiled backend, e.g. the same
kernel on 1, 2 and 4 cores) are checked and timed alongside the backends,
and their ratios (``Case.variant_ratios``) judged like the others.

A crash or a wrong result of the compiled backend is recorded in the
result (the other backends of that case are still timed).  Interpreter
cells whose single call would exceed the budget are skipped: the decision
comes from a smaller-grid probe of the same kernel when the case has one
(estimate = probe time x step ratio), then from the first (correctness)
call.
"""
from __future__ import annotations

import operator
import re
import statistics
import sys
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from pallas_cpu import compiler, testing

from benchmarks.registry import (ALL_BACKENDS, FAST_CELL_S, FAST_TIME_S,
                                 INTERPRETERS, MAX_FAST_ROUNDS,
                                 PALLAS_BACKENDS, RATIOS, SKIPPED,
                                 SLOW_CELL_S, XLA, Case, label)

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt,
        ">": operator.gt}


def now() -> float:
  return time.perf_counter()


def _timed_call(fn, args) -> tuple[float, Any]:
  t0 = now()
  out = jax.block_until_ready(fn(*args))
  return now() - t0, out


def _callable(case: Case, fn):
  """What a cell calls: ``fn`` under jax.jit, or ``fn`` itself for a case
  whose every call builds fresh kernels (``Case.jit=False``)."""
  return jax.jit(fn) if case.jit else fn


def _check(case: Case, backend: str, out, ref) -> None:
  testing.assert_close(
      out, ref, rtol=case.rtol, atol=case.atol,
      err_msg=f"[{case.name}] backend {backend!r} disagrees with XLA")


def loud(msg: str) -> None:
  bar = "!" * 78
  print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)


def _short_error(e: BaseException) -> str:
  """Type and first line of an error; a first line that only announces
  what follows ("Verification failed:") gets the next one too.  Paths are
  shortened to the part after site-packages/ or the repository root."""
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  text = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])
  text = re.sub(r'"?/[^"\s]*/([^/"\s]+\.py)"?', r"\1", text)
  return f"{type(e).__name__}: {text}"


def new_result(case: Case) -> dict:
  return {
      "name": case.name, "description": case.description,
      "grid_steps": case.grid_steps, "status": "ok", "error": None,
      "cpu_error": None, "first_call_s": {}, "times_ms": {}, "median_ms": {},
      "samples_ms": {}, "skipped": {}, "estimates_s": {}, "compile_s": None,
      "compile_net_s": None, "compile_cached": None, "compile_from_disk": None,
      "ratios": {}, "metrics": {}, "targets": {}, "verdicts": {},
      "per_step_us": {}, "reduced_repeats": {},
      "variants": list(case.variants),
      "variant_ratios": dict(case.variant_ratios), "variant_errors": {},
      "jit": case.jit,
  }


def _first_call_compiled(case: Case, res: dict, args, ref) -> Any:
  """The compiled backend's first call (= its compile time), checked.  A
  crash or a wrong result is recorded (the cell shows it) and the case goes
  on with the other backends, so the row still has its XLA and interpreter
  numbers.  Returns the jitted function, or None."""
  try:
    before = compiler.cache_entries()
    fn = _callable(case, case.build("cpu"))
    t, out = _timed_call(fn, args)
    new = compiler.cache_entries()[len(before):]
  except Exception as e:
    res.update(status="FAILED", cpu_error=f"CRASH {_short_error(e)}", error=(
        f"backend 'cpu' raised {type(e).__name__}: {e}\n"
        + traceback.format_exc()))
    loud(f"[{case.name}] COMPILED BACKEND CRASHED -- recorded; timing the "
         f"other backends\n{res['error']}")
    return None
  res["compile_s"] = res["first_call_s"]["cpu"] = t
  res["compile_cached"] = not new
  res["compile_from_disk"] = any(e.from_disk for e in new)
  try:
    _check(case, "cpu", out, ref)
  except AssertionError as e:
    res.update(status="FAILED", cpu_error=_wrong_result(e),
               error=f"wrong result from backend 'cpu':\n{e}")
    loud(f"[{case.name}] COMPILED BACKEND GAVE A WRONG RESULT -- recorded;"
         f" timing the other backends\n{e}")
    return None
  print(f"   cpu      first call (compile) {t:8.3f} s   result OK",
        flush=True)
  return fn


def _wrong_result(e: AssertionError) -> str:
  first = [l for l in str(e).splitlines() if "Mismatched" in l
           or "Max absolute" in l]
  return "WRONG RESULT" + (f" ({'; '.join(x.strip() for x in first)})"
                           if first else "")


def _first_call_variant(case: Case, name: str, res: dict, args,
                        ref) -> Any:
  """A variant's first call, checked like the compiled backend's: a crash
  or a wrong result is recorded in ``variant_errors`` (its cell shows it,
  targets on its ratios fail) and the case goes on.  Returns the jitted
  function, or None."""
  short = None
  try:
    fn = jax.jit(case.variants[name]())
    t, out = _timed_call(fn, args)
  except Exception as e:
    short = f"CRASH {_short_error(e)}"
    long = (f"variant {name!r} raised {type(e).__name__}: {e}\n"
            + traceback.format_exc())
  else:
    try:
      _check(case, name, out, ref)
    except AssertionError as e:
      short = _wrong_result(e)
      long = f"wrong result from variant {name!r}:\n{e}"
  if short is None:
    res["first_call_s"][name] = t
    print(f"   {name:<14} first call {t:8.3f} s   result OK", flush=True)
    return fn
  res["variant_errors"][name] = short
  res.update(status="FAILED", error="\n".join(
      e for e in (res["error"], long) if e))
  loud(f"[{case.name}] VARIANT {name!r} FAILED -- recorded; timing the "
       f"other cells\n{long}")
  return None


def _over_budget_by_probe(case: Case, backend: str, res: dict,
                          budget: float) -> bool:
  """The budget rule from the case's smaller-grid probe: True when the
  cell is not to be run (skipped, or the probe raised)."""
  try:
    pfn = jax.jit(case.probe.build(backend))
    pargs = tuple(jax.device_put(a) for a in case.probe.make_inputs())
    _timed_call(pfn, pargs)                 # compile
    tp, _ = _timed_call(pfn, pargs)         # steady-state probe call
  except Exception as e:
    res["skipped"][backend] = f"error: {_short_error(e)}"
    loud(f"[{case.name}] backend {backend!r} probe raised: {e}")
    return True
  est = tp * case.probe.scale
  res["estimates_s"][backend] = est
  if est <= budget:
    return False
  res["skipped"][backend] = SKIPPED
  print(f"   {backend:<14} {SKIPPED}: estimated {est:.1f} s per call "
        f"from a 1/{case.probe.scale:g}-size grid ({tp * 1e3:.1f} ms)",
        flush=True)
  return True


def run_case(case: Case, repeats: int, budget: float,
             slow_repeats: int) -> dict:
  print(f"\n== {case.name}: {case.description}", flush=True)
  res = new_result(case)
  args = tuple(jax.device_put(a) for a in case.make_inputs())

  # 1. Correctness first: reference, then each backend's first call.
  xla_fn = _callable(case, case.reference)
  t, ref = _timed_call(xla_fn, args)
  res["first_call_s"][XLA] = t
  fns = {XLA: xla_fn}
  fn = _first_call_compiled(case, res, args, ref)
  if fn is not None:
    fns["cpu"] = fn
  for name in case.variants:
    fn = _first_call_variant(case, name, res, args, ref)
    if fn is not None:
      fns[name] = fn

  for backend in INTERPRETERS:
    if backend in case.skip:
      res["skipped"][backend] = f"skipped: {case.skip[backend]}"
      print(f"   {backend:<14} skipped: {case.skip[backend]}", flush=True)
      continue
    if case.probe is not None and _over_budget_by_probe(case, backend, res,
                                                        budget):
      continue
    try:
      fn = _callable(case, case.build(backend))
      t, out = _timed_call(fn, args)
    except Exception as e:
      res["skipped"][backend] = f"error: {_short_error(e)}"
      loud(f"[{case.name}] backend {backend!r} raised "
           f"{type(e).__name__}: {e}")
      continue
    res["first_call_s"][backend] = t
    try:
      _check(case, backend, out, ref)
    except AssertionError as e:
      res.update(status="FAILED",
                 error=f"wrong result from backend {backend!r}:\n{e}")
      loud(f"[{case.name}] backend {backend!r} GAVE A WRONG RESULT -- case "
           f"aborted (kernel or reference is wrong)\n{e}")
      return res
    if t > budget:
      res["skipped"][backend] = SKIPPED
      print(f"   {backend:<14} {SKIPPED}: first call took {t:.1f} s",
            flush=True)
      continue
    fns[backend] = fn
    print(f"   {backend:<14} first call {t:8.3f} s   result OK", flush=True)

  _time_interleaved(fns, args, res, repeats, slow_repeats)
  times = res["times_ms"]
  if res["compile_s"] is not None and "cpu" in times:
    res["compile_net_s"] = max(0.0, res["compile_s"] - times["cpu"] / 1e3)

  # 3. Ratios, metrics and targets.
  for name, (num, den) in {**RATIOS, **case.variant_ratios}.items():
    if num in times and den in times and times[den] > 0:
      res["ratios"][name] = times[num] / times[den]
  res["metrics"].update(res["ratios"])
  if case.per_step:
    for b in times:
      res["per_step_us"][b] = times[b] * 1e3 / case.grid_steps
    if "cpu" in res["per_step_us"]:
      res["metrics"]["cpu_us_per_step"] = res["per_step_us"]["cpu"]
  _judge(case, res)
  return res


def _time_interleaved(fns: dict, args: tuple, res: dict, repeats: int,
                      slow_repeats: int) -> None:
  """2. Timing: the fast cells (compiled, XLA, the variants) interleaved
  among themselves, then the interpreters' cells interleaved; the order
  rotates every repeat.  Fast cells of about a millisecond get up to
  MAX_FAST_ROUNDS rounds (registry.FAST_CELL_S: their minimum over a few
  calls is noise).  Slow interpreter cells (first call > SLOW_CELL_S)
  take part in only the first slow_repeats rounds: they are far from any
  bound, and it keeps the full run near ten minutes.

  The groups are timed apart, and every timed call of a fast cell follows
  an untimed call of the same function, because an interpreter's call
  (hundreds of milliseconds, gigabytes allocated through Python) leaves
  the next calls of every backend slower -- the x*2+y demo, 2048^2: 1.1 ms
  for both XLA and the compiled kernel alone, 1.9-2.0 ms right after an
  interpret=True call, even with a warm-up call in between -- and with
  four backends rotating, the compiled cell came right after TPU interpret
  mode's in every round."""
  fast = ([b for b in ALL_BACKENDS if b in fns and b not in INTERPRETERS]
          + [v for v in fns if v not in ALL_BACKENDS])   # variants
  slow = [b for b in INTERPRETERS if b in fns]
  n_rep = {b: repeats for b in fast + slow}
  for b in slow:
    if res["first_call_s"][b] > SLOW_CELL_S:
      n_rep[b] = min(repeats, slow_repeats)
      if n_rep[b] < repeats:
        res["reduced_repeats"][b] = n_rep[b]
  samples: dict[str, list[float]] = {b: [] for b in fast + slow}

  def rounds(group, warm, first, last):
    for r in range(first, last):
      k = r % len(group) if group else 0
      for b in group[k:] + group[:k]:
        if r < n_rep[b]:
          if warm:
            jax.block_until_ready(fns[b](*args))
          t, _ = _timed_call(fns[b], args)
          samples[b].append(t * 1e3)

  rounds(fast, True, 0, repeats)
  if fast:
    slowest = max(min(samples[b]) for b in fast) / 1e3
    if slowest < FAST_CELL_S:
      more = min(MAX_FAST_ROUNDS, max(repeats, int(FAST_TIME_S / slowest)))
      for b in fast:
        n_rep[b] = more
      rounds(fast, True, repeats, more)
  rounds(slow, False, 0, repeats)
  order = [b for b in ALL_BACKENDS if b in fns] + [
      v for v in fns if v not in ALL_BACKENDS]
  for b in order:
    res["samples_ms"][b] = samples[b]
    res["times_ms"][b] = min(samples[b])
    res["median_ms"][b] = statistics.median(samples[b])
  times = res["times_ms"]
  print("   min ms: " + ", ".join(f"{label(b)} {times[b]:.4g}" for b in order),
        flush=True)


def _judge(case: Case, res: dict) -> None:
  for name, (op, bound) in case.targets.items():
    value = res["metrics"].get(name)
    res["targets"][name] = {"op": op, "bound": bound, "value": value}
    failed = set(case.variant_ratios.get(name, ())) & set(
        res["variant_errors"])
    if res["cpu_error"] is not None or failed:
      res["verdicts"][name] = "FAILED"
    elif value is None:
      res["verdicts"][name] = "n/a"
    else:
      res["verdicts"][name] = "PASS" if _OPS[op](value, bound) else "MISS"


def run_cases(cases: list[Case], repeats: int, budget: float,
              slow_repeats: int) -> list[dict]:
  """Every case in turn; a case that dies in the harness is recorded as
  FAILED (its targets count as not met) and the run goes on."""
  results = []
  for case in cases:
    try:
      results.append(run_case(case, repeats, budget, slow_repeats))
    except Exception as e:  # a bug in the harness or the case definition
      loud(f"[{case.name}] unexpected error -- case aborted\n"
           + traceback.format_exc())
      res = new_result(case)
      res.update(status="FAILED", case_targets=dict(case.targets),
                 error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
      results.append(res)
  return results


def warm_up() -> None:
  """Pays one-time process costs (JAX backend start, MLIR context, runtime
  library load) before any measured compile, with a kernel no case uses."""
  def warm_up_kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] - 1.0
  x = jnp.zeros((8, 128), jnp.float32)
  for backend in PALLAS_BACKENDS:
    fn = jax.jit(pallas_cpu.pallas_call(
        warm_up_kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=(1,), in_specs=[pl.BlockSpec(x.shape, lambda i: (0, 0))],
        out_specs=pl.BlockSpec(x.shape, lambda i: (0, 0)), backend=backend))
    jax.block_until_ready(fn(x))
  jax.block_until_ready(jax.jit(lambda a: a * 2)(x))
