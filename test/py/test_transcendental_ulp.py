"""Every transcendental / math primitive pallas_cpu lowers, in every float
dtype, against a high-precision numpy reference: the error in ulps of the
output dtype stays within the bound of ``ULP_BOUNDS`` (op, dtype), and
special values (+-0, +-inf, NaN, domain edges) give exactly C99's answer.

References (numpy only, no mpmath): float64 for f32/bf16/f16 (its own
error is < 2**-20 of their ulps); for f64, ``np.longdouble`` (x87 80-bit,
64-bit significand: 11 bits to spare).  erf is a positive-term series (in
longdouble within 0.9 f64 ulp of glibc's erf over [-6, 6]); erf_inv is
Newton on it.

The ulp of a reference value r is 2**(max(floor(log2 |r|), emin) - p + 1)
(p: the dtype's significand bits), so a result that rounds up to the next
power of two is not measured with the coarser ulp above it.

Kernels run on XLA's threads, which flush denormals to zero (FTZ/DAZ), as
XLA's own code does: inputs are normal and results whose reference is below
the dtype's smallest normal are only required to be that small.

16-bit floats are computed in f32 and rounded once (the ``_float_unary``
rule), so their bound is a correctly rounded 0.5 ulp plus the f32 error
scaled down by 2**16 (bf16) or 2**13 (f16): 0.51 everywhere.

Each dtype is one kernel with every op as one output (one compile); the
hypothesis examples draw fresh inputs for the same kernel."""
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import pallas_cpu

ROWS = 16                     # inputs per op per example: ROWS x 128
DTYPES = ["float32", "bfloat16", "float16", "float64"]

# Max error in ulps of the output dtype, per (op, dtype), over the domains
# of ``_domain`` (measured over 30-60 seeds; the worst seen is in the comments).
# f32: exp/log are rules/approx.py's vectorized polynomials
# (test_approx.py checks them over the whole range); tanh is XLA's rational
# approximation there, bit for bit jnp.tanh's: as XLA's, max 4.90 ulp over
# all 2**32 inputs (at x = 5.126039); logistic adds an add
# and a divide on that exp; rsqrt is 1/sqrt (two roundings); atan2 is
# glibc's atan2f (not correctly rounded: 1.34 seen); the rest is libm.
# erf_inv is Mosaic's and XLA's polynomial (Giles; f64: Mosaic's
# double-precision one, lowered from jax's pallas/utils.py): it computes
# w = -log1p(-x*x), and x*x is rounded, so 1 - x*x loses its low bits as
# |x| -> 1: tens of ulps in f32 and a relative 1.4e-5 (6e10 ulps) in f64
# next to +-1, the same as XLA's (jnp) within 2 (f32) / 21 (f64) ulps.
# 16-bit floats are computed in f32 and rounded once: correctly rounded but
# for double rounding, < 0.5 + 2**-13 ulp (sqrt: exactly 0.5, f32 has more
# than 2p+2 bits).  f64 is glibc throughout (tanh: 2 ulp, as glibc lists).
# exp2 is a true 2**x (Mosaic lowers it to math.exp2); jnp and interpret
# mode compute exp(log(2) * x) with the product rounded to the input dtype
# (jax's generic exp2 lowering), so they are not references here: in bf16
# they are off by up to 2.8 ulp on a standard-normal block (a quarter of its
# results differ from the correctly rounded ones) and 12 ulp for |x| ~ 10.
ULP_BOUNDS = {
    #  op             f32   bf16  f16   f64            worst seen (f32, f64)
    "exp":          (2.0, 0.51, 0.51, 1.0),        # 0.97, 0.50
    "exp2":         (1.0, 0.51, 0.51, 1.0),        # 0.50, 0.51
    "log":          (2.0, 0.51, 0.51, 1.0),        # 0.70, 0.50
    "log1p":        (1.0, 0.51, 0.51, 1.0),        # 0.79, 0.78
    "expm1":        (1.0, 0.51, 0.51, 1.0),        # 0.75, 0.74
    "tanh":         (5.0, 0.51, 0.51, 2.5),        # 4.56, 2.04
    "logistic":     (3.0, 0.51, 0.51, 2.5),        # 2.35, 2.08
    "sin":          (1.0, 0.51, 0.51, 1.0),        # 0.56, 0.52
    "cos":          (1.0, 0.51, 0.51, 1.0),        # 0.56, 0.51
    "tan":          (1.0, 0.51, 0.51, 1.0),        # 0.86, 0.53
    "erf":          (1.0, 0.51, 0.51, 1.5),        # 0.77, 0.91
    "erf_inv":      (6.0, 0.51, 0.51, 6.0),        # 4.50, 4.43 (|x| <= 0.99)
    "erf_inv_tail": (80.0, 0.51, 0.51, 1e11),      # 64.7, 6.1e10 (|x| > 0.99)
    "pow":          (1.0, 0.51, 0.51, 1.0),        # 0.71, 0.50
    "atan2":        (1.5, 0.51, 0.51, 1.0),        # 1.34, 0.52
    "sqrt":         (0.5, 0.5, 0.5, 0.5),          # 0.50, 0.50
    "rsqrt":        (1.5, 0.51, 0.51, 1.5),        # 1.46, 1.46
}


