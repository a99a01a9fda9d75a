"""The plot of a run (bench.png): per case, what a reader asks of it --
how pallas_cpu compares with XLA (pallas_cpu / XLA, lower is better) and
how much faster it is than the interpreters (interpreter / pallas_cpu,
higher is better).  Bars grow from the 1x line (parity); an axis is
logarithmic where its ratios span a decade or more; a case's target on a
ratio is a tick, green when met and red when missed; a cell without a time
says why (skipped by the budget, an error, FAILED).  When cases have
variants of the compiled backend, a third panel shows their ratios
(``Case.variant_ratios``, e.g. t(1 core) / t(2 cores)).  Works from result
dicts alone, so ``bench.py --replot`` redraws it from results.json."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from benchmarks.registry import LABELS, RATIOS, SKIPPED

# (ratio, legend label) per panel
XLA_SERIES = (("cpu/xla", "pallas_cpu / XLA"),)
INTERPRETER_SERIES = (("interpret/cpu", f"{LABELS['interpret']} / pallas_cpu"),
                      ("tpu-interpret/cpu",
                       f"{LABELS['tpu-interpret']} / pallas_cpu"))
VERDICT_COLORS = {"PASS": "tab:green", "MISS": "tab:red",
                  "FAILED": "tab:red", "n/a": "tab:gray"}


def _missing(res: dict, ratio: str) -> Optional[str]:
  """Why a case has no value for ``ratio`` (None when it has one)."""
  if ratio in res["ratios"]:
    return None
  operands = RATIOS.get(ratio) or res.get("variant_ratios", {}).get(ratio)
  if operands is None:
    return ""                      # a variant ratio of another case
  if res.get("cpu_error"):
    return "pallas_cpu FAILED"
  for b in operands:
    if b in res.get("variant_errors", {}):
      return f"{b} FAILED"
    why = res["skipped"].get(b)
    if why == SKIPPED:
      return f"{LABELS[b]}: skipped (> budget)"
    if why is not None:
      return f"{LABELS[b]}: " + ("error" if why.startswith("error:")
                                 else "not run")
  return "case FAILED" if res["status"] != "ok" else "n/a"


def _label(v: float) -> str:
  if v >= 100:
    return f"{v:,.0f}×"
  if v >= 10:
    return f"{v:.1f}×"
  return f"{v:.2f}×"


def _axis(values: list[float]) -> tuple[bool, float, float]:
  """(log scale?, low, high) for ratios ``values`` (1 included)."""
  lo, hi = min(values + [1.0]), max(values + [1.0])
  if hi / lo >= 10:
    return True, lo / 3, hi * 8    # room for the value labels
  pad = (hi - lo) * 0.25 + 0.1
  return False, max(0.0, lo - pad), hi + pad


def _panel(ax, results: list[dict], series, colors, title: str) -> None:
  n = len(series)
  height = 0.8 / n
  values = [v for r in results for ratio, _ in series
            for v in (r["ratios"].get(ratio),
                      r["targets"].get(ratio, {}).get("bound")) if v]
  log, lo, hi = _axis(values)
  # A target tick within a label's width past the bar end would sit under
  # the label: the label then goes past the tick.
  near = ((lambda v, b: v < b <= v * 2.5) if log
          else (lambda v, b: v < b <= v + 0.12 * (hi - lo)))
  labelled = set()                 # one legend entry per series
  for i, res in enumerate(results):
    for k, (ratio, label) in enumerate(series):
      y = i + (k - (n - 1) / 2) * height
      v = res["ratios"].get(ratio)
      tgt = res["targets"].get(ratio)
      if tgt is not None:
        verdict = res["verdicts"].get(ratio, "n/a")
        ax.plot([tgt["bound"]], [y], marker="|", markersize=10,
                markeredgewidth=2.5, linestyle="none", zorder=3,
                color=VERDICT_COLORS.get(verdict, "tab:gray"))
      if v is None or v <= 0:
        ax.annotate(_missing(res, ratio) or "", (1, y), xytext=(4, 0),
                    textcoords="offset points", va="center", ha="left",
                    fontsize=7, color="tab:gray", style="italic")
        continue
      ax.barh(y, v - 1, left=1, height=height * 0.9, color=colors[k],
              label=None if label in labelled else label)
      labelled.add(label)
      at = tgt["bound"] if tgt is not None and near(v, tgt["bound"]) else v
      ax.annotate(_label(v), (at, y), xytext=(4 if v >= 1 else -4, 0),
                  textcoords="offset points", va="center",
                  ha="left" if v >= 1 else "right", fontsize=7)
  ax.axvline(1.0, color="black", linewidth=1)
  if log:
    ax.set_xscale("log")
  ax.set_xlim(lo, hi)
  ax.set_title(title, fontsize=10)
  ax.grid(axis="x", which="major", alpha=0.3)


def _target_legend(ax) -> None:
  from matplotlib.lines import Line2D
  handles, labels = ax.get_legend_handles_labels()
  for verdict, text in (("PASS", "target met"), ("MISS", "target missed")):
    handles.append(Line2D([], [], marker="|", markersize=11,
                          markeredgewidth=2.5, linestyle="none",
                          color=VERDICT_COLORS[verdict]))
    labels.append(text)
  # Below the x label (the pad is in font sizes): over no bar.
  ax.legend(handles, labels, fontsize=8, loc="upper center",
            bbox_to_anchor=(0.5, 0), borderaxespad=4, ncol=len(handles))


def plot(results: list[dict], path: Path, env: Optional[dict] = None) -> bool:
  """Draws bench.png; False (with a note) when matplotlib is missing or
  there is nothing to draw."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("note: matplotlib is not installed; skipping the plot "
          f"({path.name}). `pip install matplotlib` to get it.")
    return False
  shown = [r for r in results if r["times_ms"]]
  if not shown:
    return False
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  variant_ratios = list(dict.fromkeys(
      r for res in shown for r in res.get("variant_ratios", {})))
  widths = [1, 1.4] + ([1] if variant_ratios else [])
  fig, axes = plt.subplots(
      1, len(widths), sharey=True,
      figsize=(15 + 6 * (len(widths) - 2), 1.8 + 0.42 * len(shown)),
      gridspec_kw={"width_ratios": widths})
  left, right = axes[:2]
  # Not green or red: those are the target ticks' verdicts.
  _panel(left, shown, XLA_SERIES, [colors[0]],
         "pallas_cpu / XLA: time ratio, lower is better")
  _panel(right, shown, INTERPRETER_SERIES, [colors[1], colors[4]],
         "interpreter / pallas_cpu: speed-up, higher is better")
  if variant_ratios:
    _panel(axes[2], shown, [(r, r) for r in variant_ratios],
           [colors[(5 + i) % len(colors)] for i in range(len(variant_ratios))],
           "pallas_cpu variants a/b: time ratio t(a) / t(b)")
  left.set_yticks(range(len(shown)))
  left.set_yticklabels([r["name"] for r in shown], fontsize=8)
  left.set_ylim(len(shown) - 0.5, -0.5)     # first case on top
  for ax in axes:
    ax.set_xlabel("ratio of minimum times per call (1× = same speed)",
                  fontsize=8)
    _target_legend(ax)
  title = "pallas_cpu vs XLA and the interpreters"
  if env:
    title += (f" — {env.get('date', '?')}, pallas_cpu "
              f"{env.get('pallas_cpu_git') or '?'}, jax {env.get('jax', '?')}"
              f", {env.get('cpu_count', '?')} CPU(s), min of "
              f"{env.get('repeats', '?')} calls")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
