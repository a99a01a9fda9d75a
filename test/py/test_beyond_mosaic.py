"""Kernels Mosaic rejects but interpret mode runs (issue #14, "coverage
beyond Mosaic's table"), compiled, against ``interpret=True``:

* the elementwise functions jnp binds as primitives of their own
  (``jnp.arcsin`` -> ``asin`` ...): libm through the math dialect, so within
  about 1 ulp of the true value (numpy's float64 / x87 longdouble functions
  are the reference), and within a few ulps of interpret mode, whose XLA
  expansions are the less accurate side (acos as 2 atan2(sqrt(1 - x^2),
  1 + x), sinh from exp...);
* ``cumsum``/``cumprod``/``cummax``/``cummin``/``cumlogsumexp`` along every
  axis, both directions;
* ``x ** n`` with an integer exponent array;
* ``lax.dynamic_slice``/``dynamic_update_slice`` of values at offsets read
  from SMEM or computed from ``program_id`` (XLA's clamping included).

float64 runs under ``jax.enable_x64``, as the other f64 tests do.  Each
family also has a property test (hypothesis over shapes, dtypes, axes and
values; a kernel is compiled per example, so a handful of examples each).
"""
import contextlib
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from conftest import assert_same, check_against_interpret, call

DTYPES = ["float32", "bfloat16", "float16", "float64"]


def _x64(dtype):
  return jax.enable_x64(True) if "64" in str(dtype) else contextlib.nullcontext()


# Property tests: few examples (each compiles a kernel and runs interpret
# mode), drawn the same on every run (conftest's "suite" profile).
PROPERTY = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
# Block shapes: rows, and lanes below, at and past one vreg row.
SHAPES_2D = st.tuples(st.integers(1, 9), st.sampled_from([1, 7, 128, 131]))


# -- transcendental functions ----------------------------------------------------
def _erfc(x):
  return np.vectorize(math.erfc, otypes=[np.float64])(x.astype(np.float64))


# name -> (function, reference on float64/longdouble, domain)
FUNCS = {
    "acos": (jnp.arccos, np.arccos, (-1, 1)),
    "asin": (jnp.arcsin, np.arcsin, (-1, 1)),
    "atan": (jnp.arctan, np.arctan, (-30, 30)),
    "acosh": (jnp.arccosh, np.arccosh, (1, 1000)),
    "asinh": (jnp.arcsinh, np.arcsinh, (-1000, 1000)),
    "atanh": (jnp.arctanh, np.arctanh, (-1, 1)),
    "sinh": (jnp.sinh, np.sinh, (-10, 10)),
    "cosh": (jnp.cosh, np.cosh, (-10, 10)),
    "cbrt": (jnp.cbrt, np.cbrt, (-1000, 1000)),
    "erfc": (lax.erfc, _erfc, (-3, 9)),
}

# Max ulps of the output dtype from the reference (f32, 16-bit, f64) and
# from interpret mode (f32, 16-bit, f64); worst seen over 20 seeds in the
# comments.  16-bit floats are computed in f32 and rounded once.  erfc's
# f64 reference is glibc's own erfc (numpy has none in longdouble), so it
# only checks against interpret mode there.
BOUNDS = {
    #          reference          interpret mode    worst (f32, f64)
    "acos":  ((1.0, 0.51, 1.0), (3, 1, 2)),      # 0.87 2, 0.51 1
    "asin":  ((1.0, 0.51, 1.0), (3, 1, 2)),      # 0.78 2, 0.51 1
    "atan":  ((1.0, 0.51, 1.0), (1, 1, 1)),      # 0.73 0, 0.50 0
    "acosh": ((1.5, 0.51, 1.5), (4, 2, 4)),      # 0.90 2, 1.02 2
    "asinh": ((1.5, 0.51, 1.5), (3, 1, 3)),      # 0.84 2, 0.88 1
    "atanh": ((2.0, 0.51, 2.0), (3, 2, 256)),    # 1.51 2, 1.48 128
    "sinh":  ((2.0, 0.51, 2.0), (12, 1, 24)),    # 1.52 8, 1.51 4
    "cosh":  ((1.5, 0.51, 1.5), (12, 1, 24)),    # 0.99 8, 0.99 2
    "cbrt":  ((1.0, 0.51, 3.0), (1, 1, 1)),      # 0.87 0, 2.53 0
    "erfc":  ((3.0, 0.51, None), (80, 1, 80)),   # 2.61 62, - 64
}


