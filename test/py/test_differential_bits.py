"""Hypothesis-generated bit-level kernels vs interpret=True, bit for bit:
shifts (amounts negative and past the width: XLA's semantics), and/or/xor/
not, population_count, clz, bitcast_convert_type, pltpu.bitcast, integer
div/rem (by zero, INT_MIN / -1), nextafter and convert_element_type between
every int and float type (out-of-range float -> int included), over odd
and size-1 shapes and 0-2-D grids of blocks (strategies.run_blocked).
64-bit types run in their own test, under ``jax.enable_x64``.
pack/unpack_elementwise have no interpret-mode lowering: numpy reference."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from conftest import assert_same, call
from strategies import (GRIDS, assert_same_bits, pack_case, random_array,
                        random_bits, run_blocked, shapes)

INTS = [jnp.int8, jnp.int16, jnp.int32, jnp.uint8, jnp.uint16, jnp.uint32]
FLOATS = [jnp.float32, jnp.bfloat16, jnp.float16]
SEEDS = st.integers(0, 2**31 - 1)
SHAPES = shapes(1, 3, max_elems=2048)
EXAMPLES = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


def _rng(seed):
  return np.random.default_rng(seed)


def _shift_amounts(rng, shape, dtype):
  """Amounts around the width: negative (huge when unsigned), in range,
  equal to and past the width."""
  bits = np.dtype(dtype).itemsize * 8
  s = rng.integers(-bits - 2, 2 * bits + 3, shape)
  return jnp.asarray(s.astype(np.int64).astype(dtype))


def _with_specials(rng, x, values, frac=0.3):
  """``x`` with a fraction of its elements replaced by ``values``."""
  x = np.asarray(x).copy()
  pick = rng.random(x.shape) < frac
  x[pick] = rng.choice(np.asarray(values, x.dtype), int(pick.sum()))
  return jnp.asarray(x)


@EXAMPLES
@given(SHAPES, st.sampled_from(INTS), GRIDS, SEEDS, st.integers(-3, 70))
def test_shifts(shape, dtype, grid, seed, static):
  """Each shift by an array of amounts and by one constant amount."""
  rng = _rng(seed)
  x, s = random_array(rng, shape, dtype), _shift_amounts(rng, shape, dtype)
  k = np.asarray(static).astype(np.int64).astype(dtype)   # wraps if unsigned

  def f(a, b):
    c = jnp.asarray(k, a.dtype)
    return (jax.lax.shift_left(a, b), jax.lax.shift_right_logical(a, b),
            jax.lax.shift_right_arithmetic(a, b), jax.lax.shift_left(a, c),
            jax.lax.shift_right_logical(a, c),
            jax.lax.shift_right_arithmetic(a, c))
  run_blocked(f, [x, s], grid)


@EXAMPLES
@given(SHAPES, st.sampled_from([*INTS, jnp.bool_]), GRIDS, SEEDS)
def test_and_or_xor_not(shape, dtype, grid, seed):
  rng = _rng(seed)
  x, y = random_array(rng, shape, dtype), random_array(rng, shape, dtype)
  run_blocked(lambda a, b: (a & b, a | b, a ^ b, ~a, ~(a ^ b) | (a & ~b)),
              [x, y], grid)


@EXAMPLES
@given(SHAPES, st.sampled_from(INTS), GRIDS, SEEDS)
def test_population_count_and_clz(shape, dtype, grid, seed):
  x = random_array(_rng(seed), shape, dtype)
  run_blocked(lambda a: (jax.lax.population_count(a), jax.lax.clz(a)), [x],
              grid)


@EXAMPLES
@given(SHAPES, st.sampled_from(INTS), GRIDS, SEEDS)
def test_div_rem(shape, dtype, grid, seed):
  """XLA's semantics: x / 0 == -1 (all ones), x % 0 == x, INT_MIN / -1 ==
  INT_MIN and INT_MIN % -1 == 0."""
  rng = _rng(seed)
  info = np.iinfo(dtype)
  specials = [0, 1, 2, info.max, info.min] + ([-1, -2] if info.min else [])
  x = _with_specials(rng, random_array(rng, shape, dtype), specials)
  y = _with_specials(rng, random_array(rng, shape, dtype), specials, 0.5)
  run_blocked(lambda a, b: (jax.lax.div(a, b), jax.lax.rem(a, b)), [x, y],
              grid)


SAME_WIDTH = [[jnp.int8, jnp.uint8],
              [jnp.int16, jnp.uint16, jnp.bfloat16, jnp.float16],
              [jnp.int32, jnp.uint32, jnp.float32]]
BITCASTABLE = st.sampled_from([d for g in SAME_WIDTH for d in g])
BITCAST_PAIRS = st.tuples(BITCASTABLE, BITCASTABLE)


def _bitcast_check(dst):
  """Bit-exact, except that XLA's CPU backend (behind interpret mode)
  canonicalizes the NaNs of 16-bit floats a bitcast produces (it moves them
  through f32), where pallas_cpu keeps every bit: there NaN must match NaN,
  whatever the payload."""
  if np.dtype(dst).itemsize == 2 and jnp.issubdtype(dst, jnp.floating):
    return functools.partial(assert_same_bits, nan_payloads=False)
  return assert_same_bits


@EXAMPLES
@given(SHAPES, BITCAST_PAIRS, GRIDS, SEEDS)
def test_bitcast_convert_type(shape, pair, grid, seed):
  """Same width, wider to narrower (a trailing dimension of parts) and
  narrower to wider (the trailing dimension joined)."""
  src, dst = pair
  ratio = np.dtype(src).itemsize / np.dtype(dst).itemsize
  if ratio < 1:  # the operand's last dimension holds the parts
    shape = (*shape, int(1 / ratio))
  x = random_bits(_rng(seed), shape, src)
  run_blocked(lambda a: jax.lax.bitcast_convert_type(a, dst), [x], grid,
              check=_bitcast_check(dst))


@EXAMPLES
@given(shapes(2, 3, max_elems=2048), BITCAST_PAIRS, GRIDS, SEEDS)
def test_tpu_bitcast(shape, pair, grid, seed):
  """The second-minor dimension scales by the width ratio."""
  src, dst = pair
  sb, db = np.dtype(src).itemsize, np.dtype(dst).itemsize
  # rows: a multiple of both widths' ratio
  shape = (*shape[:-2], shape[-2] * max(1, db // sb), shape[-1])
  x = random_bits(_rng(seed), shape, src)
  run_blocked(lambda a: pltpu.bitcast(a, dst), [x], grid,
              check=_bitcast_check(dst))


def _float_data(rng, shape, dtype):
  """Either random bit patterns (denormals, NaN payloads) or normal values
  at a random scale (1 to 1e6, so some overflow narrow types), with zeros,
  infinities, NaN, ties of narrower types and their denormals planted."""
  if rng.random() < 0.3:
    return random_bits(rng, shape, dtype)
  scale = 10.0 ** rng.integers(0, 7)
  x = random_array(rng, shape, jnp.float32) * scale
  return _with_specials(rng, x, [0.0, -0.0, np.inf, -np.inf, np.nan, 0.5,
                                 -2.5, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11,
                                 3e-5, -6e-8, 1e-40, 3e38, -3e38,
                                 2.0**31, -2.0**31 - 1]).astype(dtype)


@EXAMPLES
@given(SHAPES, st.sampled_from(FLOATS), GRIDS, SEEDS)
def test_nextafter(shape, dtype, grid, seed):
  rng = _rng(seed)
  x = _float_data(rng, shape, dtype)
  # equal operands, a neighbour, and the other operand's sign and scale
  y = np.where(rng.random(shape) < 0.2, np.asarray(x),
               np.asarray(_float_data(rng, shape, dtype)))
  run_blocked(jax.lax.nextafter, [x, jnp.asarray(y)], grid)


CONVERTIBLE = [*INTS, *FLOATS, jnp.bool_]


@settings(max_examples=16, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(SHAPES, st.sampled_from(CONVERTIBLE), st.sampled_from(CONVERTIBLE),
       GRIDS, SEEDS)
def test_convert_element_type(shape, src, dst, grid, seed):
  """Every pair: integers wrap, float -> int saturates (NaN -> 0), floats
  round to nearest even (on the bits: denormal inputs kept, NaNs quiet)."""
  rng = _rng(seed)
  if jnp.issubdtype(src, jnp.floating):
    x = _float_data(rng, shape, src)
  else:
    x = random_array(rng, shape, src)
  run_blocked(lambda a: jax.lax.convert_element_type(a, dst), [x], grid)


X64_INTS = [jnp.int64, jnp.uint64]


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(shapes(1, 2, max_elems=1024), st.sampled_from(X64_INTS),
       st.sampled_from([jnp.int8, jnp.int32, jnp.uint16, jnp.float32,
                        jnp.float64, jnp.bfloat16]), GRIDS, SEEDS)
def test_64_bit(shape, dtype, other, grid, seed):
  """int64/uint64/float64: shifts, logic, counts, div/rem, conversions
  both ways, bitcasts (to float64 and split into halves) and nextafter."""
  with jax.enable_x64(True):
    rng = _rng(seed)
    info = np.iinfo(dtype)
    specials = [0, 1, info.max, info.min] + ([-1] if info.min else [])
    x = _with_specials(rng, random_array(rng, shape, dtype), specials)
    y = _with_specials(rng, random_array(rng, shape, dtype), specials, 0.5)
    s = _shift_amounts(rng, shape, dtype)
    if jnp.issubdtype(other, jnp.floating):
      o = _float_data(rng, shape, other)
    else:
      o = random_array(rng, shape, other)
    f64 = _float_data(rng, shape, jnp.float64)
    half = jnp.uint32 if dtype == jnp.uint64 else jnp.int32

    def f(a, b, c, d, e):
      return (jax.lax.shift_left(a, c), jax.lax.shift_right_logical(a, c),
              jax.lax.shift_right_arithmetic(a, c), a & b | ~a ^ b,
              jax.lax.population_count(a), jax.lax.clz(a),
              jax.lax.div(a, b), jax.lax.rem(a, b),
              a.astype(other), d.astype(dtype), e.astype(dtype),
              e.astype(other),
              jax.lax.bitcast_convert_type(a, jnp.float64),
              jax.lax.bitcast_convert_type(a, half),
              jax.lax.nextafter(e, e[::-1]))
    run_blocked(f, [x, y, s, o, f64], grid)


PACKS = [(jnp.float32, jnp.bfloat16), (jnp.int32, jnp.int16),
         (jnp.int32, jnp.int8), (jnp.int32, jnp.int4), (jnp.int16, jnp.int8),
         (jnp.int16, jnp.int4), (jnp.int8, jnp.int4)]


@EXAMPLES
@given(SHAPES, st.sampled_from(PACKS), SEEDS)
def test_pack_and_unpack_elementwise(shape, config, seed):
  """No interpret-mode lowering exists: a numpy model of the TPU packing
  (strategies.pack_case) is the reference, and unpacking inverts it."""
  unpacked, packed = config
  src, want, n = pack_case(_rng(seed), shape, unpacked, packed)

  def kernel(xs_ref, w_ref, p_ref, *u_refs):
    p_ref[...] = pltpu.pack_elementwise([xs_ref[i] for i in range(n)],
                                        packed_dtype=packed)
    for i, u_ref in enumerate(u_refs):
      u_ref[...] = pltpu.unpack_elementwise(
          w_ref[...], index=i, packed_dtype=packed, unpacked_dtype=unpacked)
  got = call(kernel, [jax.ShapeDtypeStruct(shape, want.dtype)] +
             [jax.ShapeDtypeStruct(shape, unpacked)] * n, src, want)
  assert_same(got[0], want)
  assert_same(got[1:], [src[i].astype(packed).astype(unpacked)
                        for i in range(n)])


SCALAR_OPS = {
    "shl": jax.lax.shift_left, "shrl": jax.lax.shift_right_logical,
    "shra": jax.lax.shift_right_arithmetic, "div": jax.lax.div,
    "rem": jax.lax.rem, "and": jnp.bitwise_and, "xor": jnp.bitwise_xor,
    "popcount": lambda a, b: jax.lax.population_count(a) + jax.lax.clz(b),
    "not": lambda a, b: ~a | b,
}


@EXAMPLES
@given(st.sampled_from([jnp.int32, jnp.uint32]),
       st.lists(st.sampled_from(sorted(SCALAR_OPS)), min_size=1, max_size=3),
       SEEDS)
def test_scalar_ops_in_smem(dtype, ops, seed):
  """Rank-0 values (plain SSA scalars, not arrays) read from SMEM, with
  the same special operands."""
  rng = _rng(seed)
  info = np.iinfo(dtype)
  specials = [0, 1, 31, 32, 33, info.max, info.min] + (
      [-1, -32] if info.min else [])
  n = 8
  x = _with_specials(rng, random_array(rng, (n,), dtype), specials, 0.5)
  y = _with_specials(rng, random_array(rng, (n,), dtype), specials, 0.5)
  smem = pl.BlockSpec(memory_space=pltpu.SMEM)

  def kernel(x_ref, y_ref, o_ref, f_ref):
    for k in range(n):
      a, b = x_ref[k], y_ref[k]
      for op in ops:
        a = SCALAR_OPS[op](a, b)
      o_ref[k] = a
      f_ref[k] = a.astype(jnp.float32)   # scalar int -> float

  shapes_ = [jax.ShapeDtypeStruct((n,), dtype),
             jax.ShapeDtypeStruct((n,), jnp.float32)]
  kw = dict(in_specs=[smem, smem], out_specs=[smem, smem])
  got = call(kernel, shapes_, x, y, **kw)
  want = call(kernel, shapes_, x, y, backend="interpret", **kw)
  assert_same_bits(got, want)
