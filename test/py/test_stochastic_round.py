"""Properties of ``pltpu.stochastic_round`` f32 -> bf16 that hold whatever
convention picks the random bits (interpret mode cannot run it; Mosaic's
``tpu.stochastic_convert`` is lowered inside libtpu, so its exact use of the
bits is not public -- test_bits.py pins pallas_cpu's own, XLA's
StochasticConvert one):

* every result is one of the two bf16 neighbours bracketing its input --
  the input truncated toward zero or the next bf16 away from zero (past the
  largest bf16 that is +-inf) -- and an input that is already a bf16
  (+-0, +-inf included) maps to itself; NaN stays NaN;
* over many independent random words the mean converges to the input: it
  rounds away from zero with probability (dropped bits) / 2**16.

Many values go through one kernel call; hypothesis draws the seeds."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

SEEDS = st.integers(0, 2 ** 32 - 1)


def _kernel(x_ref, b_ref, o_ref):
  o_ref[...] = pltpu.stochastic_round(x_ref[...], b_ref[...],
                                      target_dtype=jnp.bfloat16)


_CALLS = {}


def _round(x, bits):
  shape = x.shape
  if shape not in _CALLS:
    _CALLS[shape] = jax.jit(pallas_cpu.pallas_call(
        _kernel, out_shape=jax.ShapeDtypeStruct(shape, jnp.bfloat16)))
  out = _CALLS[shape](jnp.asarray(x, jnp.float32), jnp.asarray(bits))
  return np.asarray(out).view(np.uint16)


def _neighbours(x):
  """bf16 bit patterns of the neighbours bracketing f32 ``x``: truncated
  toward zero, and one bf16 step away from zero (0x7F80 past the largest
  finite bf16: +-inf)."""
  u = np.asarray(x, np.float32).view(np.uint32)
  down = (u >> 16).astype(np.uint16)
  up = (down + 1).astype(np.uint16)  # magnitude + 1 ulp, sign kept
  exact = (u & 0xFFFF) == 0
  return down, up, exact


def _inputs(rng, n):
  """f32 values of every kind: uniformly random bit patterns (denormals,
  NaNs, infinities included), normals of all magnitudes, exact bf16 values,
  values around the largest bf16 and specials."""
  raw = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
  anybits = raw.view(np.float32)
  normals = (rng.standard_normal(n) * 10.0 ** rng.integers(-38, 38, n))
  with np.errstate(over="ignore"):
    normals = normals.astype(np.float32)
  exact = (raw & 0xFFFF0000).view(np.float32)
  top = np.float32(3.3895314e38)  # largest finite bf16
  near_max = (top.view(np.uint32) + rng.integers(-3 << 16, 1 << 16, n)
              ).astype(np.uint32).view(np.float32)
  specials = np.asarray([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0,
                         1e-45, -1e-45, 1.17549435e-38, 3.4028235e38,
                         -3.4028235e38, 1 + 2 ** -10, -(1 + 2 ** -10)],
                        np.float32)
  parts = [anybits, normals, exact, near_max]
  x = np.stack(parts, 1).reshape(-1)[:n]
  x[:specials.size] = specials
  return x


def _bits(rng, shape):
  b = rng.integers(0, 2 ** 32, shape, dtype=np.uint64).astype(np.uint32)
  flat = b.reshape(-1)
  flat[:4] = [0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000]  # extreme words
  return b


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS)
def test_result_is_a_bracketing_bf16_neighbour(seed):
  rng = np.random.default_rng(seed)
  x = _inputs(rng, 64 * 128).reshape(64, 128)
  bits = _bits(rng, x.shape)
  got = _round(x, bits)
  down, up, exact = _neighbours(x)
  nan = np.isnan(x)
  # NaN stays NaN (any payload)
  assert ((got[nan] & 0x7FFF) > 0x7F80).all()
  ok = ~nan
  assert (got[ok & exact] == down[ok & exact]).all(), "exact input changed"
  inexact = ok & ~exact
  bad = inexact & (got != down) & (got != up)
  assert not bad.any(), (x[bad][:5], got[bad][:5], down[bad][:5],
                         up[bad][:5])
  # and in value: |down| <= |x| <= |up|, on the same side of zero
  g = got.astype(np.uint32) << 16
  g = g.view(np.float32).astype(np.float64)
  with np.errstate(invalid="ignore"):  # signalling NaNs among the inputs
    xf = x.astype(np.float64)
  fin = inexact & np.isfinite(g)
  lo = np.minimum((down.astype(np.uint32) << 16).view(np.float32),
                  (up.astype(np.uint32) << 16).view(np.float32))
  hi = np.maximum((down.astype(np.uint32) << 16).view(np.float32),
                  (up.astype(np.uint32) << 16).view(np.float32))
  assert ((lo[fin] <= xf[fin]) & (xf[fin] <= hi[fin])).all()
  assert (np.signbit(g[inexact]) == np.signbit(xf[inexact])).all()


@settings(max_examples=5, deadline=None)
@given(seed=SEEDS)
def test_mean_over_random_words_converges_to_input(seed):
  """Each of 128 inputs rounded with 2048 independent random words: the
  fraction rounded away from zero is (dropped bits) / 2**16 and the mean is
  the input, within 6 standard deviations."""
  rng = np.random.default_rng(seed)
  n = 2048
  x = (rng.standard_normal(128) * 2.0 ** rng.integers(-60, 60, 128))
  x = x.astype(np.float32)
  # up with probability 1/8, 1/8, 0 (exact) and 2**-16 (the last f32 bit)
  x[:4] = [1 + 2 ** -10, -(1 + 2 ** -10), 3.0, 1 + 2 ** -23]
  xs = np.broadcast_to(x, (n, 128))
  bits = rng.integers(0, 2 ** 32, (n, 128), dtype=np.uint64).astype(np.uint32)
  got = _round(np.ascontiguousarray(xs), bits)
  down, up, exact = _neighbours(x)
  assert ((got == down) | (got == up)).all()
  p = (x.view(np.uint32) & 0xFFFF) / 2.0 ** 16  # probability of rounding up
  frac_up = (got == up).mean(axis=0)
  sigma_p = np.sqrt(p * (1 - p) / n)
  assert (np.abs(frac_up - p) <= 6 * sigma_p + 1e-12).all(), (
      np.abs(frac_up - p) / np.maximum(sigma_p, 1e-30)).max()
  values = (got.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
  ulp = np.abs((up.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
               - (down.astype(np.uint32) << 16).view(np.float32))
  err = np.abs(values.mean(axis=0) - x.astype(np.float64))
  assert (err <= 6 * ulp * sigma_p + 1e-12 * ulp).all()
