"""Tier-up: a kernel the cost model built at -O0 (small work per call,
lowering/cost.py) gets its -O3 build, made on the background thread, once
its calls have taken PALLAS_CPU_TIER_UP_MS; the runtime then runs that code
under the same kernel id (runtime/kernel_registry.h).  The results are the
same bits before and after, the -O3 build is kept on disk, and a later
process starts with it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

import pallas_cpu
from pallas_cpu import abi, background, compiler
from conftest import assert_same

S = jax.ShapeDtypeStruct


@pytest.fixture
def tier_up(monkeypatch):
  """Tier-up after the first call (the suite turns it off elsewhere),
  levels chosen by the cost model."""
  monkeypatch.setenv("PALLAS_CPU_TIER_UP_MS", "0")
  monkeypatch.delenv("PALLAS_CPU_OPT_LEVEL", raising=False)


def _kernel(x_ref, y_ref, o_ref, s_ref):
  # transcendental, division, row reductions exact in any order (a float
  # sum is not: such kernels keep their level, see below)
  x, y = x_ref[...], y_ref[...]
  v = jnp.tanh(x) * jnp.exp(-y * y) + x / (1.0 + y * y)
  o_ref[...] = v
  s_ref[...] = jnp.max(v, axis=1, keepdims=True) - jnp.min(x, axis=1,
                                                           keepdims=True)


def _call(scale: float = 1.0, **params):
  spec = pl.BlockSpec((64, 256), lambda i: (i, 0))
  sspec = pl.BlockSpec((64, 1), lambda i: (i, 0))
  f = pallas_cpu.pallas_call(
      lambda x, y, o, s: _kernel(x, y, o, s),
      out_shape=(S((128, 256), jnp.float32), S((128, 1), jnp.float32)),
      grid=(2,), in_specs=[spec, spec], out_specs=(spec, sspec),
      compiler_params=pallas_cpu.CompilerParams(**params), backend="cpu",
      name=f"tier_{str(scale).replace('.', '_')}")
  return jax.jit(lambda x, y: f(x * scale, y))


def _inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((128, 256)) * 3, jnp.float32)
  y = jnp.asarray(rng.standard_normal((128, 256)), jnp.float32)
  return x, y


def _reference(x, y):
  v = jnp.tanh(x) * jnp.exp(-y * y) + x / (1.0 + y * y)
  return v, jnp.max(v, axis=1, keepdims=True) - jnp.min(x, axis=1,
                                                        keepdims=True)


def _new_entries(before):
  return compiler.cache_entries()[len(before):]


def test_a_small_kernel_tiers_up_to_the_same_bits(tier_up):
  x, y = _inputs()
  f = _call(1.25)
  kernel_ir = pallas_cpu.lower(f, x, y).kernels[0].stages["kernel"]
  assert abi.TIER_UP_ATTR + " = 0 : i64" in kernel_ir
  assert abi.OPT_LEVEL_ATTR + " = 0 : i32" in kernel_ir
  before = compiler.cache_entries()
  first = jax.block_until_ready(f(x, y))   # -O0; asks for -O3
  background.wait()
  tiered = [e for e in _new_entries(before) if e.tiered]
  assert tiered, _new_entries(before)
  after = jax.block_until_ready(f(x, y))   # the -O3 code
  for a, b in zip(first, after):
    assert_same(a, b)
  want = _reference(x * 1.25, y)
  for a, b in zip(after, want):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  # Asked once: more calls build nothing more.
  n = len(compiler.cache_entries())
  jax.block_until_ready(f(x, y))
  background.wait()
  assert len(compiler.cache_entries()) == n


def test_the_tiered_ir_differs_only_in_its_level(tier_up):
  x, y = _inputs()
  kernel_ir = pallas_cpu.lower(_call(1.5), x, y).kernels[0].stages["kernel"]
  tiered = compiler.tiered_ir(kernel_ir)
  assert tiered is not None and abi.TIER_UP_ATTR not in tiered
  assert abi.OPT_LEVEL_ATTR + " = 3 : i32" in tiered
  assert (tiered.replace(abi.OPT_LEVEL_ATTR + " = 3", "")
          == compiler._TIER_UP.sub("", kernel_ir, count=1).replace(
              abi.OPT_LEVEL_ATTR + " = 0", ""))
  assert compiler.tiered_ir(tiered) is None


def test_a_re_jitted_kernel_keeps_its_tiered_code(tier_up):
  x, y = _inputs(1)
  jax.block_until_ready(_call(1.75)(x, y))
  background.wait()
  again = _call(1.75)  # a new jit of the same kernel: lowered afresh
  before = compiler.cache_entries()
  out = jax.block_until_ready(again(x, y))
  background.wait()
  assert not [e for e in _new_entries(before) if not e.tiered]
  for a, b in zip(out, _reference(x * 1.75, y)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("how", ["knob_off", "chosen_level", "large"])
def test_no_tier_up_where_the_level_is_final(how, tier_up, monkeypatch):
  x, y = _inputs(2)
  scale = {"knob_off": 2.25, "chosen_level": 2.5, "large": 2.75}[how]
  if how == "knob_off":
    monkeypatch.setenv("PALLAS_CPU_TIER_UP_MS", "off")
    f = _call(scale)
  elif how == "chosen_level":
    f = _call(scale, opt_level=0)
  else:
    monkeypatch.setenv("PALLAS_CPU_OPT_LEVEL", "3")
    f = _call(scale)
  kernel_ir = pallas_cpu.lower(f, x, y).kernels[0].stages["kernel"]
  assert abi.TIER_UP_ATTR not in kernel_ir
  before = compiler.cache_entries()
  for _ in range(3):
    out = jax.block_until_ready(f(x, y))
  background.wait()
  assert not [e for e in _new_entries(before) if e.tiered]
  for a, b in zip(out, _reference(x * scale, y)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("reduction", [
    lambda v: jnp.sum(v, axis=1, keepdims=True),
    lambda v: jnp.prod(1.0 + v[:, :40] * 1e-2, axis=1, keepdims=True),
    lambda v: jnp.sum(jnp.exp(v[:, :77] * 0.1), axis=1, keepdims=True),
    lambda v: jnp.sum(v.astype(jnp.bfloat16), axis=1, keepdims=True)
    .astype(jnp.float32),
], ids=["f32_sum", "f32_prod", "exp_sum_77", "bf16_sum"])
def test_float_sums_keep_their_bits_through_tier_up(reduction, tier_up):
  """Float sums and products keep a fixed order (rules/reductions.py), not
  the vectorizer's: the -O3 build gives the -O0 build's bits."""
  def kernel(x_ref, o_ref):
    o_ref[...] = reduction(x_ref[...] * 1.5)

  x = jnp.asarray(np.random.default_rng(4).standard_normal((64, 128)) * 4,
                  jnp.float32)
  f = jax.jit(pallas_cpu.pallas_call(
      kernel, out_shape=S((64, 1), jnp.float32), backend="cpu",
      # Mosaic has no reduce_prod: not what this test is about
      compiler_params=pallas_cpu.CompilerParams(tpu_checks="off")))
  kernel_ir = pallas_cpu.lower(f, x).kernels[0].stages["kernel"]
  assert abi.TIER_UP_ATTR in kernel_ir
  before = compiler.cache_entries()
  first = jax.block_until_ready(f(x))
  background.wait()
  assert [e for e in _new_entries(before) if e.tiered]
  assert_same(jax.block_until_ready(f(x)), first)
  np.testing.assert_allclose(first, reduction(x * 1.5), rtol=2e-5, atol=1e-3)


def test_the_budget_counts_call_time(monkeypatch):
  """A budget of an hour is never reached: no -O3 build."""
  monkeypatch.setenv("PALLAS_CPU_TIER_UP_MS", "3600000")
  monkeypatch.delenv("PALLAS_CPU_OPT_LEVEL", raising=False)
  x, y = _inputs(3)
  f = _call(3.25)
  kernel_ir = pallas_cpu.lower(f, x, y).kernels[0].stages["kernel"]
  assert abi.TIER_UP_ATTR + " = 3600000000 : i64" in kernel_ir
  before = compiler.cache_entries()
  for _ in range(5):
    jax.block_until_ready(f(x, y))
  background.wait()
  assert not [e for e in _new_entries(before) if e.tiered]


def test_bad_knob_values_are_refused(monkeypatch):
  from pallas_cpu import knobs
  monkeypatch.setenv("PALLAS_CPU_TIER_UP_MS", "-1")
  with pytest.raises(ValueError, match="PALLAS_CPU_TIER_UP_MS"):
    knobs.read()
  monkeypatch.setenv("PALLAS_CPU_TIER_UP_MS", "Off")
  assert knobs.read().tier_up_ms is None


def test_a_later_process_starts_with_the_tiered_code(tmp_path):
  code = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import pallas as pl
    import pallas_cpu
    from pallas_cpu import background, compiler

    def kernel(x_ref, o_ref):
      o_ref[...] = jnp.exp(x_ref[...]) * 0.5 - x_ref[...]

    spec = pl.BlockSpec((32, 128), lambda i: (i, 0))
    f = jax.jit(pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((64, 128), jnp.float32),
        grid=(2,), in_specs=[spec], out_specs=spec))
    x = jnp.linspace(-4, 4, 64 * 128, dtype=jnp.float32).reshape(64, 128)
    out = jax.block_until_ready(f(x))
    background.wait()
    out2 = jax.block_until_ready(f(x))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    np.testing.assert_allclose(out, jnp.exp(x) * 0.5 - x, rtol=2e-6,
                               atol=1e-5)
    print([(e.from_disk, e.tiered) for e in compiler.cache_entries()])
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PALLAS_CPU_TIER_UP_MS="0",
             PALLAS_CPU_CACHE_DIR=str(tmp_path / "cache"))
  env.pop("PALLAS_CPU_OPT_LEVEL", None)

  def run():
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]

  # First process: built at -O0, tiered up in the background (two entries:
  # the kernel id, now holding the -O3 code, and the -O3 build itself).
  assert run() == "[(False, True), (False, True)]"
  # Second: the -O3 build from disk at once, no -O0 phase.
  assert run() == "[(True, True)]"


def test_kernels_at_interpreter_exit(tmp_path):
  """A kernel first lowered in an atexit hook, after the build thread is
  gone, is built by the runtime's compile hook; a tier-up asked for then
  is dropped.  The process exits cleanly either way (it raised
  "cannot schedule new futures after shutdown" before)."""
  code = textwrap.dedent("""
    import atexit
    import jax, jax.numpy as jnp
    from jax.experimental import pallas as pl
    import pallas_cpu

    x = jnp.full((8, 128), 2.0, jnp.float32)

    def kernel(x_ref, o_ref):
      o_ref[...] = x_ref[...] * 3.0

    f = jax.jit(pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32)))
    print("early", float(f(x)[0, 0]))  # asks for its tier-up, then exits

    def late():
      def kernel2(x_ref, o_ref):
        o_ref[...] = x_ref[...] + 5.0
      g = jax.jit(pallas_cpu.pallas_call(
          kernel2, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32)))
      print("late", float(g(x)[0, 0]), float(g(x)[0, 0]))
    atexit.register(late)
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PALLAS_CPU_TIER_UP_MS="0",
             PALLAS_CPU_CACHE_DIR="off")
  env.pop("PALLAS_CPU_OPT_LEVEL", None)
  proc = subprocess.run([sys.executable, "-c", code], env=env,
                        capture_output=True, text=True, cwd=tmp_path,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stdout.split() == ["early", "6.0", "late", "7.0", "7.0"]