def _erf(x):
  """erf in the precision of x (float64 or longdouble), from the series
  erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)),
  whose terms are all positive (no cancellation); |x| < 6 needs < 150."""
  x = np.asarray(x)
  t = x.dtype.type
  a = np.minimum(np.abs(x), t(6))
  term, total, a2 = a, a, 2 * a * a
  for n in range(1, 150):
    term = term * a2 / t(2 * n + 1)
    total = total + term
  sqrt_pi = np.sqrt(4 * np.arctan(t(1)))
  with np.errstate(all="ignore"):
    r = 2 / sqrt_pi * np.exp(-a * a) * total
  r = np.where(np.abs(x) >= 6, t(1), np.minimum(r, t(1)))
  return np.where(np.isnan(x), x, np.copysign(r, x))


def _erf_inv(x):
  """Newton on ``_erf`` in the precision of x, from Winitzki's closed form
  (relative error < 2e-3): 6 steps are more than enough."""
  x = np.asarray(x)
  t = x.dtype.type
  pi = 4 * np.arctan(t(1))
  with np.errstate(all="ignore"):
    a = t(0.147)
    l = np.log((1 - x) * (1 + x))
    c = 2 / (pi * a) + l / 2
    y = np.copysign(np.sqrt(np.sqrt(c * c - l / a) - c), x)
    for _ in range(6):
      y = y - (_erf(y) - x) / (2 / np.sqrt(pi) * np.exp(-y * y))
  y = np.where(np.abs(x) == 1, np.copysign(t(np.inf), x), y)
  return np.where(np.abs(x) > 1, t(np.nan), y)


def _logistic(x):
  return 1 / (1 + np.exp(-x))


# op -> (lax function, reference on float64/longdouble arrays, arity)
OPS = {
    "exp": (lax.exp, np.exp, 1),
    "exp2": (lax.exp2, np.exp2, 1),
    "log": (lax.log, np.log, 1),
    "log1p": (lax.log1p, np.log1p, 1),
    "expm1": (lax.expm1, np.expm1, 1),
    "tanh": (lax.tanh, np.tanh, 1),
    "logistic": (lax.logistic, _logistic, 1),
    "sin": (lax.sin, np.sin, 1),
    "cos": (lax.cos, np.cos, 1),
    "tan": (lax.tan, np.tan, 1),
    "erf": (lax.erf, _erf, 1),
    "erf_inv": (lax.erf_inv, _erf_inv, 1),
    "erf_inv_tail": (lax.erf_inv, _erf_inv, 1),
    "pow": (lax.pow, np.power, 2),
    "atan2": (lax.atan2, np.arctan2, 2),
    "sqrt": (lax.sqrt, np.sqrt, 1),
    "rsqrt": (lax.rsqrt, lambda v: 1 / np.sqrt(v), 1),
}


def _ops(dtype):
  col = DTYPES.index(dtype)
  return [n for n in OPS if ULP_BOUNDS[n][col] is not None]


def _info(dtype):
  fi = ml_dtypes.finfo(np.dtype(dtype))
  return fi.nmant + 1, int(fi.minexp), float(fi.tiny), float(fi.max)


