"""Hypothesis-generated layout kernels vs interpret=True, bit for bit:
transpose, concatenate, slice, pad, tile/repeat, broadcast_in_dim, reshape,
squeeze/expand_dims, split, stack/unstack, rev, pltpu.roll, take_along_axis
and iota over dtypes, odd and size-1 shapes and 0-2-D grids of blocks
(strategies.run_blocked)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax._src.pallas.mosaic import primitives as tpu_primitives
from jax.experimental.pallas import tpu as pltpu

from strategies import GRIDS, random_array, run_blocked, shapes

DTYPES = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.int8, jnp.int32,
                          jnp.uint8, jnp.bool_])
SEEDS = st.integers(0, 2**31 - 1)
# Each example compiles one kernel (~0.2 s) and one interpret-mode jit.
EXAMPLES = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


def _x(seed, shape, dtype):
  return random_array(np.random.default_rng(seed), shape, dtype)


def _lazy(a):
  """A pointwise expression of ``a`` (so the op's operand is not a plain
  load), exact for every dtype."""
  if a.dtype == jnp.bool_ or jnp.issubdtype(a.dtype, jnp.integer):
    return ~a
  return -a


@EXAMPLES
@given(shapes(2, 4, max_elems=2048), st.data(), DTYPES, GRIDS, SEEDS)
def test_transpose(shape, data, dtype, grid, seed):
  perm = tuple(data.draw(st.permutations(range(len(shape)))))
  lazy = data.draw(st.booleans())
  run_blocked(lambda a: jnp.transpose(_lazy(a) if lazy else a, perm),
              [_x(seed, shape, dtype)], grid)


@EXAMPLES
@given(shapes(1, 3, max_elems=1024), st.data(), DTYPES, GRIDS, SEEDS)
def test_concatenate(shape, data, dtype, grid, seed):
  axis = data.draw(st.integers(0, len(shape) - 1))
  sizes = data.draw(st.lists(st.sampled_from([1, 2, 7, 17, 128]),
                             min_size=2, max_size=3))
  lazy = data.draw(st.booleans())
  xs = []
  for k, n in enumerate(sizes):
    s = list(shape)
    s[axis] = n
    xs.append(_x(seed + k, s, dtype))

  def f(*ops):
    ops = list(ops)
    if lazy:
      ops[0] = _lazy(ops[0])
    return jax.lax.concatenate(ops, axis)
  run_blocked(f, xs, grid)


@EXAMPLES
@given(shapes(1, 3), st.data(), DTYPES, GRIDS, SEEDS)
def test_strided_slice(shape, data, dtype, grid, seed):
  start, limit, strides = [], [], []
  for n in shape:
    lo = data.draw(st.integers(0, n - 1))
    start.append(lo)
    limit.append(data.draw(st.integers(lo + 1, n)))
    strides.append(data.draw(st.integers(1, 4)))
  lazy = data.draw(st.booleans())
  run_blocked(lambda a: jax.lax.slice(_lazy(a) if lazy else a, start, limit,
                                      strides),
              [_x(seed, shape, dtype)], grid)


@st.composite
def pad_configs(draw, shape):
  config = []
  for n in shape:
    interior = draw(st.integers(0, 2))
    full = n + (n - 1) * interior
    lo = draw(st.integers(-min(full, 4), 4))
    hi = draw(st.integers(max(-4, 1 - full - lo), 4))  # keeps >= 1 element
    config.append((lo, hi, interior))
  return config


@EXAMPLES
@given(shapes(1, 3, max_elems=1024), st.data(), DTYPES, GRIDS, SEEDS)
def test_pad(shape, data, dtype, grid, seed):
  config = data.draw(pad_configs(shape))
  dynamic = data.draw(st.booleans())   # padding value read from the block
  lazy = data.draw(st.booleans())

  def f(a):
    value = a[(0,) * a.ndim] if dynamic else jnp.asarray(1, a.dtype)
    return jax.lax.pad(_lazy(a) if lazy else a, value, config)
  run_blocked(f, [_x(seed, shape, dtype)], grid)


@EXAMPLES
@given(shapes(1, 3, max_elems=512), st.data(), DTYPES, GRIDS, SEEDS)
def test_tile_and_repeat(shape, data, dtype, grid, seed):
  reps = data.draw(st.lists(st.integers(1, 3), min_size=len(shape),
                            max_size=len(shape) + 1))
  axis = data.draw(st.integers(0, len(shape) - 1))
  n = data.draw(st.integers(1, 3))
  run_blocked(lambda a: (jnp.tile(a, reps), tpu_primitives.repeat(a, n, axis)),
              [_x(seed, shape, dtype)], grid)


@EXAMPLES
@given(shapes(1, 3, max_elems=512), st.data(), DTYPES, GRIDS, SEEDS)
def test_broadcast_in_dim(shape, data, dtype, grid, seed):
  # Each operand dimension keeps its size or, when 1, grows; new
  # dimensions go anywhere (broadcast_dimensions stay increasing).
  out_rank = data.draw(st.integers(len(shape), 4))
  dims = sorted(data.draw(st.lists(st.integers(0, out_rank - 1),
                                   min_size=len(shape), max_size=len(shape),
                                   unique=True)))
  out = [data.draw(st.sampled_from([1, 2, 5])) for _ in range(out_rank)]
  for d, n in zip(dims, shape):
    out[d] = data.draw(st.sampled_from([1, 3, 8])) if n == 1 else n
  if math.prod(out) > 8192:
    out = [n if d in dims else 1 for d, n in enumerate(out)]
  lazy = data.draw(st.booleans())
  run_blocked(lambda a: jax.lax.broadcast_in_dim(_lazy(a) if lazy else a,
                                                 out, dims),
              [_x(seed, shape, dtype)], grid)


def _factors(n):
  out, p = [], 2
  while n > 1:
    while n % p == 0:
      out.append(p)
      n //= p
    p += 1
  return out


@st.composite
def reshapes(draw, shape):
  """A shape of the same size: the prime factors regrouped, in order, into
  new dimensions, with size-1 dimensions inserted."""
  factors = _factors(math.prod(shape))
  cuts = sorted(draw(st.sets(st.integers(1, max(1, len(factors) - 1)),
                             max_size=3))) if len(factors) > 1 else []
  bounds = [0, *cuts, len(factors)]
  new = [math.prod(factors[a:b]) for a, b in zip(bounds, bounds[1:])]
  for _ in range(draw(st.integers(0, 2))):
    new.insert(draw(st.integers(0, len(new))), 1)
  return tuple(new)


@EXAMPLES
@given(shapes(1, 4, max_elems=2048), st.data(), DTYPES, GRIDS, SEEDS)
def test_reshape(shape, data, dtype, grid, seed):
  new = data.draw(reshapes(shape))
  lazy = data.draw(st.booleans())
  run_blocked(lambda a: jnp.reshape(_lazy(a) if lazy else a, new),
              [_x(seed, shape, dtype)], grid)


@EXAMPLES
@given(st.lists(st.sampled_from([1, 1, 3, 7, 130]), min_size=1,
                max_size=4).filter(lambda s: math.prod(s) <= 4096),
       st.data(), DTYPES, GRIDS, SEEDS)
def test_squeeze_and_expand_dims(shape, data, dtype, grid, seed):
  units = [d for d, n in enumerate(shape) if n == 1]
  drop = tuple(sorted(data.draw(st.sets(st.sampled_from(units))))) if units \
      else ()
  rank = len(shape) - len(drop)
  k = data.draw(st.integers(0 if rank else 1, 2))
  new = tuple(data.draw(st.lists(st.integers(0, rank + k - 1), min_size=k,
                                 max_size=k, unique=True)))

  def f(a):
    return jnp.expand_dims(jax.lax.squeeze(a, drop), new) if new or drop \
        else a
  run_blocked(f, [_x(seed, shape, dtype)], grid)


@EXAMPLES
@given(shapes(1, 3), st.data(), DTYPES, GRIDS, SEEDS)
def test_split(shape, data, dtype, grid, seed):
  axis = data.draw(st.integers(0, len(shape) - 1))
  n = shape[axis]
  cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=1,
                                   max_size=3)))
  bounds = [0, *cuts, n]
  sizes = [b - a for a, b in zip(bounds, bounds[1:])]   # zeros included

  def f(a):
    return tuple(p for p in jax.lax.split(a, sizes, axis) if p.size)
  run_blocked(f, [_x(seed, shape, dtype)], grid)


@EXAMPLES
@given(shapes(1, 3, max_elems=1024), st.data(), DTYPES, GRIDS, SEEDS)
def test_stack_and_unstack(shape, data, dtype, grid, seed):
  rank = len(shape)
  k = data.draw(st.integers(1, 3))
  axis = data.draw(st.integers(0, rank))
  src = data.draw(st.integers(0, rank - 1))
  dst = data.draw(st.integers(0, rank - 1))
  xs = [_x(seed + i, shape, dtype) for i in range(k)]

  def f(*ops):
    stacked = jnp.stack([_lazy(o) for o in ops], axis=axis)
    # unstack along one axis, restack reversed along another
    parts = jnp.unstack(ops[0], axis=src)[::-1]
    return stacked, jnp.stack(parts, axis=dst)
  run_blocked(f, xs, grid)


@EXAMPLES
@given(shapes(1, 4, max_elems=2048), st.data(), DTYPES, GRIDS, SEEDS)
def test_rev(shape, data, dtype, grid, seed):
  dims = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1),
                                        min_size=1))))
  lazy = data.draw(st.booleans())
  run_blocked(lambda a: jax.lax.rev(_lazy(a) if lazy else a, dims),
              [_x(seed, shape, dtype)], grid)


@st.composite
def rolls(draw, shape):
  rank = len(shape)
  axis = draw(st.integers(0, rank - 1))
  n = shape[axis]
  stride = stride_axis = None
  if rank > 1 and draw(st.booleans()):
    stride_axis = draw(st.sampled_from([d for d in range(rank) if d != axis]))
    stride = draw(st.integers(0, 2 * n + 1))
  return axis, stride, stride_axis


@EXAMPLES
@given(shapes(1, 3, max_elems=2048), st.data(), DTYPES, GRIDS, SEEDS)
def test_roll_static(shape, data, dtype, grid, seed):
  axis, stride, stride_axis = data.draw(rolls(shape))
  shift = data.draw(st.integers(0, 3 * shape[axis]))
  run_blocked(lambda a: pltpu.roll(a, shift, axis, stride=stride,
                                   stride_axis=stride_axis),
              [_x(seed, shape, dtype)], grid)


@EXAMPLES
@given(shapes(1, 3, max_elems=2048), st.data(), DTYPES, GRIDS, SEEDS)
def test_roll_dynamic(shape, data, dtype, grid, seed):
  """The shift read from SMEM at run time, negative ones included."""
  axis, stride, stride_axis = data.draw(rolls(shape))
  n = shape[axis]
  shift = data.draw(st.integers(-2 * n - 1, 3 * n))
  lazy = data.draw(st.booleans())
  run_blocked(lambda a, s: pltpu.roll(_lazy(a) if lazy else a, s, axis,
                                      stride=stride, stride_axis=stride_axis),
              [_x(seed, shape, dtype)], grid, scalars=[shift])


@EXAMPLES
@given(shapes(1, 3, max_elems=1024), st.data(), DTYPES, GRIDS, SEEDS)
def test_take_along_axis(shape, data, dtype, grid, seed):
  axis = data.draw(st.integers(0, len(shape) - 1))
  # jnp turns a unit dimension besides ``axis`` into a gather offset
  # dimension, a form Mosaic rejects (and pallas_cpu with it).
  shape = tuple(2 if d != axis and k == 1 else k for d, k in enumerate(shape))
  n = shape[axis]
  m = data.draw(st.sampled_from([1, n, n + 2]))
  mode = data.draw(st.sampled_from([None, "clip", "fill"]))
  fill = data.draw(st.booleans()) and mode == "fill"
  idx_shape = list(shape)
  idx_shape[axis] = m
  idx_dtype = np.dtype(data.draw(st.sampled_from(
      [np.int32, np.int8, np.int16, np.uint8, np.uint32])))
  info = np.iinfo(idx_dtype)
  rng = np.random.default_rng(seed + 1)
  idx = rng.integers(max(-n - 3, info.min), min(n + 3, info.max) + 1,
                     idx_shape).astype(idx_dtype)

  def f(a, i):
    kw = {} if mode is None else {"mode": mode}
    if mode is None:  # promised in bounds (negative ones wrap, as in numpy)
      i = jnp.clip(i, max(-n, info.min), min(n - 1, info.max))
    if fill:
      kw["fill_value"] = 1
    return jnp.take_along_axis(a, i, axis=axis, **kw)
  run_blocked(f, [_x(seed, shape, dtype), jnp.asarray(idx)], grid)


@EXAMPLES
@given(shapes(1, 3), st.data(),
       st.sampled_from([jnp.int32, jnp.float32, jnp.bfloat16, jnp.int8,
                        jnp.uint8]), GRIDS)
def test_iota(shape, data, dtype, grid):
  dim = data.draw(st.integers(0, len(shape) - 1))
  x = jnp.zeros(shape, dtype)   # only fixes the block shape and grid
  run_blocked(lambda a: jax.lax.broadcasted_iota(dtype, shape, dim) + a, [x],
              grid)


def _chain_step(data, shape):
  """One layout op applicable to a value of ``shape``, as (fn, new shape)."""
  rank = len(shape)
  kinds = ["transpose", "rev", "roll", "pad", "slice", "reshape",
           "concatenate", "tile", "lazy", "take", "split", "restack",
           "expand", "squeeze"]
  kind = data.draw(st.sampled_from(kinds))
  if kind == "split":
    axis = data.draw(st.integers(0, rank - 1))
    cut = data.draw(st.integers(0, shape[axis] - 1))
    out = tuple(n - cut if d == axis else n for d, n in enumerate(shape))
    return (lambda a: jax.lax.split(a, (cut, shape[axis] - cut), axis)[1]), out
  if kind == "restack":
    src, dst = (data.draw(st.integers(0, rank - 1)) for _ in range(2))
    parts = [n for d, n in enumerate(shape) if d != src]
    if rank == 1:
      return (lambda a: jnp.stack(jnp.unstack(a)[::-1])), shape
    out = (*parts[:dst], shape[src], *parts[dst:])
    return (lambda a: jnp.stack(jnp.unstack(a, axis=src)[::-1], axis=dst)), out
  if kind == "expand":
    axis = data.draw(st.integers(0, rank))
    if rank == 4:
      return (lambda a: a), shape
    out = (*shape[:axis], 1, *shape[axis:])
    return (lambda a: jnp.expand_dims(a, axis)), out
  if kind == "squeeze":
    units = tuple(d for d, n in enumerate(shape) if n == 1)
    if not units or len(units) == rank:
      return (lambda a: a), shape
    return (lambda a: jax.lax.squeeze(a, units)), tuple(
        n for n in shape if n != 1)
  if kind == "transpose":
    perm = tuple(data.draw(st.permutations(range(rank))))
    return (lambda a: jnp.transpose(a, perm)), tuple(shape[p] for p in perm)
  if kind == "rev":
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, rank - 1),
                                          min_size=1))))
    return (lambda a: jax.lax.rev(a, dims)), shape
  if kind == "roll":
    axis, stride, stride_axis = data.draw(rolls(shape))
    shift = data.draw(st.integers(0, 2 * shape[axis]))
    return (lambda a: pltpu.roll(a, shift, axis, stride=stride,
                                 stride_axis=stride_axis)), shape
  if kind == "pad":
    config = data.draw(pad_configs(shape))
    out = tuple(lo + hi + n + (n - 1) * i
                for n, (lo, hi, i) in zip(shape, config))
    if math.prod(out) > 8192:
      return (lambda a: a), shape
    return (lambda a: jax.lax.pad(a, jnp.zeros((), a.dtype), config)), out
  if kind == "slice":
    start = [data.draw(st.integers(0, n - 1)) for n in shape]
    strides = [data.draw(st.integers(1, 3)) for _ in shape]
    out = tuple(-(-(n - s) // k) for n, s, k in zip(shape, start, strides))
    return (lambda a: jax.lax.slice(a, start, shape, strides)), out
  if kind == "reshape":
    new = data.draw(reshapes(shape))
    return (lambda a: a.reshape(new)), new
  if kind == "concatenate":
    axis = data.draw(st.integers(0, rank - 1))
    if 2 * math.prod(shape) > 8192:
      return (lambda a: a), shape
    out = tuple(2 * n if d == axis else n for d, n in enumerate(shape))
    return (lambda a: jnp.concatenate([a, _lazy(a)], axis)), out
  if kind == "tile":
    reps = tuple(data.draw(st.integers(1, 2)) for _ in shape)
    out = tuple(n * r for n, r in zip(shape, reps))
    if math.prod(out) > 8192:
      return (lambda a: a), shape
    return (lambda a: jnp.tile(a, reps)), out
  if kind == "take":
    axis = data.draw(st.integers(0, rank - 1))
    if any(n == 1 for d, n in enumerate(shape) if d != axis):
      return (lambda a: a), shape   # see test_take_along_axis
    n = shape[axis]
    # A fixed index pattern computed in the kernel.  (lax.rem, not jnp's
    # %: with its sign fix-up LLVM 22's loop vectorizer trips an assertion
    # at -mcpu=znver5, a toolchain bug outside this test's subject.)
    return (lambda a: jnp.take_along_axis(
        a, jax.lax.rem(jax.lax.broadcasted_iota(jnp.int32, shape, axis) * 5
                       + 3, n), axis=axis)), shape
  return _lazy, shape


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(shapes(1, 3, max_elems=1024), st.data(), DTYPES, GRIDS, SEEDS)
def test_random_layout_chains(shape, data, dtype, grid, seed):
  """Two to four layout ops in a row: each consumes the previous one's
  value (re-indexed, fused, or a window of a temporary), not a plain load
  of a ref."""
  fns, s = [], tuple(shape)
  for _ in range(data.draw(st.integers(2, 4))):
    fn, s = _chain_step(data, s)
    fns.append(fn)

  def f(a):
    for fn in fns:
      a = fn(a)
    return a
  run_blocked(f, [_x(seed, shape, dtype)], grid)
