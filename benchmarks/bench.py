#!/usr/bin/env python
"""Benchmark suite: pallas_cpu's compiled backend vs XLA vs the interpreters.

For every case the same Pallas kernel is built through
``pallas_cpu.pallas_call(..., backend=B)`` for B in "cpu" (compiled),
"interpret" (JAX ``interpret=True``) and "tpu-interpret" (TPU interpret
mode), next to the plain XLA (jnp) computation of the same math, all in one
process and each wrapped in ``jax.jit``.

  1. every backend is called once and checked against the XLA result
     (correctness before timing); the compiled backend's first call is its
     compile time (trace + lowering + MLIR compile + first run);
  2. each backend is timed ``--repeats`` times, backends interleaved (the
     order rotates every repeat), keeping the minimum;
  3. ratios cpu/XLA, interpret/cpu and tpu-interpret/cpu are checked against
     the case's targets.

Interpreter cells whose single call would exceed ``--interp-budget`` seconds
are skipped: the decision comes from a smaller-grid probe of the same kernel
when the case has one (estimate = probe time x step ratio), else from the
first timed call.

Usage::

  python benchmarks/bench.py [--quick] [--repeats N] [--out DIR]
                             [--cases a,b] [--interp-budget SECONDS]

Writes ``<out>/results.md``, ``<out>/results.json`` and ``<out>/bench.png``
(the plot needs matplotlib).  See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu

PALLAS_BACKENDS = ("cpu", "interpret", "tpu-interpret")
XLA = "xla"
ALL_BACKENDS = ("cpu", XLA, "interpret", "tpu-interpret")
INTERPRETERS = ("interpret", "tpu-interpret")
LABELS = {"cpu": "pallas_cpu", XLA: "XLA", "interpret": "interpret=True",
          "tpu-interpret": "TPU interpret"}
# ratio name -> (numerator backend, denominator backend)
RATIOS = {"cpu/xla": ("cpu", XLA),
          "interpret/cpu": ("interpret", "cpu"),
          "tpu-interpret/cpu": ("tpu-interpret", "cpu")}
RATIO_LABELS = {"cpu/xla": "cpu/XLA", "interpret/cpu": "interpret/cpu",
                "tpu-interpret/cpu": "tpu-interpret/cpu"}
SKIPPED = "skipped (> budget)"


# ---------------------------------------------------------------------------
# Case registry
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Probe:
  """A smaller-grid variant of a case's kernel, used to estimate the
  interpreters' time on the full grid: estimate = probe call time * scale."""
  build: Callable[[str], Callable]   # backend -> un-jitted callable
  make_inputs: Callable[[], tuple]
  scale: float                       # full grid steps / probe grid steps


@dataclasses.dataclass
class Case:
  """One benchmark.

  build(backend) returns the (un-jitted) pallas_cpu.pallas_call for
  backend in PALLAS_BACKENDS; reference(*inputs) is the jnp computation of
  the same math (it runs under jax.jit as the XLA baseline and as the
  correctness reference).  targets maps a ratio name ("cpu/xla",
  "interpret/cpu", "tpu-interpret/cpu") to (op, bound), op "<=" or ">=".
  """
  name: str
  description: str
  make_inputs: Callable[[], tuple]
  build: Callable[[str], Callable]
  reference: Callable[..., Any]
  grid_steps: int
  targets: dict[str, tuple[str, float]] = dataclasses.field(
      default_factory=dict)
  rtol: float = 1e-6
  atol: float = 1e-6
  per_step: bool = False       # report time / grid_steps (µs per step)
  probe: Optional[Probe] = None
  quick: bool = True           # part of --quick


CASES: list[Case] = []


def register(case: Case) -> Case:
  if any(c.name == case.name for c in CASES):
    raise ValueError(f"duplicate case name {case.name!r}")
  CASES.append(case)
  return case


def _random_inputs(shape, n, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(n))


