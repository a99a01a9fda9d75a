"""Shared helpers: run a kernel on the compiled backend and on JAX's
interpreter and compare."""
from __future__ import annotations

import contextlib
import os

import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Kernels built by the tests go to a cache of their own, not the user's.
os.environ.setdefault("PALLAS_CPU_CACHE_DIR",
                      tempfile.mkdtemp(prefix="pallas_cpu-test-cache-"))
# Tier-up builds (a small kernel's -O3 code, made in the background once
# its calls took 10 ms) would add kernels to the caches at moments no test
# chooses, and tests count them: off, but in test_tier_up.py.
os.environ.setdefault("PALLAS_CPU_TIER_UP_MS", "off")

import hypothesis  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The suite draws the same hypothesis examples on every run (CI must not
# turn red on a new draw that finds a bug of interpret mode's, as bf16
# nextafter(-0, x) once did); fuzzing campaigns draw fresh ones with
# HYPOTHESIS_PROFILE=fuzz.
hypothesis.settings.register_profile("suite", derandomize=True)
hypothesis.settings.register_profile("fuzz", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

import pallas_cpu  # noqa: E402
from pallas_cpu import testing  # noqa: E402


@contextlib.contextmanager
def kernel_specs(transform=None):
  """The KernelSpecs that pallas_call's CPU lowering rule builds while the
  block runs (``registration.kernel_spec``), each passed through
  ``transform`` first if given (a test's way to switch a plan off)."""
  from pallas_cpu import registration
  seen = []
  original = registration.kernel_spec

  def spy(*args, **kwargs):
    spec = original(*args, **kwargs)
    if transform is not None:
      spec = transform(spec)
    seen.append(spec)
    return spec
  registration.kernel_spec = spy
  try:
    yield seen
  finally:
    registration.kernel_spec = original


def call(kernel, out_shape, *args, backend="cpu", **kwargs):
  fn = pallas_cpu.pallas_call(kernel, out_shape=out_shape, backend=backend,
                              **kwargs)
  return jax.jit(fn)(*args)


def assert_same(actual, expected, *, exact=True, rtol=1e-6, atol=1e-6):
  """Bitwise equality (NaNs match NaNs whatever their payload, -0.0 is not
  0.0), or closeness when ``exact`` is False: ``pallas_cpu.testing``'s
  assert_same / assert_close."""
  if exact:
    testing.assert_same(actual, expected)
  else:
    testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def check_against_interpret(kernel, out_shape, *args, exact=True, rtol=1e-6,
                            atol=1e-6, **kwargs):
  """Runs on both backends, asserts equality, returns the compiled result."""
  got = call(kernel, out_shape, *args, backend="cpu", **kwargs)
  want = call(kernel, out_shape, *args, backend="interpret", **kwargs)
  assert_same(got, want, exact=exact, rtol=rtol, atol=atol)
  return got


def check_outputs_of(fn, x, **kwargs):
  """A whole-array kernel writing each output of ``fn(x_ref[...])``: the
  compiled result equals interpret mode's and ``fn(x)`` (exactly)."""
  wants = fn(x)
  outs = tuple(jax.ShapeDtypeStruct(w.shape, w.dtype) for w in wants)

  def kernel(x_ref, *o):
    for r, v in zip(o, fn(x_ref[...])):
      r[...] = v
  got = check_against_interpret(kernel, outs, x, **kwargs)
  assert_same(got, wants)


@pytest.fixture
def rng():
  return np.random.default_rng(0)
