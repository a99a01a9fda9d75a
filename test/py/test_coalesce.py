"""Grid coalescing (lowering/coalesce.py): a position-wise kernel runs on
blocks spanning the grid dimension that walks its last dimension.  Every
kernel here is compared bit for bit with the same kernel compiled as
written (PALLAS_CPU_COALESCE=0) and with interpret mode; coalescing is
checked to apply -- or, for kernels whose steps differ or are observed
(program ids, iota, reductions, other blocks, scratch, prefetch, aliases,
edge or out-of-bounds blocks, race detection, a random grid order), not
to apply."""
from __future__ import annotations

import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, kernel_specs


@contextlib.contextmanager
def _coalescing(on: bool):
  old = os.environ.get("PALLAS_CPU_COALESCE")
  os.environ["PALLAS_CPU_COALESCE"] = "1" if on else "0"
  try:
    yield
  finally:
    if old is None:
      del os.environ["PALLAS_CPU_COALESCE"]
    else:
      os.environ["PALLAS_CPU_COALESCE"] = old


_specs = kernel_specs


def _run(kernel, out_shape, args, *, exact=True, params=None, wrap=None,
         **kwargs):
  """(compiled result, the KernelSpec's ``coalesced``).  The result equals
  the kernel compiled as written bit for bit, and interpret mode's (bit
  for bit when ``exact``)."""
  params = params or pallas_cpu.CompilerParams(tpu_checks="off")
  wrap = wrap or (lambda f: f)

  def compiled(on):
    with _coalescing(on), _specs() as seen:
      out = jax.jit(wrap(pallas_cpu.pallas_call(
          kernel, out_shape=out_shape, backend="cpu", compiler_params=params,
          **kwargs)))(*args)
    (spec,) = seen
    return out, spec.coalesced

  got, coalesced = compiled(True)
  written, none = compiled(False)
  assert none is None
  want = jax.jit(wrap(pallas_cpu.pallas_call(
      kernel, out_shape=out_shape, backend="interpret", **kwargs)))(*args)
  for g, u, w in zip(jax.tree.leaves(got), jax.tree.leaves(written),
                     jax.tree.leaves(want)):
    assert_same(g, u)
    assert_same(g, w, exact=exact, rtol=1e-5, atol=1e-5)
  return got, coalesced


def _normal(shape, seed=0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape),
                     dtype)


def _scaled_add(x_ref, y_ref, o_ref):
  o_ref[...] = x_ref[...] * 2.0 + y_ref[...]


N = 512  # 1 MiB of f32 per operand: above coalesce.MIN_BYTES