def _info(dtype):
  fi = ml_dtypes.finfo(np.dtype(dtype))
  return fi.nmant + 1, int(fi.minexp), float(fi.tiny)


def _ulps(got, ref, dtype):
  """|got - ref| in ulps of ``dtype`` at ``ref`` (NaN == NaN, inf == inf:
  0; an infinity against a finite value: inf)."""
  p, emin, tiny = _info(dtype)
  ref = np.asarray(ref)
  got = np.asarray(got, ref.dtype)
  with np.errstate(all="ignore"):
    e = np.floor(np.log2(np.abs(ref.astype(np.float64))))
    e = np.where(np.isfinite(e), np.maximum(e, emin), emin)
    ulp = np.ldexp(1.0, (e - p + 1).astype(int)).astype(ref.dtype)
    err = np.abs(got - ref) / ulp
  same = (got == ref) | (np.isnan(got) & np.isnan(ref))
  return np.where(same, 0.0, err).astype(np.float64)


def _inputs(dtype, seed):
  """Per function a 16x128 block of values of ``dtype`` in its domain."""
  rng = np.random.default_rng(seed)
  out = []
  for name, (_, _, (lo, hi)) in FUNCS.items():
    x = rng.uniform(lo, hi, (16, 128)).astype(np.dtype(dtype))
    out.append(np.where(np.abs(x.astype(np.float64)) < _info(dtype)[2], 1, x)
               .astype(np.dtype(dtype)))
  return out


def _all_functions(*refs):
  ins, outs = refs[:len(FUNCS)], refs[len(FUNCS):]
  for (fn, _, _), i, o in zip(FUNCS.values(), ins, outs):
    o[...] = fn(i[...])


def _run_all(dtype, xs, backend):
  out_shape = [jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)) for x in xs]
  outs = call(_all_functions, out_shape, *[jnp.asarray(x) for x in xs],
              backend=backend)
  return [np.asarray(o) for o in outs]


def measure(dtype, seed):
  """{name: (max ulps from the reference, max ulps from interpret mode)}."""
  col = {"float32": 0, "float64": 2}.get(dtype, 1)
  xs = _inputs(dtype, seed)
  with _x64(dtype):
    got = _run_all(dtype, xs, "cpu")
    want = _run_all(dtype, xs, "interpret")
  errors = {}
  for name, x, g, w in zip(FUNCS, xs, got, want):
    err_ref, err_interpret, _ = _errors(name, dtype, x, g, w)
    errors[name] = (float(err_ref.max()) if BOUNDS[name][0][col] else 0.0,
                    float(err_interpret.max()))
  return errors


def _errors(name, dtype, x, got, want):
  """Per element: ulps of ``got`` (compiled) from the reference, ulps of
  ``got`` from ``want`` (interpret mode), ulps of ``want`` from the
  reference."""
  wide = np.longdouble if dtype == "float64" else np.float64
  with np.errstate(all="ignore"):
    ref = np.asarray(FUNCS[name][1](x.astype(wide))).astype(wide)
  got, want = got.astype(wide), want.astype(wide)
  # Overflow (sinh/cosh in f16): a result of inf where the reference
  # rounds to it is exact.
  rounded = ref.astype(np.dtype(dtype)).astype(wide)
  over = ~np.isfinite(rounded.astype(np.float64))

  def from_ref(v):
    err = _ulps(v, ref, dtype)
    err[over & (v == rounded)] = 0
    return err
  return from_ref(got), _ulps(got, want, dtype), from_ref(want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transcendental_functions_within_ulps(dtype):
  col = {"float32": 0, "float64": 2}.get(dtype, 1)
  errors = measure(dtype, seed=DTYPES.index(dtype))
  over = {n: (e, (BOUNDS[n][0][col], BOUNDS[n][1][col]))
          for n, e in errors.items()
          if (BOUNDS[n][0][col] is not None and e[0] > BOUNDS[n][0][col])
          or e[1] > BOUNDS[n][1][col]}
  assert not over, f"{dtype}: (ulps from reference, from interpret), bounds: {over}"


SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0, -2.0, 0.5]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transcendental_special_values(dtype):
  """Zeros, infinities, NaN and domain edges give exactly C99's answer
  (numpy's), where it is one of those exactly representable values."""
  x = np.resize(np.asarray(SPECIAL, dtype), (8, 128))
  with _x64(dtype):
    got = _run_all(dtype, [x] * len(FUNCS), "cpu")
  bad = []
  for (name, (_, ref_fn, _)), g in zip(FUNCS.items(), got):
    with np.errstate(all="ignore"):
      want = np.asarray(ref_fn(x.astype(np.float64))).astype(dtype)
    exact = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1)
    for i in zip(*np.nonzero(exact[:1])):
      same = (np.isnan(g[i]) and np.isnan(want[i])) or (
          g[i] == want[i] and np.signbit(g[i]) == np.signbit(want[i]))
      if not same:
        bad.append((name, float(x[i]), float(g[i]), float(want[i])))
  assert not bad, f"(op, x, got, want): {bad}"