def blocked_elementwise(name: str, description: str, body: Callable,
                        reference: Callable, n_inputs: int,
                        shape: tuple[int, int], block: tuple[int, int],
                        dtype=np.float32, **case_kwargs) -> Case:
  """A 2-D grid over ``shape`` in ``block`` tiles; every input and the
  output use the same (i, j) -> (i, j) BlockSpec.  ``body`` maps the input
  block values to the output block value."""
  grid = tuple(pl.cdiv(s, b) for s, b in zip(shape, block))

  def kernel(*refs):
    *in_refs, o_ref = refs
    o_ref[...] = body(*(r[...] for r in in_refs))

  kernel.__name__ = name.replace("-", "_")

  def build(backend):
    spec = pl.BlockSpec(block, lambda i, j: (i, j))
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(shape, dtype), grid=grid,
        in_specs=[spec] * n_inputs, out_specs=spec, backend=backend)

  return Case(name=name, description=description,
              make_inputs=lambda: _random_inputs(shape, n_inputs, dtype=dtype),
              build=build, reference=reference,
              grid_steps=math.prod(grid), **case_kwargs)


def _add(x, y):
  return x + y


def _fused(x, y):
  return jnp.tanh(x * 2 + y) - jnp.exp(-y)


def _scale_shift(x):
  return x * 3 + 1


register(blocked_elementwise(
    "add_2048_b256", "o = x + y, f32 2048x2048, 256x256 blocks, grid (8,8)",
    _add, _add, 2, (2048, 2048), (256, 256),
    targets={"cpu/xla": ("<=", 2.0), "tpu-interpret/cpu": (">=", 50.0)},
    rtol=0, atol=0))

register(blocked_elementwise(
    "add_4096_b512", "o = x + y, f32 4096x4096, 512x512 blocks, grid (8,8)",
    _add, _add, 2, (4096, 4096), (512, 512), rtol=0, atol=0, quick=False))

register(blocked_elementwise(
    "fused_elementwise_2048",
    "o = tanh(x*2+y) - exp(-y), f32 2048x2048, 256x256 blocks, grid (8,8)",
    _fused, _fused, 2, (2048, 2048), (256, 256), rtol=2e-5, atol=2e-5,
    quick=False))

register(blocked_elementwise(
    "edge_blocks_2000x1000",
    "o = x*3+1, f32 2000x1000, 256x256 blocks, grid (8,4): partial edge "
    "blocks on both dims",
    _scale_shift, _scale_shift, 1, (2000, 1000), (256, 256),
    rtol=1e-6, atol=1e-6))


def _empty_grid_case(steps: int, probe_steps: int) -> Case:
  shape = (8, 128)

  def empty_grid_kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  def builder(n):
    def build(backend):
      spec = pl.BlockSpec(shape, lambda i: (0, 0))
      return pallas_cpu.pallas_call(
          empty_grid_kernel, out_shape=jax.ShapeDtypeStruct(shape, jnp.float32),
          grid=(n,), in_specs=[spec], out_specs=spec, backend=backend)
    return build

  make_inputs = lambda: _random_inputs(shape, 1)
  return Case(
      name=f"empty_grid_{steps // 1000}k",
      description=(f"grid=({steps},), one (8,128) f32 block with index map "
                   "i -> (0,0); only step 0 copies input to output: "
                   "per-grid-step overhead"),
      make_inputs=make_inputs, build=builder(steps), reference=jnp.copy,
      grid_steps=steps, rtol=0, atol=0, per_step=True,
      probe=Probe(builder(probe_steps), make_inputs, steps / probe_steps))


register(_empty_grid_case(100_000, 2_000))


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------

def _now() -> float:
  return time.perf_counter()


def _timed_call(fn, args) -> tuple[float, Any]:
  t0 = _now()
  out = jax.block_until_ready(fn(*args))
  return _now() - t0, out


def _check(case: Case, backend: str, out, ref) -> None:
  np.testing.assert_allclose(
      np.asarray(out), np.asarray(ref), rtol=case.rtol, atol=case.atol,
      err_msg=f"[{case.name}] backend {backend!r} disagrees with XLA")


