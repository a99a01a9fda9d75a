"""The report of a run: the markdown table and its notes, the target
verdicts, the summary (median compile time, targets met), results.md and
results.json.  Works from result dicts alone (no JAX), so a report can be
rebuilt from results.json."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

from benchmarks.registry import (COMPILE_TARGET_S, LABELS, RATIOS, SKIPPED,
                                 SLOW_CELL_S, XLA, label, metric_label)


def fmt_ms(v: Optional[float]) -> str:
  if v is None:
    return "—"
  if v >= 100:
    return f"{v:.0f}"
  if v >= 1:
    return f"{v:.2f}"
  return f"{v:.3g}"


def fmt_ratio(v: Optional[float]) -> str:
  if v is None:
    return "—"
  if v >= 100:
    return f"{v:.0f}x"
  if v >= 10:
    return f"{v:.1f}x"
  return f"{v:.2f}x"


def _fmt_value(name: str, v: float) -> str:
  return f"{v:.3g}" if name == "cpu_us_per_step" else f"{v:.2f}"


def _md(text: str, limit: int = 160) -> str:
  """One table-safe line."""
  text = " ".join(text.split()).replace("|", "\\|")
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _cell(res: dict, backend: str) -> str:
  if backend == "cpu" and res.get("cpu_error"):
    return "**FAILED**: " + _md(res["cpu_error"], 400)
  if backend in res.get("variant_errors", {}):
    return "**FAILED**: " + _md(res["variant_errors"][backend], 400)
  if backend in res["times_ms"]:
    s = fmt_ms(res["times_ms"][backend])
    n = res.get("reduced_repeats", {}).get(backend)
    return s + (f" (min of {n})" if n else "")
  return _md(res["skipped"].get(backend, "—"))


def _target_cell(res: dict) -> str:
  if not res["targets"]:
    return "**FAILED**" if res["status"] != "ok" else "—"
  parts = []
  for name, tgt in res["targets"].items():
    verdict = res["verdicts"][name]
    value = tgt["value"]
    shown = "n/a" if value is None else _fmt_value(name, value)
    parts.append(f"{verdict} ({metric_label(name)} {shown} "
                 f"{tgt['op']} {tgt['bound']:g})")
  return "; ".join(parts)


def _compile_cell(res: dict) -> tuple[str, str]:
  cs, net = res["compile_s"], res.get("compile_net_s")
  first = "—" if cs is None else f"{cs:.3f}"
  if res["compile_cached"]:
    first += " (cached)"
  elif res.get("compile_from_disk"):
    first += " (disk cache)"
  return first, "—" if net is None else f"{net:.3f}"


def _notes(results: list[dict]) -> list[str]:
  """The lines under the table: per-step overheads, budget estimates,
  interpreter errors, failures, reduced repeats."""
  extra = []
  for res in results:
    if res["per_step_us"] and "cpu" in res["per_step_us"]:
      cpu = res["per_step_us"]["cpu"]
      others = ", ".join(
          f"{label(b)} {v:.4g} µs"
          for b, v in res["per_step_us"].items() if b != "cpu")
      extra.append(f"- {res['name']}: per-step overhead: {cpu:.4g} µs "
                   f"(= {cpu * 1e3:.3g} ns; pallas_cpu time / "
                   f"{res['grid_steps']} steps)"
                   + (f"; for comparison {others}" if others else ""))
    for b, est in res.get("estimates_s", {}).items():
      if res["skipped"].get(b) == SKIPPED:
        extra.append(f"- {res['name']}: {LABELS[b]} {SKIPPED}: estimated "
                     f"{est:.1f} s per call from a smaller grid")
    for b, why in res["skipped"].items():
      if why.startswith("error:") or why.startswith("skipped:"):
        extra.append(f"- {res['name']}: {LABELS[b]} {_md(why, 400)}")
    if res["status"] != "ok":
      first = (res["error"] or "").strip().splitlines()
      extra.append(f"- {res['name']}: FAILED: "
                   + _md(first[0] if first else "unknown error", 400))
  slow = [f"{r['name']} {LABELS[b]}" for r in results
          for b in r.get("reduced_repeats", {})]
  if slow:
    extra.append(f"- (min of N): interpreter cells slower than "
                 f"{SLOW_CELL_S:g} s per call, timed over fewer calls: "
                 + ", ".join(slow))
  return extra


def _variants_cell(res: dict) -> str:
  """A case's variants of the compiled backend: each one's ms, then its
  variant ratios ("cores1 111; cores2 59.0; cores1/cores2 1.88x")."""
  parts = [f"{v} {_cell(res, v)}" for v in res.get("variants", ())]
  parts += [f"{r} {fmt_ratio(res['ratios'].get(r))}"
            for r in res.get("variant_ratios", {})]
  return "; ".join(parts) or "—"


def markdown_table(results: list[dict]) -> str:
  """The results table; the column of variants of the compiled backend
  (``Case.variants``) only when a case has some."""
  variants = any(r.get("variants") for r in results)
  head = ["case", "pallas_cpu ms", "XLA ms", "interpret=True ms",
          "TPU interpret ms", "compile s (1st call)", "compile s (net)",
          "cpu/XLA", "interpret/cpu", "tpu-interpret/cpu",
          *(["pallas_cpu variants: ms; ratios"] if variants else []),
          "target met?"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  for res in results:
    row = [res["name"], _cell(res, "cpu"), _cell(res, XLA),
           _cell(res, "interpret"), _cell(res, "tpu-interpret"),
           *_compile_cell(res),
           *(fmt_ratio(res["ratios"].get(r)) for r in RATIOS),
           *([_variants_cell(res)] if variants else []),
           _target_cell(res)]
    lines.append("| " + " | ".join(row) + " |")
  extra = _notes(results)
  return "\n".join(lines) + ("\n\n" + "\n".join(extra) if extra else "")


def summary(results: list[dict]) -> dict:
  """Median compile time and the count of targets met (every case's targets,
  plus the median-compile-time target; a failed case misses its targets)."""
  # A case that compiles many kernels per call (Case.jit=False: the
  # test-suite case) is not one kernel's compile time.
  one_kernel = [r for r in results if r.get("jit", True)]
  firsts = [r["compile_s"] for r in one_kernel if r["compile_s"] is not None]
  nets = [r["compile_net_s"] for r in one_kernel
          if r.get("compile_net_s") is not None]
  median = statistics.median(firsts) if firsts else None
  verdicts = [v for r in results for v in r["verdicts"].values()]
  # Targets of cases that died in the harness have no verdicts: count them.
  for r in results:
    if not r["verdicts"] and r.get("case_targets"):
      verdicts += ["FAILED"] * len(r["case_targets"])
  compile_ok = median is not None and median <= COMPILE_TARGET_S
  verdicts.append("PASS" if compile_ok else "MISS")
  return {
      "median_compile_s": median,
      "median_compile_net_s": statistics.median(nets) if nets else None,
      "compile_cases": len(firsts),
      "compile_verdict": "PASS" if compile_ok else "MISS",
      "targets_met": sum(v == "PASS" for v in verdicts),
      "targets_total": len(verdicts),
  }


def summary_lines(s: dict) -> list[str]:
  med = s["median_compile_s"]
  net = s["median_compile_net_s"]
  return [
      (f"median compile time: {'n/a' if med is None else f'{med:.3f}'} s "
       f"(first call of the compiled backend, {s['compile_cases']} cases; "
       f"target <= {COMPILE_TARGET_S:g} s: {s['compile_verdict']})"
       + ("" if net is None else
          f"; median net of one steady-state run: {net:.3f} s")),
      (f"targets met: {s['targets_met']}/{s['targets_total']} "
       "(per-case targets plus the median compile time)"),
  ]


def verdict_lines(results: list[dict]) -> list[str]:
  out = []
  for res in results:
    if not res["targets"]:
      out.append(f"{res['name']}: "
                 + ("FAILED (see above / results.json)"
                    if res["status"] != "ok" else "no targets"))
      continue
    for name, tgt in res["targets"].items():
      v = tgt["value"]
      if res["verdicts"][name] == "FAILED" and res["cpu_error"]:
        shown = "n/a (compiled backend failed: " + _md(
            res["cpu_error"], 120) + ")"
      elif res["verdicts"][name] == "FAILED":
        shown = "n/a (" + "; ".join(
            f"variant {b} failed: " + _md(res["variant_errors"][b], 120)
            for b in res["variant_ratios"][name]
            if b in res["variant_errors"]) + ")"
      else:
        shown = ("n/a (a backend was skipped)" if v is None
                 else _fmt_value(name, v))
      out.append(f"{res['name']}: {res['verdicts'][name]}  "
                 f"{metric_label(name)} = {shown} (target {tgt['op']} "
                 f"{tgt['bound']:g})")
  return out


def fmt_load(v) -> str:
  return "n/a" if v is None else "/".join(f"{x:g}" for x in v)


def results_markdown(env: dict, results: list[dict], summ: dict,
                     persistent_cache: bool) -> str:
  """results.md: a header with the run's conditions, the table and its
  notes, the summary lines."""
  return (
      "# pallas_cpu benchmark results\n\n"
      f"`{env['command']}` — {env['date']}, jax {env['jax']}, "
      f"{env['cpu_count']} CPU(s), {env['machine']}, load average "
      f"{fmt_load(env['loadavg_start'])} at the start, "
      f"{fmt_load(env['loadavg_end'])} at the end; pallas_cpu "
      f"{env['pallas_cpu_git']}; total {env['total_s']:g} s; "
      f"min of {env['repeats']} interleaved calls (interpreter cells slower "
      f"than {SLOW_CELL_S:g} s: min of {env['slow_repeats']}); interpreter "
      f"budget {env['interp_budget_s']:g} s; "
      + ("persistent kernel cache" if persistent_cache
         else "fresh kernel cache (cold compiles)") + ".\n\n"
      "Times are ms per call (jit'd, block_until_ready). compile s (1st "
      "call) = wall time of the compiled backend's first call (trace + "
      "lowering + MLIR compile + first run); compile s (net) = that minus "
      "one steady-state call. Ratios: cpu/XLA = pallas_cpu / XLA, "
      "interpret/cpu = interpret=True / pallas_cpu, tpu-interpret/cpu = "
      "TPU interpret / pallas_cpu"
      + ("; variant ratios a/b = t(variant a) / t(variant b) of the "
         "compiled backend" if any(r.get("variants") for r in results)
         else "") + ".\n\n" + markdown_table(results) + "\n\n"
      + "\n\n".join(f"**{l}**" for l in summary_lines(summ)) + "\n")


def write_json(path: Path, env: dict, summ: dict, results: list[dict]) -> None:
  path.write_text(json.dumps(
      {"environment": env, "summary": summ, "results": results}, indent=2,
      default=str))


def read_json(path: Path) -> tuple[dict, dict, list[dict]]:
  """(environment, summary, results) of a results.json."""
  data = json.loads(path.read_text())
  return data["environment"], data["summary"], data["results"]