@PROPERTY
@given(data=st.data(), name=st.sampled_from(sorted(FUNCS)),
       dtype=st.sampled_from(DTYPES), shape=SHAPES_2D)
def test_transcendental_functions_property(data, name, dtype, shape):
  """Any block shape, values anywhere in the function's domain (its ends
  included): within the ulp bounds of the reference; and of interpret
  mode, except where interpret mode is the one further from the
  reference (its XLA expansions are the less accurate side)."""
  fn, _, (lo, hi) = FUNCS[name]
  col = {"float32": 0, "float64": 2}.get(dtype, 1)
  x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(
      lo, hi, allow_subnormal=False)), label="x").astype(np.dtype(dtype))
  # (no subnormal inputs, as in _inputs: they flush differently)
  x = np.where(np.abs(x.astype(np.float64)) < _info(dtype)[2], 1, x
               ).astype(np.dtype(dtype))

  def kernel(x_ref, o_ref):
    o_ref[...] = fn(x_ref[...])
  with _x64(dtype):
    out = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    got, want = (np.asarray(call(kernel, out, jnp.asarray(x), backend=b))
                 for b in ("cpu", "interpret"))
  err_ref, err_interpret, interpret_ref = _errors(name, dtype, x, got, want)
  bound_ref, bound_interpret = BOUNDS[name][0][col], BOUNDS[name][1][col]
  if bound_ref is not None:
    bad = err_ref > bound_ref
    assert not bad.any(), (name, dtype, x[bad][:4], got[bad][:4],
                           err_ref[bad][:4])
  bad = (err_interpret > bound_interpret) & ~(err_ref <= interpret_ref)
  assert not bad.any(), (name, dtype, x[bad][:4], got[bad][:4],
                         want[bad][:4])


# -- cumulative reductions ---------------------------------------------------
CUMULATIVE = {"cumsum": lax.cumsum, "cumprod": lax.cumprod,
              "cummax": lax.cummax, "cummin": lax.cummin,
              "cumlogsumexp": lax.cumlogsumexp}


def _cum_data(dtype, shape, seed=0):
  rng = np.random.default_rng(seed)
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.asarray(rng.integers(-3, 4, shape), dtype)
  x = rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)
  x.flat[:3] = [-0.0, np.nan if dtype == jnp.float32 else 1.0, 0.0]
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("name", sorted(CUMULATIVE))
def test_cumulative_reductions(name, axis, reverse):
  """Every cumulative reduction along each axis of a block, both ways, on
  a float block (with -0.0 and a NaN) and an integer one.  max/min and
  integer sums and products are exact; float sums, products and
  logsumexps are sequential here and a reduce-window tree in interpret
  mode: equal to rounding."""
  fn = CUMULATIVE[name]
  dtypes = [jnp.float32] if name == "cumlogsumexp" else [jnp.float32,
                                                          jnp.int32]
  for dtype in dtypes:
    x = _cum_data(dtype, (8, 128))
    exact = name in ("cummax", "cummin") or dtype == jnp.int32

    def kernel(x_ref, o_ref):
      o_ref[...] = fn(x_ref[...], axis=axis, reverse=reverse)
    got = check_against_interpret(kernel, x, x, exact=exact, rtol=1e-5,
                                  atol=1e-5)
    assert_same(got, fn(x, axis=axis, reverse=reverse), exact=exact,
                rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.uint8])
