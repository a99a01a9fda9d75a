#!/usr/bin/env python
"""Benchmark suite: pallas_cpu's compiled backend vs XLA vs the interpreters.

For every case the same Pallas kernel is built through
``pallas_cpu.pallas_call(..., backend=B)`` for B in "cpu" (compiled),
"interpret" (JAX ``interpret=True``) and "tpu-interpret" (TPU interpret
mode) -- or, for a library kernel such as JAX's flash attention, called
under ``pallas_cpu.testing.backend_mode(B)`` -- next to the plain XLA (jnp)
computation of the same math, all in one process and each under
``jax.jit``.  Correctness first, then interleaved timing (minimum of the
repeats), then the ratios against the cases' targets (runner.py); the run
ends with the median compile time and "targets met: k/n" (report.py).

This file is the command line.  The suite:

  registry.py   the case table (Case, Probe, register, @case) and shared names
  cases/        one module per family of kernels, registering its cases
  runner.py     correctness check, interpreter budget, interleaved timing
  report.py     markdown table, verdicts, summary, results.md/results.json
  plot.py       bench.png: ratios per case

Usage::

  python benchmarks/bench.py [--quick] [--repeats N] [--slow-repeats N]
                             [--out DIR] [--cases a,b]
                             [--interp-budget SECONDS] [--persistent-cache]
  python benchmarks/bench.py --replot [--out DIR]

Writes ``<out>/results.md``, ``<out>/results.json`` and ``<out>/bench.png``
(the plot needs matplotlib).  See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this directory is on the path, not the one holding the
# ``benchmarks`` package; appended, it cannot shadow an installed pallas_cpu.
if __package__ in (None, "") and str(ROOT) not in sys.path:
  sys.path.append(str(ROOT))

# The collectives cases need several devices; XLA fixes the host device
# count when JAX starts (single-device timings are the same either way).
_DEVICES = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS",
                                                                  ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _DEVICES).strip()

import numpy as np  # noqa: E402
import jax  # noqa: E402

from benchmarks import cases as _cases  # noqa: E402,F401  (registers them)
from benchmarks import plot, report, runner  # noqa: E402
from benchmarks.registry import CASES, SLOW_CELL_S  # noqa: E402


def _loadavg() -> Optional[list[float]]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _git_state() -> Optional[str]:
  """HEAD of the pallas_cpu checkout, and the files changed against it (the
  compiled backend measured is the working tree, not HEAD)."""
  import subprocess
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pallas_cpu"],
                           cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
  except Exception:
    return None
  changed = [l[3:] for l in dirty if l.strip()]
  return head.strip() + (f" + uncommitted changes in {', '.join(changed)}"
                         if changed else "")


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
      "repeats": args.repeats, "slow_repeats": args.slow_repeats,
      "interp_budget_s": args.interp_budget, "quick": args.quick,
      "pallas_cpu_git": _git_state(),
      "loadavg_start": _loadavg(),
      "pallas_cpu_cache_dir": os.environ.get("PALLAS_CPU_CACHE_DIR"),
      "pallas_cpu_num_threads": os.environ.get("PALLAS_CPU_NUM_THREADS"),
  }


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="fast subset of cases (those marked quick); also "
                      "defaults --repeats to 3 and --interp-budget to 5")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed calls per backend, minimum kept (default 10, "
                      "at least 3)")
  p.add_argument("--slow-repeats", type=int, default=2,
                 help=f"timed calls of an interpreter cell slower than "
                      f"{SLOW_CELL_S:g} s per call (default 2, at least 1)")
  p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                 help="output directory (default benchmarks/results)")
  p.add_argument("--cases", default=None,
                 help="comma-separated case names (default: all)")
  p.add_argument("--interp-budget", type=float, default=None,
                 help="skip an interpreter cell whose single call would "
                      "take longer than this many seconds (default 20)")
  p.add_argument("--persistent-cache", action="store_true",
                 help="use pallas_cpu's persistent kernel cache as "
                      "configured (PALLAS_CPU_CACHE_DIR or ~/.cache/"
                      "pallas_cpu); by default the run gets a fresh empty "
                      "cache so compile times are cold compiles")
  p.add_argument("--list", action="store_true", help="list cases and exit")
  p.add_argument("--replot", action="store_true",
                 help="run nothing: redraw <out>/bench.png from "
                      "<out>/results.json and exit")
  return p


def _replot(out_dir: Path) -> int:
  env, _, results = report.read_json(out_dir / "results.json")
  if not plot.plot(results, out_dir / "bench.png", env):
    return 1
  print(f"wrote {out_dir / 'bench.png'} from {out_dir / 'results.json'}")
  return 0


def main(argv=None) -> int:
  p = _parser()
  args = p.parse_args(argv)
  if args.repeats is None:
    args.repeats = 3 if args.quick else 10
  if args.interp_budget is None:
    args.interp_budget = 5.0 if args.quick else 20.0
  if args.repeats < 3:
    p.error("--repeats must be at least 3")
  if args.slow_repeats < 1:
    p.error("--slow-repeats must be at least 1")

  if args.list:
    for c in CASES:
      print(f"{c.name:<26} {'quick ' if c.quick else '      '}"
            f"{c.description}")
    return 0
  out_dir = Path(args.out)
  if args.replot:
    return _replot(out_dir)

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

  if not args.persistent_cache:
    # Kernels are read at compile time (pallas_cpu.knobs), so this takes
    # effect for every kernel of this run: each compile is a cold one.
    os.environ["PALLAS_CPU_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="pallas_cpu-bench-cache-")

  out_dir.mkdir(parents=True, exist_ok=True)
  env = _environment(args)
  print(f"pallas_cpu benchmarks: {len(cases)} case(s), repeats={args.repeats},"
        f" interp budget={args.interp_budget:g} s, jax {env['jax']}, "
        f"{env['cpu_count']} CPU(s)")
  t0 = runner.now()
  runner.warm_up()
  print(f"warm-up {(runner.now() - t0):.2f} s")

  results = runner.run_cases(cases, args.repeats, args.interp_budget,
                             args.slow_repeats)

  env["loadavg_end"] = _loadavg()
  env["total_s"] = round(runner.now() - t0, 1)
  summ = report.summary(results)
  print("\n" + report.markdown_table(results) + "\n")
  (out_dir / "results.md").write_text(report.results_markdown(
      env, results, summ, args.persistent_cache))
  report.write_json(out_dir / "results.json", env, summ, results)
  plotted = plot.plot(results, out_dir / "bench.png", env)

  print("Target verdicts:")
  for line in report.verdict_lines(results):
    print("  " + line)
  print("\n" + "\n".join(report.summary_lines(summ)))
  print(f"\nwrote {out_dir / 'results.md'}, {out_dir / 'results.json'}"
        + (f", {out_dir / 'bench.png'}" if plotted else ""))
  print(f"total {(runner.now() - t0):.1f} s")
  return 1 if any(r["status"] != "ok" for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
