"""Grids, BlockSpecs, edge blocks, several operands, aliasing, jit/vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

import pallas_cpu
from conftest import assert_same, call, check_against_interpret

DTYPES = [jnp.float32, jnp.bfloat16, jnp.int32]


def _close(dtype):
  """Float chains like x*3+y: XLA contracts some into FMAs (one rounding),
  the compiled code rounds every op, so the last bit may differ."""
  if jnp.issubdtype(dtype, jnp.integer):
    return dict(exact=True)
  return dict(exact=False, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6,
              atol=1e-6)


def _data(rng, shape, dtype):
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.asarray(rng.integers(-1000, 1000, shape), dtype)
  return jnp.asarray(rng.standard_normal(shape), dtype)


def _affine(x_ref, y_ref, o_ref):
  o_ref[...] = x_ref[...] * 3 + y_ref[...]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,block", [
    ((64,), (16,)),                 # 1-D grid
    ((32, 256), (8, 128)),          # 2-D grid
    ((4, 16, 256), (2, 8, 128)),    # 3-D grid
])
def test_grid_ranks(rng, dtype, shape, block):
  x, y = _data(rng, shape, dtype), _data(rng, shape, dtype)
  grid = tuple(s // b for s, b in zip(shape, block))
  spec = pl.BlockSpec(block, lambda *i: i)
  out = check_against_interpret(
      _affine, jax.ShapeDtypeStruct(shape, dtype), x, y, grid=grid,
      in_specs=[spec, spec], out_specs=spec, **_close(dtype))
  assert_same(out, x * 3 + y, **_close(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(100, 130), (7, 129), (33, 1)])
def test_edge_blocks(rng, dtype, shape):
  """Blocks that overhang the array: padding is never visible, writes past
  the end are dropped."""
  block = (32, 128)
  x, y = _data(rng, shape, dtype), _data(rng, shape, dtype)
  grid = tuple(pl.cdiv(s, b) for s, b in zip(shape, block))
  spec = pl.BlockSpec(block, lambda i, j: (i, j))
  out = check_against_interpret(
      _affine, jax.ShapeDtypeStruct(shape, dtype), x, y, grid=grid,
      in_specs=[spec, spec], out_specs=spec, **_close(dtype))
  assert_same(out, x * 3 + y, **_close(dtype))


def test_edge_block_padding_is_uninitialized_fill():
  """A reduction over an edge block sees the NaN fill in the padding, like
  interpret mode (and a TPU, up to garbage)."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + x_ref[7:8, :]
  x = jnp.ones((12, 128), jnp.float32)
  out = call(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), x, grid=(2,),
             in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
             out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)))
  out = np.asarray(out)
  np.testing.assert_array_equal(out[:8], 2.0)
  assert np.isnan(out[8:]).all()
  zero = pallas_cpu.CompilerParams(uninitialized_memory="zero")
  out = call(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), x, grid=(2,),
             in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
             out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
             compiler_params=zero)
  np.testing.assert_array_equal(np.asarray(out)[8:], 1.0)


def test_squeezed_dims_and_index_maps(rng):
  """None block dims; an index map that transposes the grid."""
  x = _data(rng, (3, 16, 256), jnp.float32)

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2

  out = check_against_interpret(
      kernel, jax.ShapeDtypeStruct((2, 16, 3 * 128), jnp.float32), x,
      grid=(3, 2),
      in_specs=[pl.BlockSpec((None, 16, 128), lambda b, j: (b, 0, j))],
      out_specs=pl.BlockSpec((None, 16, 128), lambda b, j: (j, 0, b)),
  )
  want = jnp.transpose(x.reshape(3, 16, 2, 128), (2, 1, 0, 3)).reshape(
      2, 16, 3 * 128) * 2
  assert_same(out, want)


def test_several_inputs_and_outputs(rng):
  x, y, z = (_data(rng, (16, 256), jnp.float32) for _ in range(3))

  def kernel(x_ref, y_ref, z_ref, s_ref, p_ref, c_ref):
    s_ref[...] = x_ref[...] + y_ref[...] + z_ref[...]
    p_ref[...] = x_ref[...] * y_ref[...]
    c_ref[...] = x_ref[...] > z_ref[...]

  spec = pl.BlockSpec((8, 128), lambda i, j: (i, j))
  shapes = (jax.ShapeDtypeStruct(x.shape, jnp.float32),
            jax.ShapeDtypeStruct(x.shape, jnp.float32),
            jax.ShapeDtypeStruct(x.shape, jnp.bool_))
  s, p, c = check_against_interpret(kernel, shapes, x, y, z, grid=(2, 2),
                                    in_specs=[spec] * 3, out_specs=[spec] * 3,
                                    exact=False)
  assert_same(s, x + y + z, exact=False)
  assert_same(p, x * y)
  assert_same(c, x > z)