def test_cumsum_of_narrow_dtypes_and_a_3d_block(dtype):
  """Each step rounds to the operand's dtype (as XLA's reduce-window does);
  the axis may be a leading one of a 3-D block; fused with elementwise
  work on both sides."""
  x = _cum_data(jnp.int32 if dtype == jnp.uint8 else dtype,
                (4, 8, 128)).astype(dtype)

  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.cumsum(x_ref[...] * 2, axis=0) + 1
  check_against_interpret(kernel, x, x, exact=dtype == jnp.uint8,
                          rtol=2e-2, atol=2e-2)


def test_cumulative_reductions_in_float64():
  with jax.enable_x64(True):
    x = _cum_data(jnp.float64, (8, 128))

    def kernel(x_ref, o_ref):
      o_ref[...] = (jnp.cumsum(x_ref[...], axis=1) +
                    lax.cummax(x_ref[...], axis=0, reverse=True))
    check_against_interpret(kernel, x, x, exact=False, rtol=1e-12, atol=1e-12)


def _cumulative_bound(name, x, axis, reverse):
  """Per element: how far two evaluation orders of a float cumsum/cumprod
  may be apart (each is within (n - 1) eps of the sum of magnitudes, or
  relatively for a product, n the steps so far)."""
  eps = float(np.finfo(np.float32).eps)
  a = np.abs(np.asarray(x, np.float64))
  if reverse:
    a = np.flip(a, axis)
  steps = np.cumsum(np.ones_like(a), axis=axis)
  total = np.cumsum(a, axis) if name == "cumsum" else np.cumprod(a, axis)
  bound = 2 * steps * eps * total
  return np.flip(bound, axis) if reverse else bound


@PROPERTY
@given(data=st.data(), name=st.sampled_from(sorted(CUMULATIVE)),
       dtype=st.sampled_from(["float32", "int32"]), reverse=st.booleans(),
       shape=st.one_of(SHAPES_2D, st.tuples(st.integers(1, 4),
                                            st.integers(1, 9),
                                            st.sampled_from([1, 128]))))
def test_cumulative_reductions_property(data, name, dtype, reverse, shape):
  """Any axis of a 2-D or 3-D block, either direction, with zeros of both
  signs and NaNs among float values: max/min and integer sums and
  products (wrapping) exactly as interpret mode and lax; float sums and
  products within the bound of two summation orders; logsumexps to
  1e-5."""
  if name == "cumlogsumexp":
    dtype = "float32"
  axis = data.draw(st.integers(0, len(shape) - 1), label="axis")
  fn = CUMULATIVE[name]
  if dtype == "int32":
    elements = st.integers(-3, 3)
  else:
    elements = st.one_of(st.floats(-2, 2, width=32),
                         st.sampled_from([0.0, -0.0, np.nan]))
  x = jnp.asarray(data.draw(hnp.arrays(np.dtype(dtype), shape,
                                       elements=elements), label="x"))

  def kernel(x_ref, o_ref):
    o_ref[...] = fn(x_ref[...], axis=axis, reverse=reverse)
  got = call(kernel, x, x)
  want = call(kernel, x, x, backend="interpret")
  if dtype == "int32" or name in ("cummax", "cummin"):
    assert_same(got, want)
    assert_same(got, fn(x, axis=axis, reverse=reverse))
  elif name == "cumlogsumexp":
    assert_same(got, want, exact=False, rtol=1e-5, atol=1e-5)
  else:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert (np.isnan(got) == np.isnan(want)).all()
    far = np.abs(got - want) > _cumulative_bound(name, x, axis, reverse)
    assert not far.any(), (got[far][:4], want[far][:4])


# -- pow with an integer exponent array -----------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64",
                                   "int32"])
def test_pow_with_an_integer_exponent_array(dtype):
  """``x ** n`` for an int32 array ``n`` (negative exponents and 0 ** 0
  included): pow_p with an integer exponent, converted to the base's dtype
  (jax's _pow_lower), for a float base; an integer base is jnp's own
  square-and-multiply over lax ops."""
  rng = np.random.default_rng(1)
  n = rng.integers(-6, 7, (8, 128)).astype(np.int32)
  base = rng.uniform(-3, 3, (8, 128))
  if dtype == "int32":
    n = np.abs(n)
    base = np.round(base * 3)
  base[0, :4], n[0, :4] = [0, 0, -2, 2], [0, -1, 5, -3]
  if dtype == "int32":
    n[0, :4] = [0, 1, 5, 3]
  with _x64(dtype):
    x = jnp.asarray(base, dtype)
    ns = jnp.asarray(n)

    def kernel(x_ref, n_ref, o_ref):
      o_ref[...] = x_ref[...] ** n_ref[...]
    got = check_against_interpret(kernel, x, x, ns, exact=False, rtol=1e-6,
                                  atol=0)
    assert_same(got, x ** ns, exact=False, rtol=1e-6, atol=0)


