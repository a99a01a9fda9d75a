"""Layout primitives (concatenate, stack/unstack, split, tile, pad, rev,
pltpu.roll, take_along_axis gathers, masked loads/stores) against
interpret=True and jnp.

Data movement is exact: results must agree bit for bit.  To keep the file
fast, one kernel checks a few cases at once (one output per case), over
f32, bf16, int32 and bool.  Blocks are (8, 130) row blocks over a grid of
2: 130 lanes make every row length odd-sized; size-1 dimensions come from
slices like a[:, 5:6]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas import primitives as pallas_primitives
from jax._src.pallas.mosaic import primitives as tpu_primitives
from jax._src.state import primitives as state_primitives
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from conftest import assert_same, check_against_interpret

DTYPES = [jnp.float32, jnp.bfloat16, jnp.int32, jnp.bool_]
SHAPE, BLOCK = (16, 130), (8, 130)       # grid of 2 over rows
ROWS = pl.BlockSpec(BLOCK, lambda i: (i, 0))


def _data(seed, shape, dtype):
  rng = np.random.default_rng(seed)
  if dtype == jnp.bool_:
    return jnp.asarray(rng.integers(0, 2, shape).astype(bool))
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.asarray(rng.integers(-1000, 1000, shape), dtype)
  return jnp.asarray(rng.standard_normal(shape), dtype)


def _run(fns, *args, in_blocks=None):
  """``o_k = fns[k](*inputs)`` on row blocks over a grid of 2, one output
  per function (shapes and dtypes from ``jax.eval_shape``), against
  interpret mode and against the functions applied by jnp to each block."""
  in_blocks = in_blocks or [BLOCK] * len(args)
  in_specs = [pl.BlockSpec(b, lambda i: (i, 0)) for b in in_blocks]
  block_args = [jax.ShapeDtypeStruct(b, a.dtype)
                for a, b in zip(args, in_blocks)]
  outs = [jax.eval_shape(f, *block_args) for f in fns]
  out_specs = [pl.BlockSpec(o.shape, lambda i: (i, 0)) for o in outs]
  out_shapes = [jax.ShapeDtypeStruct((2 * o.shape[0], *o.shape[1:]), o.dtype)
                for o in outs]

  def kernel(*refs):
    ins, o_refs = refs[:len(args)], refs[len(args):]
    for f, o_ref in zip(fns, o_refs):
      o_ref[...] = f(*[r[...] for r in ins])

  got = check_against_interpret(kernel, out_shapes, *args, grid=(2,),
                                in_specs=in_specs, out_specs=out_specs)

  @jax.jit
  def reference(*args):
    return [jnp.concatenate(
        [f(*[a[i * b[0]:(i + 1) * b[0]] for a, b in zip(args, in_blocks)])
         for i in range(2)], axis=0) for f in fns]
  assert_same(got, reference(*args))
  return got


def _cases(cases, dtype, seed=0):
  """Every case ``f(x)`` on one input of ``dtype``, in one kernel.  (Keep
  kernels small: LLVM's optimization time grows faster than linearly with
  the number of loop nests in one function.)"""
  return _run(list(cases), _data(seed, SHAPE, dtype))


F32_BOOL = [jnp.float32, jnp.bool_]


# -- concatenate / stack / split / unstack / tile ---------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_concatenate(dtype):
  _cases([
      lambda a: jnp.concatenate([a[:, :128], a[:, 3:10], a[:, :1]], axis=1),
      lambda a: jnp.concatenate([a[:3], a, a[:1]], axis=0),
  ], dtype)


def test_concatenate_of_lazy_expressions_and_empty_operands():
  """Each operand is computed straight into its window of the output."""
  _cases([lambda a: jnp.concatenate([jnp.abs(a[:, :64]) - 1, a[:, :0], a * 2],
                                    axis=1),
          lambda a: jnp.concatenate([a[:, 5:6], a[:, 7:9]], axis=1)],
         jnp.float32)


@pytest.mark.parametrize("dtype", F32_BOOL)
def test_stack_unstack(dtype):
  _cases([
      # stack along the middle axis then fold it away again
      lambda a: jnp.stack([a[:, :64], a[:, 64:128]], axis=1).reshape(8, 128),
      # unstack into rows (rank 1) and into single elements (scalars)
      lambda a: jnp.stack(jnp.unstack(a, axis=0)[::-1], axis=0),
      lambda a: jnp.stack(jnp.unstack(a[0, :5]) + jnp.unstack(a[1, :3]))[None],
  ], dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_split(dtype):
  def split3(a):
    p, q, r = jnp.split(a, [3, 100], axis=1)
    return jnp.concatenate([r, p, q], axis=1)
  _cases([split3,
          lambda a: jnp.concatenate(jax.lax.split(a, (5, 3), axis=0)[::-1])],
         dtype)


@pytest.mark.parametrize("dtype", F32_BOOL)
def test_tile_and_repeat(dtype):
  _cases([
      lambda a: jnp.tile(a[:, :7], (1, 3)),
      lambda a: jnp.tile(a[:4, :1], (2, 5)),       # lazy: unit dims repeat
      lambda a: jnp.tile(a[:2, :64], (4, 2)),
      lambda a: tpu_primitives.repeat(a[:, :32], 4, axis=1),
  ], dtype)


def test_broadcast_to_primitive():
  x = _data(6, SHAPE, jnp.float32)
  def kernel(x_ref, o_ref):
    o_ref[...] = (state_primitives.broadcast_to(x_ref[0:1, :], BLOCK) +
                  state_primitives.broadcast_to(x_ref[3, :], BLOCK))
  out = check_against_interpret(kernel, jax.ShapeDtypeStruct(SHAPE, x.dtype),
                                x, grid=(2,), in_specs=[ROWS], out_specs=ROWS)
  want = jnp.concatenate([jnp.broadcast_to(x[0:1] + x[3], BLOCK),
                          jnp.broadcast_to(x[8:9] + x[11], BLOCK)])
  assert_same(out, want)


# -- pad ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_pad(dtype):
  _cases([lambda a: jnp.pad(a[:, :125], ((0, 0), (2, 1))),
          lambda a: jnp.pad(a[:7], ((1, 0), (0, 0)), constant_values=1)],
         dtype)


PAD_CONFIGS = [
    ((1, -2, 1), (0, 3, 0)),      # interior with a negative high
    ((-3, 2, 2), (-1, -1, 0)),    # negative low across interior padding
    ((0, 0, 0), (-130, 5, 0)),    # everything cropped: all padding
    ((2, 0, 0), (3, -2, 1)),
]


def test_lax_pad_interior_and_negative():
  _cases([lambda a, c=c: jax.lax.pad(a, a.dtype.type(-7), c)
          for c in PAD_CONFIGS], jnp.float32)


def test_pad_of_lazy_operand_with_dynamic_value():
  x = _data(9, SHAPE, jnp.float32)
  cfg = ((1, 1, 0), (3, 5, 0))

  def kernel(x_ref, o_ref):
    o_ref[...] = jax.lax.pad(-jnp.abs(x_ref[:6, :122]), x_ref[0, 0], cfg)
  out = check_against_interpret(kernel, jax.ShapeDtypeStruct(SHAPE, x.dtype),
                                x, grid=(2,), in_specs=[ROWS], out_specs=ROWS)
  for r in (0, 8):
    blk = x[r:r + 8]
    assert_same(out[r:r + 8], jax.lax.pad(-jnp.abs(blk[:6, :122]), blk[0, 0],
                                          cfg))


# -- rev ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.bool_])
def test_rev(dtype):
  _cases([lambda a: jnp.flip(a, axis=1),
          lambda a: jnp.flip(a[:, :7], axis=(0, 1)),
          lambda a: jnp.flip(a[:, 3:4], axis=1)], dtype)


# -- pltpu.roll --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_roll_static(dtype):
  _cases([lambda a: pltpu.roll(a, 3, 1), lambda a: pltpu.roll(a, 5, 0)],
         dtype)


def test_roll_static_edge_shifts():
  _cases([lambda a: pltpu.roll(a, 0, 1),
          lambda a: pltpu.roll(a, 130, 1),
          lambda a: pltpu.roll(a, 5, 0),
          lambda a: pltpu.roll(a, 131, 1),
          lambda a: pltpu.roll(a[:, 5:6], 2, 1),     # a size-1 axis
          lambda a: jnp.roll(a, -7, axis=1)], jnp.float32)


STRIDED_ROLLS = [(1, 0, 1, 0), (1, 0, 3, 5), (1, 0, 130, 2), (1, 0, 0, 7),
                 (1, 0, 3, 129)]


def test_roll_strided():
  _cases([lambda a, ax=ax, sa=sa, st=st, sh=sh:
          pltpu.roll(a, sh, ax, stride=st, stride_axis=sa)
          for ax, sa, st, sh in STRIDED_ROLLS] +
         # along rows, the shift growing along a few lanes
         [lambda a: pltpu.roll(a[:, :6], 1, 0, stride=2, stride_axis=1)],
         jnp.float32)


def test_roll_dynamic_shift():
  xs = [_data(13, SHAPE, dt) for dt in (jnp.float32, jnp.bool_)]
  shifts = jnp.asarray([3, -4, 261, 0], jnp.int32)

  def kernel(s_ref, *refs):
    i = pl.program_id(0)
    for x_ref, o_ref in zip(refs[:2], refs[2:]):
      o_ref[...] = pltpu.roll(x_ref[...], s_ref[i] + s_ref[2 * i], 1)
      o_ref[0:3, :] = pltpu.roll(x_ref[0:3, :], s_ref[1], 0)
      o_ref[3:5, :] = pltpu.roll(x_ref[3:5, :], s_ref[1], 1, stride=3,
                                 stride_axis=0)

  spec = pl.BlockSpec(BLOCK, lambda i, s: (i, 0))
  outs = check_against_interpret(
      kernel, [jax.ShapeDtypeStruct(SHAPE, x.dtype) for x in xs], shifts, *xs,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(2,), in_specs=[spec] * 2,
          out_specs=[spec] * 2))
  for x, out in zip(xs, outs):
    want0 = jnp.roll(x[:8], 6, 1).at[0:3].set(jnp.roll(x[0:3], -4, 0))
    want0 = want0.at[3].set(jnp.roll(x[3], -4)).at[4].set(jnp.roll(x[4], -1))
    assert_same(out[:8], want0)


# -- gather (take_along_axis) ----------------------------------------------------------
@pytest.mark.parametrize("dtype,axes", [
    (jnp.float32, (0, 1)), (jnp.int32, (0, 1)), (jnp.bfloat16, (1,)),
    (jnp.bool_, (1,))])
def test_take_along_axis(dtype, axes):
  """Along both axes, in every mode: the default promises in-bounds
  indices, "clip" clamps, "fill" gives the fill value out of bounds."""
  x = _data(15, SHAPE, dtype)
  rng = np.random.default_rng(16)
  idx = []
  for n in (8, 130):
    i = rng.integers(-n - 3, n + 3, SHAPE).astype(np.int32)
    i[0, :4] = [0, n - 1, -1, -n]
    idx.append(jnp.asarray(i))
  fns = []
  for axis in axes:
    n = BLOCK[axis]
    def case(mode, axis=axis, n=n):
      def f(a, *i):
        i = i[axis]
        if mode is None:
          i = jnp.clip(i, -n, n - 1)
        kw = {} if mode is None else {"mode": mode}
        return jnp.take_along_axis(a, i, axis=axis, **kw)
      return f
    fns += [case(None), case("clip"), case("fill")]
  _run(fns, x, *idx)


def test_take_along_axis_fewer_indices_fill_value_and_3d():
  x = _data(17, SHAPE, jnp.float32)
  idx = jnp.asarray(np.random.default_rng(18).integers(-5, 140, (16, 7)),
                    jnp.int32)
  _run([lambda a, i: jnp.take_along_axis(a, i, axis=1, mode="fill",
                                         fill_value=-1.5)],
       x, idx, in_blocks=[BLOCK, (8, 7)])

  x3 = _data(19, (4, 8, 128), jnp.int32)
  i3 = jnp.asarray(np.random.default_rng(20).integers(0, 8, (4, 8, 128)),
                   jnp.int32)
  spec = pl.BlockSpec((2, 8, 128), lambda i: (i, 0, 0))

  def kernel(x_ref, i_ref, o_ref):
    o_ref[...] = jnp.take_along_axis(x_ref[...], i_ref[...], axis=1) + 1
  out = check_against_interpret(kernel, jax.ShapeDtypeStruct(x3.shape,
                                                             x3.dtype),
                                x3, i3, grid=(2,), in_specs=[spec, spec],
                                out_specs=spec)
  assert_same(out, jnp.take_along_axis(x3, i3, axis=1) + 1)


def test_row_gather_of_a_value():
  """Beyond Mosaic's take_along_axis form (general gathers:
  test_gather_scatter.py)."""
  x = _data(21, SHAPE, jnp.float32)

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...][jnp.arange(8) % 3]   # a row gather
  check_against_interpret(kernel, jax.ShapeDtypeStruct(SHAPE, x.dtype), x,
                          grid=(2,), in_specs=[ROWS], out_specs=ROWS)


# -- masked loads and stores ----------------------------------------------------------
def test_masked_store():
  """Only mask-true elements are written, for every dtype."""
  xs = [_data(22 + k, SHAPE, dt) for k, dt in enumerate(DTYPES)]
  ys = [_data(32 + k, SHAPE, dt) for k, dt in enumerate(DTYPES)]
  n = len(DTYPES)

  def kernel(*refs):
    x_refs, y_refs, o_refs = refs[:n], refs[n:2 * n], refs[2 * n:]
    for x_ref, y_ref, o_ref in zip(x_refs, y_refs, o_refs):
      o_ref[...] = y_ref[...]
      mask = jax.lax.broadcasted_iota(jnp.int32, BLOCK, 1) % 3 == 0
      pltpu.store(o_ref, x_ref[...], mask=mask)
      # one row, the mask depending on the ref being written
      pallas_primitives.store(o_ref, (pl.ds(2, 1), slice(None)),
                              y_ref[3:4, :],
                              mask=o_ref[2:3, :] == o_ref[1:2, :])
  outs = check_against_interpret(
      kernel, [jax.ShapeDtypeStruct(SHAPE, x.dtype) for x in xs], *xs, *ys,
      grid=(2,), in_specs=[ROWS] * (2 * n), out_specs=[ROWS] * n)
  cols = (np.arange(SHAPE[1]) % 3 == 0)[None, :]
  for x, y, out in zip(xs, ys, outs):
    want = np.where(cols, np.asarray(x), np.asarray(y))
    for r in (0, 8):
      m = want[r + 2] == want[r + 1]
      want[r + 2] = np.where(m, np.asarray(y)[r + 3], want[r + 2])
    assert_same(out, jnp.asarray(want))


def test_masked_swap_returns_old_where_masked_and_reads_target():
  x = _data(24, SHAPE, jnp.float32)

  def kernel(x_ref, o_ref, p_ref):
    o_ref[...] = x_ref[...]
    mask = x_ref[...] > 0
    # the stored value reads the ref it is stored to, shifted: computed first
    old = pallas_primitives.swap(o_ref, (slice(None), slice(0, 129)),
                                 o_ref[:, 1:130] * 2, mask=mask[:, :129])
    p_ref[...] = jnp.zeros(BLOCK, jnp.float32)
    p_ref[:, 0:129] = old
  shape = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
  check_against_interpret(kernel, (shape, shape), x, grid=(2,),
                          in_specs=[ROWS], out_specs=[ROWS, ROWS])


def test_masked_load_with_other_and_plain_pl_load():
  dts = [jnp.float32, jnp.int32, jnp.bool_]
  xs = [_data(25 + k, SHAPE, dt) for k, dt in enumerate(dts)]
  ys = [_data(35 + k, SHAPE, dt) for k, dt in enumerate(dts)]
  n = len(dts)

  def kernel(*refs):
    for x_ref, y_ref, o_ref in zip(refs[:n], refs[n:2 * n], refs[2 * n:]):
      mask = jax.lax.broadcasted_iota(jnp.int32, (130,), 0) < 100  # broadcasts
      a = pallas_primitives.load(x_ref, (slice(None), slice(None)), mask=mask,
                                 other=y_ref[...])
      b = pallas_primitives.load(x_ref, (pl.ds(1, 4), slice(None)))
      pallas_primitives.store(o_ref, (slice(None), slice(None)), a)
      o_ref[0:4, :] = b
  outs = check_against_interpret(
      kernel, [jax.ShapeDtypeStruct(SHAPE, x.dtype) for x in xs], *xs, *ys,
      grid=(2,), in_specs=[ROWS] * (2 * n), out_specs=[ROWS] * n)
  for x, y, out in zip(xs, ys, outs):
    want = jnp.where(jnp.arange(130) < 100, x, y)
    want = want.at[0:4].set(x[1:5]).at[8:12].set(x[9:13])
    assert_same(out, want)


def test_multiple_of_and_stop_gradient():
  x = _data(27, (32, 128), jnp.float32)

  def kernel(x_ref, o_ref):
    i = pl.multiple_of(pl.program_id(0) * 8, 8)
    o_ref[...] = jax.lax.stop_gradient(x_ref[pl.ds(i, 8), :]) + 1
  spec = pl.BlockSpec((32, 128), lambda i: (0, 0))
  out_spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  out = check_against_interpret(kernel, jax.ShapeDtypeStruct((16, 128),
                                                             jnp.float32),
                                x, grid=(2,), in_specs=[spec],
                                out_specs=out_spec)
  assert_same(out, x[:16] + 1)


# -- regressions found by test_differential_layout.py ---------------------------------
@pytest.mark.parametrize("dtype", F32_BOOL)
def test_reshape_of_a_window_of_a_temporary(dtype):
  """A slice or split of a value is a window of its temporary; reshaping it
  reinterpreted the temporary from its start, as if contiguous."""
  _cases([lambda a: a[::2].reshape(8, 65),           # strided rows
          lambda a: a[1:5].reshape(2, 260),          # offset rows
          lambda a: a[:, 1:3].reshape(4, 4),         # columns
          lambda a: jnp.split(a, [3], axis=0)[1].reshape(1, 650)],
         dtype)
