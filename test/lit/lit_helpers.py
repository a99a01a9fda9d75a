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


def whole(kernel, out_shape, dtype=None):
  """``kernel`` as a compiled pallas_call over whole-array blocks (no grid)
  with one output of ``out_shape`` (f32 unless ``dtype``)."""
  import jax
  import jax.numpy as jnp
  import pallas_cpu

  def f(*args):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(out_shape, dtype or jnp.float32),
        backend="cpu")(*args)
  return f