def _domain(rng, name, dtype, n):
  """Normal inputs of ``dtype`` over the op's interesting range (as float64
  arrays of exactly representable values; the second one for binary ops)."""
  p, emin, tiny, big = _info(dtype)
  emax = math.log2(big)
  lmax, lmin = math.log(big), math.log(tiny)
  u = lambda a, b, k=n: rng.uniform(a, b, k)
  signs = lambda k=n: rng.choice([-1.0, 1.0], k)
  small = lambda k=n: signs(k) * 2.0 ** u(max(emin + 1, -40), -1, k)
  thirds = n // 3
  rest = n - 2 * thirds

  def mix(*parts):
    return np.concatenate(parts)[:n]

  if name == "exp":
    x = mix(u(lmin + 0.5, lmax - 0.01), u(-4, 4), small())
  elif name == "exp2":
    x = mix(u(emin + 0.5, emax - 0.01), u(-4, 4), small())
  elif name in ("log", "sqrt", "rsqrt"):
    x = mix(2.0 ** u(emin, emax), u(0.5, 2), np.abs(small()))
  elif name == "log1p":
    x = mix(u(-0.999, 1), small(), 2.0 ** u(-1, min(emax, 100)))
  elif name == "expm1":
    x = mix(u(max(lmin, -60), lmax - 0.01), u(-1, 1), small())
  elif name == "tanh":
    x = mix(u(-10, 10), u(-1, 1), small())
  elif name == "logistic":
    x = mix(u(max(-lmax + 0.5, -80), min(lmax, 40)), u(-4, 4), small())
  elif name in ("sin", "cos", "tan"):
    x = mix(u(-10, 10), signs() * 2.0 ** u(3, 12), small())
  elif name == "erf":
    x = mix(u(-4, 4), u(-1, 1), small())
  elif name == "erf_inv":
    x = mix(u(-0.99, 0.99), u(-0.5, 0.5), small())
  elif name == "erf_inv_tail":
    x = signs() * (1 - 2.0 ** u(-p + 1, math.log2(0.01)))
  elif name == "pow":
    b = 2.0 ** u(-8, 8)
    # exponents keep |y * log2(b)| (the result's exponent) inside the range
    y = u(-1, 1) * min(emax - 1, -emin - 1) / np.abs(np.log2(b))
    y = np.where(rng.random(n) < 0.2, np.round(y), y)
    b = np.where(rng.random(n) < 0.1, -b, b)  # negative base: integer y
    y = np.where(b < 0, np.round(y), y)
    return _exact(b, dtype), _exact(y, dtype)
  elif name == "atan2":
    a = signs() * 2.0 ** u(-20, 20)
    b = signs() * 2.0 ** u(-20, 20)
    return _exact(a, dtype), _exact(b, dtype)
  else:
    raise AssertionError(name)
  return (_exact(x, dtype),)


def _exact(x, dtype):
  """x rounded to dtype, denormals and zeros replaced by 1 (normal inputs)."""
  p, emin, tiny, big = _info(dtype)
  with np.errstate(over="ignore"):
    x = np.asarray(x, np.float64).astype(np.dtype(dtype)).astype(np.float64)
  return np.where((np.abs(x) < tiny) | ~np.isfinite(x), 1.0, x)


def _reference(name, args, dtype):
  ref_fn = OPS[name][1]
  wide = (np.longdouble if dtype == "float64" or name == "erf_inv_tail"
          else np.float64)
  with np.errstate(all="ignore"):
    return ref_fn(*[np.asarray(a, wide) for a in args])


_KERNELS = {}


def _run(dtype, names, inputs):
  """One kernel computing every op of ``names`` on its inputs."""
  key = (dtype, tuple(names), tuple(x.shape for x in inputs))
  if key not in _KERNELS:
    arities = [OPS[n][2] for n in names]
    firsts = np.cumsum([0] + arities[:-1])

    def kernel(*refs):
      ins, outs = refs[:sum(arities)], refs[sum(arities):]
      k = 0
      for n, a, o in zip(names, arities, outs):
        o[...] = OPS[n][0](*[r[...] for r in ins[k:k + a]])
        k += a
    out_shape = [jax.ShapeDtypeStruct(inputs[i].shape, jnp.dtype(dtype))
                 for i in firsts]
    _KERNELS[key] = jax.jit(pallas_cpu.pallas_call(kernel,
                                                   out_shape=out_shape))
  outs = _KERNELS[key](*[jnp.asarray(x, jnp.dtype(dtype)) for x in inputs])
  return [np.asarray(o).astype(np.float64) for o in outs]


def _ulp(ref, dtype):
  p, emin, tiny, big = _info(dtype)
  with np.errstate(all="ignore"):
    e = np.floor(np.log2(np.abs(ref.astype(np.float64))))
  e = np.where(np.isfinite(e), np.maximum(e, emin), emin)
  return np.ldexp(1.0, (e - p + 1).astype(int))


def measure(dtype, seed, names=None):
  """{op: max ulp error} over one batch of random inputs."""
  rng = np.random.default_rng(seed)
  names = names or _ops(dtype)
  n = ROWS * 128
  return measure_on(dtype, names,
                    [_domain(rng, name, dtype, n) for name in names])


