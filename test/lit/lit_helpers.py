"""Helpers shared by the lit tests (not a test itself: see lit.cfg.py).

Tests import it after putting their own directory on ``sys.path``::

  import os, sys
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from lit_helpers import run_test
"""
from __future__ import annotations

import sys


def run_test(f):
  """Runs ``f`` at definition time, after printing ``TEST: <name>``.

  The upstream MLIR Python-test style: ``# CHECK-LABEL: TEST: name`` anchors
  the checks that follow on the output of ``f``.
  """
  print(f"\nTEST: {f.__name__}", flush=True)
  f()
  sys.stdout.flush()
  return f


def lower_text(fn, *args, stage: str = "kernel", **kwargs) -> str:
  """The IR of the (first) pallas_call in ``fn(*args)`` after ``stage``."""
  import pallas_cpu
  return pallas_cpu.lower(fn, *args, **kwargs).as_text(stage)
