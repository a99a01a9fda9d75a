"""Races found by the instrumented build (``CompilerParams(detect_races=
True)``): printed as TPU interpret mode prints them, and kept here until
``reset_races()``.

Example::

  with pallas_cpu.force_cpu_backend(
      pallas_cpu.CompilerParams(detect_races=True)):
    f(x)
  if pallas_cpu.races_found():
    for r in pallas_cpu.race_reports():
      print(r.kind, r.buffer, r.earlier, r.later)
"""
from __future__ import annotations

import dataclasses
import json
import sys
import threading


@dataclasses.dataclass(frozen=True)
class RaceReport:
  """Two accesses of one buffer by different actors, at least one a write,
  on overlapping elements, with nothing ordering them."""
  kernel: str
  kind: str      # "write-write" or "read-write"
  buffer: str    # e.g. "output 0", "scratch operand 1 ... of core 1"
  first: int     # the overlapping elements (flat indices in the buffer)
  last: int
  earlier: str   # who, at which grid point, from which source line
  later: str

  def __str__(self) -> str:
    return (f"RACE DETECTED in kernel '{self.kernel}' ({self.kind}) on "
            f"{self.buffer}, elements [{self.first}, {self.last}]:\n"
            f"  {self.earlier}\n  {self.later}")


_lock = threading.Lock()
_reports: list[RaceReport] = []


def races_found() -> bool:
  """Whether an instrumented kernel found a race since ``reset_races()``
  (TPU interpret mode's ``races.races_found``)."""
  with _lock:
    return bool(_reports)


def race_reports() -> list[RaceReport]:
  """Every race found since ``reset_races()``, once per buffer, pair of
  source lines and kind, in the order found."""
  with _lock:
    return list(_reports)


def reset_races() -> None:
  with _lock:
    _reports.clear()


def record(text: str) -> None:
  """Called by the runtime (a JSON object per race): records and prints."""
  report = RaceReport(**json.loads(text))
  with _lock:
    _reports.append(report)
  print(report, file=sys.stderr, flush=True)
