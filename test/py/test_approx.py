"""The vectorized f32 exp/log/tanh/logistic (rules/approx.py) over the whole
f32 range, special values included: within 2 ulp of the correctly rounded
result (float64 numpy as the reference).

Kernels run on XLA's threads, which flush denormals to zero (FTZ/DAZ), as
XLA's own code does: denormal inputs read as 0 and denormal results become
0, so the ulp bound is checked on normal inputs and results."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

import pallas_cpu

RNG = np.random.default_rng(0)
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1e-45]


def _inputs(name):
  if name == "exp":
    x = [RNG.uniform(-110, 90, 60000), RNG.standard_normal(20000) * 3,
         [88.72, 88.73, -87.3, -87.4, -103.9, -104.5]]
  elif name == "log":
    x = [np.abs(RNG.standard_normal(40000)) * 10.0 ** RNG.integers(-38, 38, 40000),
         RNG.uniform(0, 1e-37, 2000), [1.0, 2.0, -1.0, 3.4e38, 1e-45]]
  else:
    x = [RNG.uniform(-12, 12, 60000), RNG.uniform(-1, 1, 20000),
         [0.625, -0.625, 9.0, -9.0]]
  x = np.concatenate([np.asarray(a, np.float64) for a in x] + [SPECIAL])
  x = np.resize(x.astype(np.float32), (pl.cdiv(x.size, 1024) * 8, 128))
  return x


FUNCS = {"exp": (jnp.exp, np.exp), "log": (jnp.log, np.log),
         "tanh": (jnp.tanh, np.tanh),
         "logistic": (jax.nn.sigmoid, lambda v: 1 / (1 + np.exp(-v)))}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_ulp_error(name):
  jfn, nfn = FUNCS[name]
  x = _inputs("exp" if name == "logistic" else name)

  def kernel(x_ref, o_ref):
    o_ref[...] = jfn(x_ref[...])

  got = np.asarray(pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x))
  with np.errstate(all="ignore"):
    ref = nfn(x.astype(np.float64))
    ref32 = ref.astype(np.float32)
  tiny = np.finfo(np.float32).tiny
  normal = (np.abs(x) >= tiny) | (x == 0) | ~np.isfinite(x)
  got, ref, ref32 = got[normal], ref[normal], ref32[normal]
  flushed = np.abs(ref32) < tiny
  assert (np.abs(got[flushed]) < tiny).all()
  got, ref, ref32 = got[~flushed], ref[~flushed], ref32[~flushed]
  np.testing.assert_array_equal(np.isnan(got), np.isnan(ref32))
  finite = np.isfinite(ref32)
  np.testing.assert_array_equal(got[~finite & ~np.isnan(ref32)],
                                ref32[~finite & ~np.isnan(ref32)])
  err = np.abs(got[finite].astype(np.float64) - ref[finite])
  ulps = err / np.spacing(np.abs(ref32[finite])).astype(np.float64)
  # logistic composes exp, an add and a divide: one more rounding each.
  assert ulps.max() <= (3.0 if name == "logistic" else 2.0), ulps.max()
