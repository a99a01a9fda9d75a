"""Every environment variable pallas_cpu reads, typed and documented.

No other module reads ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import os


def _flag(name: str) -> bool:
  return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class Knobs:
  force: bool
  """PALLAS_CPU_FORCE=1: compile every pallas_call lowered for the CPU
  platform natively, whatever its ``interpret=`` says."""

  dump_dir: str | None
  """PALLAS_CPU_DUMP_DIR=path: write the output of every compile stage of
  every kernel compiled in this process to
  ``path/<kernel>-<fingerprint>/<n>-<stage>.<ext>`` (MLIR stages ``.mlir``,
  LLVM IR ``.ll``, assembly ``.s``).  Kernels loaded from the disk cache
  compile nothing and dump nothing: turn the cache off to dump them."""

  override_dir: str | None
  """PALLAS_CPU_OVERRIDE_DIR=path: replace a stage's output with the file
  ``path/<kernel>-<fingerprint>/<n>-<stage>.<ext>`` or
  ``path/<kernel>/<n>-<stage>.<ext>`` (the dump's names) and resume the
  pipeline after it; such kernels bypass the disk cache (a warning says
  which files were used)."""

  opt_level: int | None
  """PALLAS_CPU_OPT_LEVEL=0..3: LLVM optimisation level (default: by the
  kernel's work per call, lowering/cost.py -- 0 for small kernels, whose
  first call is mostly compile time, else 3)."""

  cache_dir: str | None
  """PALLAS_CPU_CACHE_DIR=path: persistent cache of compiled kernels (default
  ~/.cache/pallas_cpu, or $XDG_CACHE_HOME/pallas_cpu); "off" or "" disables
  it (kernels are then built in a temporary directory).  Entries are keyed
  by kernel and machine, checksummed, and rebuilt when damaged; a path that
  cannot be used as a directory is skipped with one warning
  (disk_cache.py)."""

  detect_races: bool
  """PALLAS_CPU_DETECT_RACES=1: every kernel is built instrumented and its
  races reported (CompilerParams(detect_races=True)); read when a kernel is
  lowered, so set it before the program starts."""

  num_threads: int
  """PALLAS_CPU_NUM_THREADS=n: threads for parallel grid dimensions (default
  0: the machine's cores)."""

  coalesce: bool
  """PALLAS_CPU_COALESCE=0: keep every kernel's grid as written (default on:
  a position-wise kernel runs on blocks spanning the grid dimension that
  walks its last dimension, lowering/coalesce.py -- the same results in
  fewer, wider steps)."""

  tier_up_ms: float | None
  """PALLAS_CPU_TIER_UP_MS=t: a kernel the cost model built at -O0 (small
  work per call) gets its -O3 build, compiled in the background, once its
  calls have taken t ms in all (default 10; "off": never).  Results are the
  same bits at every level (lowering/cost.py)."""

  tpu_checks: str
  """PALLAS_CPU_TPU_CHECKS=error|warn|off: what a kernel Mosaic would not
  compile for the targeted TPU generation is (default "warn": one
  TpuCompatibilityWarning per kernel); CompilerParams(tpu_checks=...)
  overrides it (tpu_checks.py)."""


def read() -> Knobs:
  """Reads the knobs now (tests change the environment between calls)."""
  return Knobs(
      force=_flag("PALLAS_CPU_FORCE"),
      dump_dir=os.environ.get("PALLAS_CPU_DUMP_DIR") or None,
      override_dir=os.environ.get("PALLAS_CPU_OVERRIDE_DIR") or None,
      opt_level=(int(os.environ["PALLAS_CPU_OPT_LEVEL"])
                 if os.environ.get("PALLAS_CPU_OPT_LEVEL") else None),
      num_threads=int(os.environ.get("PALLAS_CPU_NUM_THREADS", "0")),
      detect_races=_flag("PALLAS_CPU_DETECT_RACES"),
      cache_dir=_cache_dir(),
      coalesce=os.environ.get("PALLAS_CPU_COALESCE", "1").strip().lower()
      not in ("0", "false", "no", "off"),
      tier_up_ms=_tier_up_ms(),
      tpu_checks=_choice("PALLAS_CPU_TPU_CHECKS", ("error", "warn", "off"),
                         "warn"),
  )


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
  value = os.environ.get(name, "").strip().lower() or default
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")
  return value


# Ski rental: about half what the -O3 build of a small kernel costs (CPU
# time, on another thread): a kernel that ran this long at -O0 is likely to
# run as long again.
DEFAULT_TIER_UP_MS = 10.0


def _tier_up_ms() -> float | None:
  value = os.environ.get("PALLAS_CPU_TIER_UP_MS", "").strip().lower()
  if value in ("off", "none", "never"):
    return None
  if not value:
    return DEFAULT_TIER_UP_MS
  ms = float(value)
  if ms < 0:
    raise ValueError(f"PALLAS_CPU_TIER_UP_MS must be >= 0 or 'off', got "
                     f"{value!r}")
  return ms


def _cache_dir() -> str | None:
  value = os.environ.get("PALLAS_CPU_CACHE_DIR")
  if value is not None:
    return None if value.strip().lower() in ("", "off", "0", "none") else value
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "pallas_cpu")