def _cache_size() -> Optional[int]:
  try:
    from pallas_cpu import compiler
    return compiler.cache_size()
  except Exception:  # the API may move; the flag is informational only
    return None


class CaseFailed(Exception):
  pass


def _loud(msg: str) -> None:
  bar = "!" * 78
  print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)


def run_case(case: Case, repeats: int, budget: float) -> dict:
  print(f"\n== {case.name}: {case.description}", flush=True)
  res: dict[str, Any] = {
      "name": case.name, "description": case.description,
      "grid_steps": case.grid_steps, "status": "ok", "error": None,
      "first_call_s": {}, "times_ms": {}, "median_ms": {},
      "samples_ms": {}, "skipped": {}, "estimates_s": {}, "compile_s": None,
      "compile_cached": None, "ratios": {}, "targets": {},
      "verdicts": {}, "per_step_us": {},
  }
  args = tuple(jax.device_put(a) for a in case.make_inputs())

  # 1. Correctness first: reference, then each backend's first call.
  xla_fn = jax.jit(case.reference)
  t, ref = _timed_call(xla_fn, args)
  res["first_call_s"][XLA] = t
  fns = {XLA: xla_fn}

  # The compiled backend: first call = compile time.
  try:
    before = _cache_size()
    fn = jax.jit(case.build("cpu"))
    t, out = _timed_call(fn, args)
    after = _cache_size()
  except Exception as e:
    res.update(status="FAILED", error=(
        f"backend 'cpu' raised {type(e).__name__}: {e}\n"
        + traceback.format_exc()))
    _loud(f"[{case.name}] COMPILED BACKEND CRASHED -- case aborted\n"
          f"{res['error']}")
    return res
  res["compile_s"] = res["first_call_s"]["cpu"] = t
  if before is not None and after is not None:
    res["compile_cached"] = after == before
  try:
    _check(case, "cpu", out, ref)
  except AssertionError as e:
    res.update(status="FAILED", error=f"wrong result from backend 'cpu':\n{e}")
    _loud(f"[{case.name}] COMPILED BACKEND GAVE A WRONG RESULT -- case "
          f"aborted\n{e}")
    return res
  fns["cpu"] = fn
  print(f"   cpu      first call (compile) {t:8.3f} s   result OK",
        flush=True)

  for backend in INTERPRETERS:
    # Budget rule, from a smaller-grid probe when the case has one.
    if case.probe is not None:
      try:
        pfn = jax.jit(case.probe.build(backend))
        pargs = tuple(jax.device_put(a) for a in case.probe.make_inputs())
        _timed_call(pfn, pargs)                 # compile
        tp, _ = _timed_call(pfn, pargs)         # steady-state probe call
      except Exception as e:
        res["skipped"][backend] = f"error: {type(e).__name__}: {e}"
        _loud(f"[{case.name}] backend {backend!r} probe raised: {e}")
        continue
      est = tp * case.probe.scale
      res["estimates_s"][backend] = est
      if est > budget:
        res["skipped"][backend] = SKIPPED
        print(f"   {backend:<14} {SKIPPED}: estimated {est:.1f} s per call "
              f"from a 1/{case.probe.scale:g}-size grid ({tp * 1e3:.1f} ms)",
              flush=True)
        continue
    try:
      fn = jax.jit(case.build(backend))
      t, out = _timed_call(fn, args)
    except Exception as e:
      res["skipped"][backend] = f"error: {type(e).__name__}: {e}"
      _loud(f"[{case.name}] backend {backend!r} raised "
            f"{type(e).__name__}: {e}")
      continue
    res["first_call_s"][backend] = t
    try:
      _check(case, backend, out, ref)
    except AssertionError as e:
      res.update(status="FAILED",
                 error=f"wrong result from backend {backend!r}:\n{e}")
      _loud(f"[{case.name}] backend {backend!r} GAVE A WRONG RESULT -- case "
            f"aborted (kernel or reference is wrong)\n{e}")
      return res
    if t > budget:
      res["skipped"][backend] = SKIPPED
      print(f"   {backend:<14} {SKIPPED}: first call took {t:.1f} s",
            flush=True)
      continue
    fns[backend] = fn
    print(f"   {backend:<14} first call {t:8.3f} s   result OK", flush=True)

  # 2. Timing, backends interleaved; the order rotates every repeat.
  order = [b for b in ALL_BACKENDS if b in fns]
  samples: dict[str, list[float]] = {b: [] for b in order}
  for r in range(repeats):
    k = r % len(order)
    for b in order[k:] + order[:k]:
      t, _ = _timed_call(fns[b], args)
      samples[b].append(t * 1e3)
  for b in order:
    res["samples_ms"][b] = samples[b]
    res["times_ms"][b] = min(samples[b])
    res["median_ms"][b] = statistics.median(samples[b])
  times = res["times_ms"]
  print("   min ms: " + ", ".join(f"{LABELS[b]} {times[b]:.4g}" for b in order),
        flush=True)

  # 3. Ratios and targets.
  for name, (num, den) in RATIOS.items():
    if num in times and den in times and times[den] > 0:
      res["ratios"][name] = times[num] / times[den]
  for name, (op, bound) in case.targets.items():
    value = res["ratios"].get(name)
    res["targets"][name] = {"op": op, "bound": bound, "value": value}
    if value is None:
      res["verdicts"][name] = "n/a"
    elif (value <= bound) if op == "<=" else (value >= bound):
      res["verdicts"][name] = "PASS"
    else:
      res["verdicts"][name] = "MISS"
  if case.per_step:
    for b in order:
      res["per_step_us"][b] = times[b] * 1e3 / case.grid_steps
  return res


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def _fmt_ms(v: Optional[float]) -> str:
  if v is None:
    return "—"
  if v >= 100:
    return f"{v:.0f}"
  if v >= 1:
    return f"{v:.2f}"
  return f"{v:.3g}"