@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(["float32", "bfloat16",
                                              "float16", "float64", "int32"]),
       shape=SHAPES_2D)
def test_pow_with_an_integer_exponent_array_property(data, dtype, shape):
  """Bases anywhere in [-4, 4] (zeros of both signs included), exponents
  in [-8, 8] (an integer base: [0, 8]): as interpret mode and jnp."""
  if dtype == "int32":
    bases, exponents = st.integers(-5, 5), st.integers(0, 8)
  else:
    bases, exponents = st.floats(-4, 4), st.integers(-8, 8)
  base = data.draw(hnp.arrays(np.float64, shape, elements=bases), label="x")
  n = data.draw(hnp.arrays(np.int32, shape, elements=exponents), label="n")
  with _x64(dtype):
    x, ns = jnp.asarray(base, dtype), jnp.asarray(n)

    def kernel(x_ref, n_ref, o_ref):
      o_ref[...] = x_ref[...] ** n_ref[...]
    got = check_against_interpret(kernel, x, x, ns, exact=False, rtol=1e-6,
                                  atol=0)
    assert_same(got, x ** ns, exact=False, rtol=1e-6, atol=0)


# -- dynamic_slice / dynamic_update_slice of values ------------------------------
SMEM = pl.BlockSpec(memory_space=pltpu.SMEM)
X = jnp.arange(16 * 256, dtype=jnp.float32).reshape(16, 256) / 7