def test_input_output_aliases(rng):
  acc = _data(rng, (16, 128), jnp.float32)
  x = _data(rng, (16, 128), jnp.float32)

  def kernel(acc_ref, x_ref, o_ref):
    o_ref[...] = acc_ref[...] + 2 * x_ref[...]

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  out = check_against_interpret(
      kernel, jax.ShapeDtypeStruct(acc.shape, acc.dtype), acc, x, grid=(2,),
      in_specs=[spec, spec], out_specs=spec, input_output_aliases={0: 0},
      exact=False)
  assert_same(out, acc + 2 * x, exact=False)


def _scale_call(x):
  return pallas_cpu.pallas_call(
      lambda x_ref, o_ref: o_ref.__setitem__(Ellipsis, x_ref[...] * 2 + 1),
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(2,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)))(x)


def test_under_vmap(rng):
  xs = _data(rng, (3, 16, 128), jnp.float32)
  assert_same(jax.jit(jax.vmap(_scale_call))(xs), xs * 2 + 1, exact=False)


def test_inside_larger_jit(rng):
  x = _data(rng, (16, 128), jnp.float32)

  @jax.jit
  def f(x):
    y = jnp.sin(x)
    z = _scale_call(y)
    return _scale_call(z).sum(axis=0) - 1

  got = f(x)
  want = ((jnp.sin(x) * 2 + 1) * 2 + 1).sum(axis=0) - 1
  assert_same(got, want, exact=False, rtol=1e-5, atol=1e-5)


def test_dynamic_grid_bounds(rng):
  """A traced grid size (as megablox uses): the loop bound is read at run
  time, num_programs returns it."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2.0 + pl.num_programs(0).astype(jnp.float32)

  def f(x, n):
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    return pl.pallas_call(kernel, out_shape=x, grid=(n,), in_specs=[spec],
                          out_specs=spec)(x)

  x = _data(rng, (32, 128), jnp.float32)
  with pallas_cpu.force_cpu_backend():
    out = jax.jit(f)(x, jnp.int32(3))
  assert_same(np.asarray(out)[:24], np.asarray(x[:24] * 2 + 3), exact=False)


FILL_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int8, jnp.int16,
               jnp.int32, jnp.uint8, jnp.uint16, jnp.uint32, jnp.bool_]


@pytest.mark.parametrize("dtype", FILL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_uninitialized_fill_per_dtype_matches_interpret(dtype):
  """The padding of an edge block and a scratch buffer read before any
  write hold interpret=True's fill (primitives.uninitialized_value): NaN for
  floats, INT_MIN for signed ints (0 for int16, interpret mode's semaphore
  dtype), 0 for unsigned ints, False for bool."""
  from jax.experimental.pallas import tpu as pltpu

  def kernel(x_ref, o_ref, s_ref):
    @pl.when(pl.program_id(0) == 2)
    def _():
      o_ref[...] = s_ref[...]

    @pl.when(pl.program_id(0) < 2)
    def _():
      o_ref[...] = x_ref[...]
  x = jnp.ones((12, 128), dtype)
  spec = pl.BlockSpec((8, 128), lambda i: (jnp.minimum(i, 1), 0))
  out = check_against_interpret(
      kernel, jax.ShapeDtypeStruct((24, 128), dtype), x, grid=(3,),
      in_specs=[spec], out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), dtype)])
  out = np.asarray(out)
  np.testing.assert_array_equal(out[:12].astype(np.float64), 1)
  dt = np.dtype(dtype)
  if jnp.issubdtype(dt, jnp.floating):
    assert np.isnan(out[12:].astype(np.float32)).all()
  else:
    want = (False if dt == np.bool_ else 0 if dt == np.int16
            else np.iinfo(dt).min)
    np.testing.assert_array_equal(out[12:], np.full((12, 128), want, dt))