def measure_on(dtype, names, args):
  """{op: max ulp error} of each op on its args (1-D float64 arrays of
  normal values of ``dtype``), and "op@": (args, got, reference) of the
  worst one when over the bound; asserts NaN where the reference is NaN,
  +-inf where it overflows, and at most the smallest normal where the
  reference is below it (FTZ)."""
  flat = [a.reshape(-1, 128) for arg in args for a in arg]
  got = _run(dtype, names, flat)
  p, emin, tiny, big = _info(dtype)
  errors = {}
  for name, arg, g in zip(names, args, got):
    g = g.reshape(-1)
    ref = _reference(name, arg, dtype)
    ref64 = ref.astype(np.float64)
    ctx = f"{name} {dtype}"
    nan = np.isnan(ref64)
    np.testing.assert_array_equal(np.isnan(g), nan, err_msg=ctx)
    ulp = _ulp(ref, dtype)
    with np.errstate(over="ignore"):
      over = np.abs(ref64) >= big + ulp / 2        # rounds to +-inf
    np.testing.assert_array_equal(g[over], np.sign(ref64[over]) * np.inf,
                                  err_msg=ctx)
    flushed = np.abs(ref64) < tiny                 # FTZ: anything that small
    assert (np.abs(g[flushed]) <= tiny).all(), ctx
    ok = ~nan & ~over & ~flushed
    with np.errstate(all="ignore"):
      err = np.abs((g[ok] - ref[ok]) / ulp[ok]).astype(np.float64)
    errors[name] = float(err.max()) if err.size else 0.0
    if err.size and errors[name] > ULP_BOUNDS[name][DTYPES.index(dtype)]:
      i = int(np.argmax(err))
      bad = [a[ok][i] for a in arg]
      errors[name + "@"] = (bad, float(g[ok][i]), float(ref64[ok][i]))
  return errors


def _check(dtype, seed=None, errors=None):
  col = DTYPES.index(dtype)
  errors = errors or measure(dtype, seed)
  over = {n: (e, ULP_BOUNDS[n][col], errors.get(n + "@"))
          for n, e in errors.items()
          if not n.endswith("@") and e > ULP_BOUNDS[n][col]}
  assert not over, f"{dtype}: (max ulps, bound, (args, got, ref)) {over}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_ulp_error_within_bounds(dtype, seed):
  _check(dtype, seed)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_ulp_error_within_bounds_f64(seed):
  with jax.enable_x64(True):
    _check("float64", seed)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_unary_ops_exhaustively(dtype):
  """Every normal value of a 16-bit float through every unary op (erf_inv:
  the ones in (-1, 1)): the same bounds as the random inputs."""
  p, emin, tiny, big = _info(dtype)
  every = np.arange(2 ** 16, dtype=np.uint16).view(np.dtype(dtype))
  with np.errstate(invalid="ignore"):  # signalling NaNs
    every = every.astype(np.float64)
  every = every[np.isfinite(every) & (np.abs(every) >= tiny)]
  every = np.concatenate([every, np.ones(-every.size % 128)])
  inside = every[np.abs(every) < 1]
  inside = np.concatenate([inside, np.zeros(-inside.size % 128)])
  names = [n for n in _ops(dtype) if OPS[n][2] == 1 and n != "erf_inv_tail"]
  args = [(inside if n == "erf_inv" else every,) for n in names]
  _check(dtype, errors=measure_on(dtype, names, args))


# -- special values: exactly C99's (numpy's) result -----------------------------
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0, -2.0, 0.5]


def _special_args(name):
  if OPS[name][2] == 1:
    extra = {"erf_inv": [1.0, -1.0, 1.5, -1.5], "log": [-1.0],
             "log1p": [-1.0, -2.0], "sqrt": [-1.0], "rsqrt": [-1.0]}
    x = SPECIAL + extra.get(name, [])
    return (np.asarray(x),)
  a, b = np.meshgrid(SPECIAL, SPECIAL)
  return a.reshape(-1), b.reshape(-1)


def _pad(x, n):
  return np.concatenate([x, np.full(n - x.size, x[0])])


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
  import contextlib
  with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
    names = [n for n in _ops(dtype) if n != "erf_inv_tail"]
    args = [_special_args(n) for n in names]
    flat = [_pad(a, 128).reshape(1, 128) for arg in args for a in arg]
    got = _run(dtype, names, flat)
  bad = []
  for name, arg, g in zip(names, args, got):
    g = g.reshape(-1)[:arg[0].size]
    ref = _reference(name, arg, dtype).astype(np.float64)
    want = ref.astype(np.dtype(dtype)).astype(np.float64)
    # only the values C99 defines exactly: infinities, zeros, NaN, +-1
    exact = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1)
    for i in np.flatnonzero(exact):
      same = (np.isnan(g[i]) and np.isnan(want[i])) or (
          g[i] == want[i] and np.signbit(g[i]) == np.signbit(want[i]))
      if not same:
        bad.append((name, *[float(a[i]) for a in arg], float(g[i]),
                    float(want[i])))
  assert not bad, f"{dtype}: (op, args..., got, want) {bad}"


if __name__ == "__main__":  # the measured maxima over many seeds
  import sys
  seeds = range(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
  for dt in DTYPES:
    with jax.enable_x64(dt == "float64"):
      worst = {}
      for s in seeds:
        for n, e in measure(dt, s).items():
          if n.endswith("@"):
            continue
          worst[n] = max(worst.get(n, 0), e)
    print(dt, {n: round(e, 3) for n, e in worst.items()})