def _tiled(kernel, n_in, block=(128, 128), shape=(N, N), dtype=jnp.float32,
           semantics=("parallel", "parallel"), index_map=None, **kwargs):
  index_map = index_map or (lambda i, j: (i, j))
  spec = pl.BlockSpec(block, index_map)
  grid = kwargs.pop("grid", (shape[0] // block[0], shape[1] // block[1]))
  return dict(kernel=kernel, out_shape=jax.ShapeDtypeStruct(shape, dtype),
              grid=grid, in_specs=[spec] * n_in, out_specs=spec,
              params=pallas_cpu.CompilerParams(
                  dimension_semantics=semantics, tpu_checks="off"), **kwargs)


@pytest.mark.parametrize("block", [(128, 128), (256, 128), (8, 256),
                                   (64, 128)])
@pytest.mark.parametrize("semantics", [("parallel", "parallel"),
                                       ("arbitrary", "arbitrary"),
                                       ("parallel", "arbitrary")])
def test_tiles_coalesce(block, semantics):
  x, y = _normal((N, N)), _normal((N, N), 1)
  got, coalesced = _run(args=(x, y), **_tiled(_scaled_add, 2, block,
                                               semantics=semantics))
  assert coalesced == (1, N // block[1])
  np.testing.assert_array_equal(got, x * 2.0 + y)


def test_the_demo_coalesces():
  n = 2048
  x, y = _normal((n, n)), _normal((n, n), 1)
  got, coalesced = _run(args=(x, y), **_tiled(_scaled_add, 2, (256, 256),
                                               shape=(n, n)))
  assert coalesced == (1, 8)


def test_mixed_dtypes_selects_calls_and_constants():
  @jax.jit
  def soft_clip(v):
    return jnp.where(v > 1.0, 1.0 + jnp.tanh(v - 1.0), v)

  def kernel(x_ref, k_ref, o_ref, p_ref):
    x = x_ref[...]
    k = k_ref[...]
    base = jnp.full(x.shape, 0.5, jnp.float32)
    o_ref[...] = (soft_clip(x) * k.astype(jnp.float32) + base).astype(
        jnp.bfloat16)
    p_ref[...] = jnp.where(k > 0, k * 3, -k)

  spec = pl.BlockSpec((64, 128), lambda i, j: (i, j))
  x = _normal((N, N))
  k = jnp.asarray(np.random.default_rng(2).integers(-5, 5, (N, N)),
                  jnp.int32)
  got, coalesced = _run(
      kernel, (jax.ShapeDtypeStruct((N, N), jnp.bfloat16),
               jax.ShapeDtypeStruct((N, N), jnp.int32)), (x, k),
      exact=False, grid=(N // 64, N // 128), in_specs=[spec, spec],
      out_specs=[spec, spec])
  assert coalesced == (1, 4)


def test_squeezed_leading_dimension_and_three_dim_grid():
  shape = (4, 256, 512)
  spec = pl.BlockSpec((None, 64, 128), lambda b, i, j: (b, i, j))
  x, y = _normal(shape), _normal(shape, 1)
  got, coalesced = _run(
      _scaled_add, jax.ShapeDtypeStruct(shape, jnp.float32), (x, y),
      grid=(4, 4, 4), in_specs=[spec, spec], out_specs=spec)
  assert coalesced == (2, 4)
  np.testing.assert_array_equal(got, x * 2.0 + y)


def test_last_dimension_walked_by_the_first_grid_index():
  spec = pl.BlockSpec((128, 128), lambda j, i: (i, j))
  x, y = _normal((N, N)), _normal((N, N), 1)
  got, coalesced = _run(
      _scaled_add, jax.ShapeDtypeStruct((N, N), jnp.float32), (x, y),
      grid=(4, 4), in_specs=[spec, spec], out_specs=spec)
  assert coalesced == (0, 4)


def test_revisits_not_coalesced():
  # grid (i, k, j): k does not select blocks, so each block is left and
  # revisited -- an error that coalescing j would hide (the revisits would
  # become consecutive).
  spec = pl.BlockSpec((128, 128), lambda i, k, j: (i, j))
  call = pallas_cpu.pallas_call(
      _scaled_add, out_shape=jax.ShapeDtypeStruct((N, N), jnp.float32),
      grid=(4, 3, 4), in_specs=[spec, spec], out_specs=spec, backend="cpu",
      compiler_params=pallas_cpu.CompilerParams(tpu_checks="off"))
  with _specs() as seen, pytest.raises(Exception, match="Revisited block"):
    jax.block_until_ready(jax.jit(call)(_normal((N, N)), _normal((N, N))))
  assert seen[0].coalesced is None
  # Consecutive revisits (k innermost) are allowed, and not coalesced
  # either.
  spec = pl.BlockSpec((128, 128), lambda i, j, k: (i, j))
  x, y = _normal((N, N)), _normal((N, N), 1)
  _, coalesced = _run(
      _scaled_add, jax.ShapeDtypeStruct((N, N), jnp.float32), (x, y),
      grid=(4, 4, 3), in_specs=[spec, spec], out_specs=spec)
  assert coalesced is None


def test_vmapped_kernel_coalesces():
  x, y = _normal((3, N, N)), _normal((3, N, N), 1)
  got, coalesced = _run(args=(x, y), wrap=jax.vmap,
                        **_tiled(_scaled_add, 2, (128, 128)))
  assert coalesced is not None and coalesced[1] == 4
  np.testing.assert_array_equal(got, x * 2.0 + y)


def _program_id_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...] + pl.program_id(1).astype(jnp.float32)


def _iota_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...] + jax.lax.broadcasted_iota(
      jnp.float32, x_ref.shape, 1)


def _row_sum_kernel(x_ref, o_ref):
  o_ref[...] = jnp.broadcast_to(jnp.sum(x_ref[...], axis=1, keepdims=True),
                                o_ref.shape)


def _roll_kernel(x_ref, o_ref):
  o_ref[...] = pltpu.roll(x_ref[...], 1, 1)


def _transpose_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...].T


@pytest.mark.parametrize("kernel", [_program_id_kernel, _iota_kernel,
                                    _row_sum_kernel, _roll_kernel,
                                    _transpose_kernel],
                         ids=lambda k: k.__name__[1:])
def test_step_dependent_bodies_not_coalesced(kernel):
  x = _normal((N, N))
  _, coalesced = _run(args=(x,), exact=kernel is not _row_sum_kernel,
                      **_tiled(kernel, 1))
  assert coalesced is None


@pytest.mark.parametrize("index_map", [
    lambda i, j: ((i + j) % 4, j),  # the last grid index selects rows too
    lambda i, j: (i, j + 0),        # not the grid index itself
    lambda i, j: (i, 3 - j),        # walks backwards
], ids=["reused", "computed", "reversed"])
def test_other_index_maps_not_coalesced(index_map):
  x, y = _normal((N, N)), _normal((N, N), 1)
  _, coalesced = _run(args=(x, y), **_tiled(_scaled_add, 2,
                                            index_map=index_map))
  assert coalesced is None


def test_different_blocks_not_coalesced():
  def kernel(x_ref, b_ref, o_ref):
    o_ref[...] = x_ref[...] + b_ref[...]

  spec = pl.BlockSpec((128, 128), lambda i, j: (i, j))
  other = pl.BlockSpec((128, 128), lambda i, j: (j, i))
  x, b = _normal((N, N)), _normal((N, N), 1)
  _, coalesced = _run(kernel, jax.ShapeDtypeStruct((N, N), jnp.float32),
                      (x, b), grid=(4, 4), in_specs=[spec, other],
                      out_specs=spec)
  assert coalesced is None


@pytest.mark.parametrize("shape", [(N, N - 64), (N - 40, N - 100),
                                   (N - 40, N)])
def test_edge_blocks_coalesce(shape):
  # Partial edge blocks along the last dimension disappear (the wide
  # block is the whole dimension); along the others they stay padded
  # copies, as written.  In-bounds results are interpret mode's.
  x, y = _normal(shape), _normal(shape, 1)
  grid = (-(-shape[0] // 128), -(-shape[1] // 128))
  got, coalesced = _run(args=(x, y), **_tiled(
      _scaled_add, 2, shape=shape, grid=grid))
  assert coalesced == (1, grid[1])
  np.testing.assert_array_equal(got, x * 2.0 + y)


@pytest.mark.parametrize("rows,block_rows,want", [
    (472, 128, 118),   # 472 = 4 x 118: no edge block left
    (2000, 256, 250),
    (509, 128, None),  # prime: no size divides it, the edge block stays
])
def test_edge_rows_reblocked(rows, block_rows, want):
  shape = (rows, 640)
  x, y = _normal(shape), _normal(shape, 1)
  grid = (-(-rows // block_rows), 5)
  with _specs() as seen:
    got, coalesced = _run(args=(x, y), **_tiled(
        _scaled_add, 2, block=(block_rows, 128), shape=shape, grid=grid))
  assert coalesced == (1, 5)
  blocks = {tuple(b.block_size for b in s.grid_mapping.block_mappings[0]
                  .block_shape) for s in seen if s.coalesced}
  assert blocks == {(want or block_rows, 640)}
  np.testing.assert_array_equal(got, x * 2.0 + y)


def test_out_of_bounds_blocks_not_coalesced():
  # A grid longer than the array: the out-of-bounds error names the block
  # shape as written.
  spec = pl.BlockSpec((128, 128), lambda i, j: (i, j))
  call = pallas_cpu.pallas_call(
      _scaled_add, out_shape=jax.ShapeDtypeStruct((N, N), jnp.float32),
      grid=(5, 4), in_specs=[spec, spec], out_specs=spec, backend="cpu",
      compiler_params=pallas_cpu.CompilerParams(tpu_checks="off"))
  with _specs() as seen, pytest.raises(Exception, match="(?i)out-of-bounds"):
    jax.block_until_ready(jax.jit(call)(_normal((N, N)), _normal((N, N))))
  assert seen[0].coalesced is None


def test_scratch_prefetch_and_aliases_not_coalesced():
  x = _normal((N, N))

  def with_scratch(x_ref, o_ref, s_ref):
    s_ref[...] = x_ref[...] * 2.0
    o_ref[...] = s_ref[...] + 1.0

  _, coalesced = _run(args=(x,), **_tiled(
      with_scratch, 1, scratch_shapes=[pltpu.VMEM((128, 128), jnp.float32)]))
  assert coalesced is None

  def prefetched(s_ref, x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0

  spec = pl.BlockSpec((128, 128), lambda i, j, s: (i, j))
  _, coalesced = _run(
      prefetched, jax.ShapeDtypeStruct((N, N), jnp.float32),
      (jnp.zeros((4,), jnp.int32), x),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(4, 4), in_specs=[spec],
          out_specs=spec))
  assert coalesced is None

  def add_one(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0

  _, coalesced = _run(args=(x,), input_output_aliases={0: 0},
                      **_tiled(add_one, 1))
  assert coalesced is None


def test_small_arrays_not_coalesced():
  x, y = _normal((64, 256)), _normal((64, 256), 1)
  _, coalesced = _run(args=(x, y), **_tiled(_scaled_add, 2, (8, 128),
                                            shape=(64, 256)))
  assert coalesced is None


@pytest.mark.parametrize("params", [
    dict(detect_races=True, on_race="raise"),
    dict(grid_order="random", seed=3),
], ids=["races", "random_order"])
def test_observed_steps_not_coalesced(params):
  x, y = _normal((N, N)), _normal((N, N), 1)
  kw = _tiled(_scaled_add, 2)
  kw["params"] = pallas_cpu.CompilerParams(
      dimension_semantics=("parallel", "parallel"), tpu_checks="off",
      **params)
  _, coalesced = _run(args=(x, y), **kw)
  assert coalesced is None
