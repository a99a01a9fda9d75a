"""The LLVM optimisation level a kernel is built at when nobody chose one
(lowering/cost.py): -O0 for small kernels (a test's first call is mostly
compile time), -O3 for large ones or ones whose work the jaxpr does not
bound -- and results that do not depend on the level, bit for bit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from pallas_cpu.lowering import cost
from conftest import assert_same

S = jax.ShapeDtypeStruct


def _level(kernel, out_shape, *args, params=pallas_cpu.CompilerParams(),
           **kw):
  f = pallas_cpu.pallas_call(kernel, out_shape=out_shape, backend="cpu",
                             compiler_params=params, **kw)
  return pallas_cpu.lower(f, *args).kernels[0].opt_level


def _double(x_ref, o_ref):
  o_ref[...] = x_ref[...] * 2


def test_small_kernels_build_at_o0_large_ones_at_o3(monkeypatch):
  monkeypatch.delenv("PALLAS_CPU_OPT_LEVEL", raising=False)
  small = jnp.ones((64, 128), jnp.float32)
  assert _level(_double, S(small.shape, small.dtype), small) == 0
  big = jnp.ones((2048, 1024), jnp.float32)
  assert _level(_double, S(big.shape, big.dtype), big) == 3
  # A small block over a long grid is large work.
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  tall = jnp.ones((8 * 2048, 128), jnp.float32)
  assert _level(_double, S(tall.shape, tall.dtype), tall, grid=(2048,),
                in_specs=[spec], out_specs=spec) == 3
  # So is a long grid of tiny steps: per-step overhead, which -O0 slows.
  def count(o_ref):
    o_ref[0] += 1
  smem = pl.BlockSpec(memory_space=pltpu.SMEM)
  assert _level(count, S((1,), jnp.int32), grid=(50_000,),
                out_specs=smem) == 3
  assert _level(count, S((1,), jnp.int32), grid=(100,), out_specs=smem) == 0


def test_unbounded_loops_build_at_o3(monkeypatch):
  monkeypatch.delenv("PALLAS_CPU_OPT_LEVEL", raising=False)
  x = jnp.ones((8, 128), jnp.float32)
  n = jnp.array([3], jnp.int32)

  def kernel(n_ref, x_ref, o_ref):
    def body(c):
      i, v = c
      return i + 1, v * 0.5
    o_ref[...] = jax.lax.while_loop(lambda c: c[0] < n_ref[0], body,
                                    (0, x_ref[...]))[1]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=S(x.shape, x.dtype), backend="cpu",
      in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM),
                pl.BlockSpec(x.shape, lambda: (0, 0))],
      out_specs=pl.BlockSpec(x.shape, lambda: (0, 0)))
  assert pallas_cpu.lower(f, n, x).kernels[0].opt_level == 3
  assert_same(jax.jit(f)(n, x), x * 0.125)


def test_a_static_loop_counts_its_trips(monkeypatch):
  monkeypatch.delenv("PALLAS_CPU_OPT_LEVEL", raising=False)
  x = jnp.ones((64, 128), jnp.float32)

  def looped(trips):
    def kernel(x_ref, o_ref):
      o_ref[...] = jax.lax.fori_loop(0, trips, lambda i, v: v * 1.0001,
                                     x_ref[...])
    return kernel

  assert _level(looped(4), S(x.shape, x.dtype), x) == 0
  assert _level(looped(4096), S(x.shape, x.dtype), x) == 3


def test_a_chosen_level_wins(monkeypatch):
  x = jnp.ones((64, 128), jnp.float32)
  monkeypatch.delenv("PALLAS_CPU_OPT_LEVEL", raising=False)
  assert _level(_double, S(x.shape, x.dtype), x,
                params=pallas_cpu.CompilerParams(opt_level=2)) == 2
  monkeypatch.setenv("PALLAS_CPU_OPT_LEVEL", "3")
  assert _level(_double, S(x.shape, x.dtype), x) == 3


def _mixed(x_ref, y_ref, i_ref, o_ref, p_ref, q_ref, r_ref):
  x, y, i = x_ref[...], y_ref[...], i_ref[...]
  # transcendentals (our approximations and libm), chains that FMA
  # contraction would change, conversions at the edges of int ranges (NaN,
  # inf, out of range), integer wrap-around and shifts: bit for bit
  o_ref[...] = (jnp.tanh(x) * y + jnp.exp(x) - jnp.log1p(jnp.abs(y))
                + jnp.sin(x * 3.0) * jnp.sqrt(jnp.abs(x)))
  p_ref[...] = (x * 1e9).astype(jnp.int32) + (i * 65599) ^ (i >> 3)
  q_ref[...] = jnp.maximum(jnp.minimum(x, y), -0.5).astype(jnp.bfloat16)
  # Float sums and products keep a fixed order (rules/reductions.py: 64
  # strided partial results, then a tree), not the vectorizer's: bit for bit
  # too, and within summation error of the exact sum.
  r_ref[...] = jnp.concatenate(
      [jnp.sum(x * y, axis=1, keepdims=True),
       jnp.prod(1.0 + y[:, :40] * 1e-3, axis=1, keepdims=True),
       jnp.sum(x[:, :5], axis=1, keepdims=True),
       jnp.sum(jnp.exp(y[:, :100]), axis=1, keepdims=True)], axis=1)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_results_do_not_depend_on_the_level(level):
  rng = np.random.default_rng(level)
  x = rng.standard_normal((64, 256)).astype(np.float32) * 3
  x[0, :6] = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-42]
  y = rng.standard_normal((64, 256)).astype(np.float32)
  i = rng.integers(-2**31, 2**31 - 1, (64, 256), dtype=np.int64).astype(
      np.int32)
  out = (S(x.shape, jnp.float32), S(x.shape, jnp.int32),
         S(x.shape, jnp.bfloat16), S((64, 4), jnp.float32))
  spec = pl.BlockSpec((32, 256), lambda r: (r, 0))
  row = pl.BlockSpec((32, 4), lambda r: (r, 0))

  def run(opt):
    f = pallas_cpu.pallas_call(
        _mixed, out_shape=out, grid=(2,), in_specs=[spec] * 3,
        out_specs=(spec,) * 3 + (row,), backend="cpu",
        compiler_params=pallas_cpu.CompilerParams(opt_level=opt))
    return jax.jit(f)(x, y, i)

  got, want = run(level), run(3)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g).view(np.uint8),
                                  np.asarray(w).view(np.uint8))
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  eps = np.finfo(np.float32).eps
  terms = [x64[1:] * y64[1:], x64[1:, :5], np.exp(y64[1:, :100])]
  for col, t in zip((0, 2, 3), terms):  # row 0 holds NaN and inf
    r = np.asarray(got[3])[1:, col].astype(np.float64)
    bound = 2 * t.shape[1] * eps * np.sum(np.abs(t), axis=1) + 1e-30
    assert np.all(np.abs(r - np.sum(t, axis=1)) <= bound), col
  p = np.prod(1.0 + y64[1:, :40] * 1e-3, axis=1)
  np.testing.assert_allclose(np.asarray(got[3])[1:, 1], p, rtol=1e-5)


def test_the_estimate_never_fails_a_call():
  assert cost.default_opt_level(object(), (4,)) == cost.DEFAULT_OPT_LEVEL