@pytest.mark.parametrize("offset", [0, 5, 128, -3, 1000])
def test_dynamic_slice_of_a_value(offset):
  """A window at a lane offset read from SMEM, of a computed value; out of
  range starts clamp into the operand (negative ones wrap first, as jax
  does), as in interpret mode and jnp."""
  def kernel(s_ref, x_ref, o_ref):
    v = x_ref[...] * 3
    o_ref[...] = lax.dynamic_slice(v, (s_ref[0] // 100, s_ref[0]), (8, 128))
  s = jnp.array([offset], jnp.int32)
  got = check_against_interpret(
      kernel, jax.ShapeDtypeStruct((8, 128), jnp.float32), s, X,
      in_specs=[SMEM, pl.BlockSpec()])
  assert_same(got, lax.dynamic_slice(X * 3, (offset // 100, offset),
                                     (8, 128)))


def test_dynamic_slice_from_program_id_and_unsigned_indices():
  """Offsets from program_id (``jnp`` indexing of a value by a traced
  integer binds dynamic_slice too), and uint32 starts beyond INT32_MAX."""
  def kernel(x_ref, o_ref):
    i = pl.program_id(0)
    v = x_ref[...]
    o_ref[...] = (lax.dynamic_slice_in_dim(v, i * 64, 128, axis=1)
                  + v[i, :128][None])
  check_against_interpret(
      kernel, jax.ShapeDtypeStruct((16, 128), jnp.float32), X, grid=(3,),
      in_specs=[pl.BlockSpec((16, 256), lambda i: (0, 0))],
      out_specs=pl.BlockSpec((16, 128), lambda i: (0, 0)))

  def unsigned(s_ref, x_ref, o_ref):
    o_ref[...] = lax.dynamic_slice(x_ref[...], (s_ref[0], s_ref[1]), (8, 128))
  check_against_interpret(
      unsigned, jax.ShapeDtypeStruct((8, 128), jnp.float32),
      jnp.array([2 ** 31, 4_000_000_000], jnp.uint32), X,
      in_specs=[SMEM, pl.BlockSpec()])


@pytest.mark.parametrize("offset", [0, 77, 200])
def test_dynamic_update_slice_of_a_value(offset):
  def kernel(s_ref, x_ref, o_ref):
    v = x_ref[...] * 2
    upd = jnp.full((3, 64), -1.0, jnp.float32) * s_ref[0]
    o_ref[...] = lax.dynamic_update_slice(v, upd, (s_ref[0] // 20, s_ref[0]))
  s = jnp.array([offset], jnp.int32)
  got = check_against_interpret(kernel, X, s, X,
                                in_specs=[SMEM, pl.BlockSpec()])
  want = lax.dynamic_update_slice(X * 2, jnp.full((3, 64), -1.0 * offset),
                                  (offset // 20, offset))
  assert_same(got, want)


@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(["float32", "bfloat16",
                                              "int32"]),
       shape=st.tuples(st.integers(1, 12), st.integers(1, 140)))
def test_dynamic_slicing_of_a_value_property(data, dtype, shape):
  """Windows and updates of any size within the operand at starts read
  from SMEM -- in range, negative, far past the end (clamped as XLA does)
  -- several starts per compiled kernel: exactly as interpret mode and
  lax."""
  size = tuple(data.draw(st.integers(1, n), label="size") for n in shape)
  upd_size = tuple(data.draw(st.integers(1, n), label="update size")
                   for n in shape)
  starts = data.draw(st.lists(st.tuples(st.integers(-300, 300),
                                        st.integers(-300, 300)),
                              min_size=1, max_size=3), label="starts")
  x = jnp.asarray(np.arange(np.prod(shape)).reshape(shape) % 251 - 125,
                  dtype)
  upd = jnp.asarray(-np.arange(np.prod(upd_size)).reshape(upd_size) % 7,
                    dtype)

  def kernel(s_ref, x_ref, u_ref, o_ref, p_ref):
    v = x_ref[...] * 2
    o_ref[...] = lax.dynamic_slice(v, (s_ref[0], s_ref[1]), size)
    p_ref[...] = lax.dynamic_update_slice(v, u_ref[...] + 1,
                                          (s_ref[1], s_ref[0]))
  outs = (jax.ShapeDtypeStruct(size, x.dtype), x)
  for s in starts:
    s = jnp.asarray(s, jnp.int32)
    sliced, updated = check_against_interpret(
        kernel, outs, s, x, upd, in_specs=[SMEM, pl.BlockSpec(),
                                           pl.BlockSpec()])
    assert_same(sliced, lax.dynamic_slice(x * 2, (s[0], s[1]), size))
    assert_same(updated, lax.dynamic_update_slice(x * 2, upd + 1,
                                                  (s[1], s[0])))


# -- python -m pallas_cpu coverage ------------------------------------------------
def test_coverage_command_lists_what_we_lower_beyond_mosaic(capsys):
  """The report counts Mosaic's TensorCore table, then lists by rule family
  every primitive we lower beyond it -- each registered here and absent
  from Mosaic's TensorCore table."""
  from jax._src.pallas.mosaic import lowering as mosaic

  from pallas_cpu import __main__ as cli
  from pallas_cpu.lowering import registry
  assert cli.main(["coverage"]) == 0
  out = capsys.readouterr().out
  head, beyond = out.split("\nBeyond Mosaic's table: ")
  assert head.startswith("Mosaic TensorCore primitives lowered: ")
  listed = {}
  for line in beyond.splitlines()[1:]:
    family, names = line.split(":", 1)
    listed[family.strip()] = names.strip().split(", ")
  assert beyond.startswith(f"{sum(map(len, listed.values()))} more")
  assert {"acos", "asin", "atan", "acosh", "asinh", "atanh", "sinh", "cosh",
          "cbrt", "erfc"} <= set(listed["elementwise"])
  assert {"cumsum", "cumprod", "cummax", "cummin",
          "cumlogsumexp"} <= set(listed["reductions"])
  assert listed["dynamic_slicing"] == ["dynamic_slice", "dynamic_update_slice"]
  ours = {p.name for p in registry.registered()}
  # The TensorCore table (SparseCore's, filled once its module is
  # imported, has rev, which the TensorCore one lacks).
  tc = next(iter(mosaic.lowering_rules))  # as the command picks it
  theirs = {p.name for p in mosaic.lowering_rules[tc]}
  for names in listed.values():
    assert set(names) <= ours - theirs


if __name__ == "__main__":  # the measured maxima over many seeds
  import sys
  for dt in DTYPES:
    worst = {}
    for s in range(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
      for n, (a, b) in measure(dt, s).items():
        wa, wb = worst.get(n, (0, 0))
        worst[n] = (max(wa, a), max(wb, b))
    print(dt, {n: (round(a, 2), round(b, 2)) for n, (a, b) in worst.items()})