def _fmt_ratio(v: Optional[float]) -> str:
  if v is None:
    return "—"
  if v >= 100:
    return f"{v:.0f}x"
  if v >= 10:
    return f"{v:.1f}x"
  return f"{v:.2f}x"


def _cell(res: dict, backend: str) -> str:
  if backend in res["times_ms"]:
    return _fmt_ms(res["times_ms"][backend])
  return res["skipped"].get(backend, "—")


def _target_cell(res: dict) -> str:
  if res["status"] != "ok":
    return "**FAILED**"
  if not res["targets"]:
    return "—"
  parts = []
  for name, tgt in res["targets"].items():
    verdict = res["verdicts"][name]
    value = tgt["value"]
    shown = "n/a" if value is None else f"{value:.2f}"
    parts.append(f"{verdict} ({RATIO_LABELS[name]} {shown} "
                 f"{tgt['op']} {tgt['bound']:g})")
  return "; ".join(parts)


def markdown_table(results: list[dict]) -> str:
  head = ["case", "pallas_cpu ms", "XLA ms", "interpret=True ms",
          "TPU interpret ms", "compile s", "cpu/XLA", "interpret/cpu",
          "tpu-interpret/cpu", "target met?"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  for res in results:
    compile_s = res["compile_s"]
    cs = "—" if compile_s is None else f"{compile_s:.3f}"
    if res["compile_cached"]:
      cs += " (cached)"
    if res["status"] != "ok":
      row = [res["name"], "FAILED", "—", "—", "—", cs, "—", "—", "—",
             "**FAILED**"]
    else:
      row = [res["name"], _cell(res, "cpu"), _cell(res, XLA),
             _cell(res, "interpret"), _cell(res, "tpu-interpret"), cs,
             *(_fmt_ratio(res["ratios"].get(r)) for r in RATIOS),
             _target_cell(res)]
    lines.append("| " + " | ".join(row) + " |")
  extra = []
  for res in results:
    if res["status"] == "ok" and res["per_step_us"]:
      cpu = res["per_step_us"].get("cpu")
      others = ", ".join(
          f"{LABELS[b]} {v:.4g} µs"
          for b, v in res["per_step_us"].items() if b != "cpu")
      extra.append(f"- {res['name']}: per-step overhead: {cpu:.4g} µs "
                   f"(= {cpu * 1e3:.3g} ns; pallas_cpu time / "
                   f"{res['grid_steps']} steps)"
                   + (f"; for comparison {others}" if others else ""))
    for b, est in res.get("estimates_s", {}).items():
      if res["skipped"].get(b) == SKIPPED:
        extra.append(f"- {res['name']}: {LABELS[b]} {SKIPPED}: estimated "
                     f"{est:.1f} s per call from a smaller grid")
    if res["status"] != "ok":
      first = (res["error"] or "").strip().splitlines()
      extra.append(f"- {res['name']}: FAILED: "
                   + (first[0] if first else "unknown error"))
  return "\n".join(lines) + ("\n\n" + "\n".join(extra) if extra else "")


def verdict_lines(results: list[dict]) -> list[str]:
  out = []
  for res in results:
    if res["status"] != "ok":
      out.append(f"{res['name']}: FAILED (see above / results.json)")
    elif not res["targets"]:
      out.append(f"{res['name']}: no targets")
    else:
      for name, tgt in res["targets"].items():
        v = tgt["value"]
        shown = "n/a (a backend was skipped)" if v is None else f"{v:.2f}"
        out.append(f"{res['name']}: {res['verdicts'][name]}  "
                   f"{RATIO_LABELS[name]} = {shown} (target {tgt['op']} "
                   f"{tgt['bound']:g})")
  return out


def plot(results: list[dict], path: Path) -> bool:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("note: matplotlib is not installed; skipping the plot "
          f"({path.name}). `pip install matplotlib` to get it.")
    return False
  ok = [r for r in results if r["status"] == "ok"]
  if not ok:
    return False
  fig, ax = plt.subplots(figsize=(max(8, 1.9 * len(ok) + 3), 5.5))
  width = 0.8 / len(ALL_BACKENDS)
  for k, b in enumerate(ALL_BACKENDS):
    xs, ys = [], []
    for i, r in enumerate(ok):
      if b in r["times_ms"]:
        xs.append(i + (k - (len(ALL_BACKENDS) - 1) / 2) * width)
        ys.append(r["times_ms"][b])
    bars = ax.bar(xs, ys, width, label=LABELS[b])
    for x, y in zip(xs, ys):
      ax.text(x, y, _fmt_ms(y), ha="center", va="bottom", fontsize=7,
              rotation=90)
    # mark skipped cells
    for i, r in enumerate(ok):
      if r["skipped"].get(b) == SKIPPED:
        x = i + (k - (len(ALL_BACKENDS) - 1) / 2) * width
        ax.text(x, 0.0, "skipped", ha="center", va="bottom", fontsize=7,
                rotation=90, color=bars.patches[0].get_facecolor()
                if bars.patches else "gray",
                transform=ax.get_xaxis_transform())
  ax.set_yscale("log")
  top = max(v for r in ok for v in r["times_ms"].values())
  ax.set_ylim(top=top * 8)   # room for the value labels
  ax.set_xticks(range(len(ok)))
  ax.set_xticklabels([r["name"] for r in ok], rotation=15, ha="right")
  ax.set_ylabel("time per call, ms (min over repeats, log scale)")
  ax.set_title("pallas_cpu vs XLA vs interpreters")
  ax.legend()
  ax.grid(axis="y", which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def _warm_up() -> None:
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


def _environment(args) -> dict:
  import jaxlib
  return {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
      "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "numpy": np.__version__,
      "jax_devices": [str(d) for d in jax.devices()],
      "platform": platform.platform(), "machine": platform.machine(),
      "processor": platform.processor(), "cpu_count": os.cpu_count(),
      "repeats": args.repeats, "interp_budget_s": args.interp_budget,
      "quick": args.quick,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="fast subset of cases (those marked quick); also "
                      "defaults --repeats to 3 and --interp-budget to 5")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed calls per backend, minimum kept (default 5, "
                      "at least 3)")
  p.add_argument("--out", default=str(Path(__file__).resolve().parent
                                      / "results"),
                 help="output directory (default benchmarks/results)")
  p.add_argument("--cases", default=None,
                 help="comma-separated case names (default: all)")
  p.add_argument("--interp-budget", type=float, default=None,
                 help="skip an interpreter cell whose single call would "
                      "take longer than this many seconds (default 20)")
  p.add_argument("--list", action="store_true", help="list cases and exit")
  args = p.parse_args(argv)
  if args.repeats is None:
    args.repeats = 3 if args.quick else 5
  if args.interp_budget is None:
    args.interp_budget = 5.0 if args.quick else 20.0
  if args.repeats < 3:
    p.error("--repeats must be at least 3")

  if args.list:
    for c in CASES:
      print(f"{c.name:<26} {'quick ' if c.quick else '      '}"
            f"{c.description}")
    return 0

  cases = CASES
  if args.cases:
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    known = {c.name: c for c in CASES}
    unknown = [n for n in names if n not in known]
    if unknown:
      p.error(f"unknown case(s) {unknown}; known: {sorted(known)}")
    cases = [known[n] for n in names]
  elif args.quick:
    cases = [c for c in CASES if c.quick]

  out_dir = Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  env = _environment(args)
  print(f"pallas_cpu benchmarks: {len(cases)} case(s), repeats={args.repeats},"
        f" interp budget={args.interp_budget:g} s, jax {env['jax']}, "
        f"{env['cpu_count']} CPU(s)")
  t0 = _now()
  _warm_up()
  print(f"warm-up {(_now() - t0):.2f} s")

  results = []
  for case in cases:
    try:
      results.append(run_case(case, args.repeats, args.interp_budget))
    except Exception as e:  # a bug in the harness or the case definition
      _loud(f"[{case.name}] unexpected error -- case aborted\n"
            + traceback.format_exc())
      results.append({
          "name": case.name, "description": case.description,
          "grid_steps": case.grid_steps, "status": "FAILED",
          "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}",
          "first_call_s": {}, "times_ms": {}, "skipped": {},
          "estimates_s": {}, "compile_s": None, "compile_cached": None,
          "ratios": {}, "targets": {}, "verdicts": {}, "per_step_us": {}})

  table = markdown_table(results)
  md = ("# pallas_cpu benchmark results\n\n"
        f"`{env['command']}` — {env['date']}, jax {env['jax']}, "
        f"{env['cpu_count']} CPU(s), {env['machine']}; "
        f"min of {args.repeats} interleaved calls; "
        f"interpreter budget {args.interp_budget:g} s.\n\n"
        "Times are ms per call (jit'd, block_until_ready). compile s = wall "
        "time of the compiled backend's first call (trace + lowering + MLIR "
        "compile + first run). Ratios: cpu/XLA = pallas_cpu / XLA, "
        "interpret/cpu = interpret=True / pallas_cpu, tpu-interpret/cpu = "
        "TPU interpret / pallas_cpu.\n\n" + table + "\n")
  print("\n" + table + "\n")
  (out_dir / "results.md").write_text(md)
  (out_dir / "results.json").write_text(json.dumps(
      {"environment": env, "results": results}, indent=2, default=str))
  plotted = plot(results, out_dir / "bench.png")

  print("Target verdicts:")
  for line in verdict_lines(results):
    print("  " + line)
  print(f"\nwrote {out_dir / 'results.md'}, {out_dir / 'results.json'}"
        + (f", {out_dir / 'bench.png'}" if plotted else ""))
  print(f"total {(_now() - t0):.1f} s")
  return 1 if any(r["status"] != "ok" for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
