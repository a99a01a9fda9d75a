"""Row splitting (grid.RowSplit): a kernel whose grid has no parallel
dimension, and whose body computes every output element from the elements
at the same position (fusion.row_local), runs its blocks in row bands on
the runtime's threads.  Every kernel here is compared with interpret mode
bit for bit; the split is checked to apply -- or, for kernels that must
not be split (reductions across rows, scratch, program ids, conditionals,
partial windows, per-row vectors that are not blocks), not to apply."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, kernel_specs


def _specs(split: bool = True):
  """The KernelSpecs built while the block runs; with ``split=False``,
  none gets a row split."""
  return kernel_specs(None if split else (
      lambda spec: dataclasses.replace(spec, row_split=None)))


def _run(kernel, out_shape, args, *, num_threads=None, exact=True,
         semantics=None, **kwargs):
  """(compiled result, its RowSplit or None).  The result equals the
  same kernel compiled without the split bit for bit, and interpret
  mode's (bit for bit when ``exact``; else to float rounding: XLA
  contracts multiply-adds, our exp is another approximation)."""
  params = pallas_cpu.CompilerParams(num_threads=num_threads,
                                     tpu_checks="off",
                                     dimension_semantics=semantics)

  def compiled(split):
    with _specs(split) as seen:
      out = jax.jit(pallas_cpu.pallas_call(
          kernel, out_shape=out_shape, backend="cpu", compiler_params=params,
          **kwargs))(*args)
    (spec,) = seen
    return out, spec.row_split

  got, split = compiled(True)
  whole, _ = compiled(False)
  want = jax.jit(pallas_cpu.pallas_call(
      kernel, out_shape=out_shape, backend="interpret", **kwargs))(*args)
  for g, u, w in zip(jax.tree.leaves(got), jax.tree.leaves(whole),
                     jax.tree.leaves(want)):
    assert_same(g, u)
    assert_same(g, w, exact=exact, rtol=1e-5, atol=1e-5)
  return got, split


def _normal(shape, seed=0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape),
                     dtype)


def _scaled_add(x_ref, y_ref, o_ref):
  o_ref[...] = x_ref[...] * 2.0 + y_ref[...]


@pytest.mark.parametrize("num_threads", [None, 1, 3])
def test_one_block_is_split(num_threads):
  x, y = _normal((512, 1024)), _normal((512, 1024), 1)
  spec = pl.BlockSpec((512, 1024), lambda i: (0, 0))
  got, split = _run(_scaled_add, jax.ShapeDtypeStruct(x.shape, x.dtype),
                    (x, y), grid=(1,), in_specs=[spec, spec], out_specs=spec,
                    num_threads=num_threads)
  assert split is not None and split.bands > 1
  assert split.rows * split.bands == 512
  assert_same(got, x * 2.0 + y)


def test_no_grid_whole_arrays_are_split():
  x, y = _normal((256, 2048)), _normal((256, 2048), 1)
  got, split = _run(_scaled_add, jax.ShapeDtypeStruct(x.shape, x.dtype),
                    (x, y))
  assert split is not None


@pytest.mark.parametrize("block,grid,index_map", [
    ((128, 1024), (4,), lambda i: (i, 0)),              # row blocks
    ((256, 256), (2, 4), lambda i, j: (i, j)),          # 2-D tiles
    ((256, 256), (2, 4), lambda i, j: (1 - i, 3 - j)),  # reversed order
])
def test_grid_without_parallel_dimension_is_split(block, grid, index_map):
  x, y = _normal((512, 1024)), _normal((512, 1024), 1)
  spec = pl.BlockSpec(block, index_map)
  got, split = _run(
      _scaled_add, jax.ShapeDtypeStruct(x.shape, x.dtype), (x, y), grid=grid,
      in_specs=[spec, spec], out_specs=spec)
  assert split is not None
  assert_same(got, x * 2.0 + y)


def test_broadcast_vectors_and_columns():
  """Row vectors (a (C,) block, a (1, C) block) broadcast along the rows
  stay whole; a per-row column (B, 1) is split with the rows."""
  x = _normal((512, 1024))
  gamma, beta = _normal((1024,), 1), _normal((1, 1024), 2)
  scale = _normal((512, 1), 3)

  def kernel(x_ref, g_ref, b_ref, s_ref, o_ref):
    o_ref[...] = (x_ref[...] * g_ref[...] + b_ref[...]) * s_ref[...]

  got, split = _run(
      kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), (x, gamma, beta, scale),
      grid=(1,), in_specs=[pl.BlockSpec((512, 1024), lambda i: (0, 0)),
                           pl.BlockSpec((1024,), lambda i: (0,)),
                           pl.BlockSpec((1, 1024), lambda i: (0, 0)),
                           pl.BlockSpec((512, 1), lambda i: (0, 0))],
      out_specs=pl.BlockSpec((512, 1024), lambda i: (0, 0)), exact=False)
  assert split is not None
  assert split.split == (True, False, False, True, True)


def test_mixed_dtypes_selects_and_calls():
  """Conversions, comparisons, selects, integer ops, a jitted helper and a
  custom_jvp function (relu) are position by position."""
  x = _normal((512, 1024))
  n = jnp.asarray(np.random.default_rng(1).integers(-50, 50, (512, 1024)),
                  jnp.int32)

  @jax.jit
  def helper(a):
    return jnp.where(a > 0, a * a, -a)

  def kernel(x_ref, n_ref, o_ref, m_ref):
    x = x_ref[...]
    k = n_ref[...]
    v = helper(x) + jax.nn.relu(x) + jax.nn.sigmoid(x)
    v = v + (k % 7).astype(jnp.float32) + jnp.maximum(x, 0.5)
    o_ref[...] = v.astype(jnp.bfloat16)
    m_ref[...] = (k >> 2) ^ jnp.where(x > 0, k, -k)

  got, split = _run(
      kernel, (jax.ShapeDtypeStruct(x.shape, jnp.bfloat16),
               jax.ShapeDtypeStruct(x.shape, jnp.int32)), (x, n), exact=False)
  assert split is not None


def test_squeezed_dimensions():
  x = _normal((4, 512, 512))

  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.exp(x_ref[...]) - 1.0

  spec = pl.BlockSpec((None, 512, 512), lambda i: (i, 0, 0))
  got, split = _run(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), (x,),
                    grid=(4,), in_specs=[spec], out_specs=spec, exact=False)
  assert split is not None


def test_revisited_output_still_reported():
  """Index maps, bounds checks and revisit tracking stay those of the
  whole blocks: a non-adjacent revisit is the same error."""
  x = _normal((512, 1024))
  spec = pl.BlockSpec((256, 1024), lambda i: (i % 2, 0))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0

  with _specs() as seen, pytest.raises(Exception, match="Revisited block"):
    jax.block_until_ready(jax.jit(pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(3,),
        in_specs=[spec], out_specs=spec, backend="cpu"))(x))
  assert seen[0].row_split is not None


# -- kernels that must not be split ------------------------------------------

def _whole(shape):
  return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def _not_split(kernel, args, out_shape=None, **kwargs):
  out_shape = out_shape or jax.ShapeDtypeStruct(args[0].shape, args[0].dtype)
  got, split = _run(kernel, out_shape, args, **kwargs)
  assert split is None
  return got


def test_reduction_across_rows_not_split():
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref):
    x = x_ref[...]
    o_ref[...] = x - jnp.max(x, axis=0, keepdims=True)

  _not_split(kernel, (x,), grid=(1,), in_specs=[_whole(x.shape)],
             out_specs=_whole(x.shape))


def test_row_reductions_are_split():
  # Reductions along a row are row-local: each band reduces its own rows,
  # in the same order as the whole block does (bit for bit).
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref, s_ref):
    x = x_ref[...]
    o_ref[...] = x - jnp.max(x, axis=1, keepdims=True)
    s_ref[...] = jnp.broadcast_to(jnp.sum(x * x, axis=1, keepdims=True),
                                  s_ref.shape)

  shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
  got, split = _run(kernel, (shape, shape), (x,), exact=False)
  assert split is not None and split.threaded


def _softmax(x_ref, o_ref):
  x = x_ref[...]
  e = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))
  o_ref[...] = e / jnp.sum(e, axis=1, keepdims=True)


def _layer_norm(x_ref, g_ref, b_ref, o_ref):
  x = x_ref[...]
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  var = jnp.mean(xc * xc, axis=1, keepdims=True)
  o_ref[...] = xc * jax.lax.rsqrt(var + 1e-5) * g_ref[...] + b_ref[...]


@pytest.mark.parametrize("block_rows", [256, 64])
def test_parallel_grid_runs_cache_bands(block_rows):
  # A parallel grid keeps its dimension on the threads; each step runs its
  # blocks in bands small enough for the cache (whole-block temporaries
  # -- the exp, the centred values -- become a band's).
  x = _normal((1024, 2048))
  spec = pl.BlockSpec((block_rows, 2048), lambda i: (i, 0))
  got, split = _run(
      _softmax, jax.ShapeDtypeStruct(x.shape, x.dtype), (x,),
      exact=False, grid=(1024 // block_rows,), in_specs=[spec],
      out_specs=spec, semantics=("parallel",))
  assert split is not None and not split.threaded and split.bands > 1
  assert split.rows * split.bands == block_rows
  g, b = _normal((1, 2048), 1), _normal((1, 2048), 2)
  vec = pl.BlockSpec((1, 2048), lambda i: (0, 0))
  got, split = _run(
      _layer_norm, jax.ShapeDtypeStruct(x.shape, x.dtype), (x, g, b),
      exact=False, grid=(1024 // block_rows,), in_specs=[spec, vec, vec],
      out_specs=spec, semantics=("parallel",))
  assert split is not None and not split.threaded
  assert split.split == (True, False, False, True)


def test_parallel_position_wise_or_small_steps_no_cache_bands():
  x, y = _normal((1024, 2048)), _normal((1024, 2048), 1)
  spec = pl.BlockSpec((256, 2048), lambda i: (i, 0))
  parallel = ("parallel",)
  # Position-wise: one fused pass already, no temporary to keep in cache.
  _not_split(_scaled_add, (x, y), grid=(4,), in_specs=[spec, spec],
             out_specs=spec, semantics=parallel)
  # Steps within the cache already.
  small = pl.BlockSpec((16, 2048), lambda i: (i, 0))
  _not_split(_softmax, (x,), grid=(64,), in_specs=[small], out_specs=small,
             exact=False, semantics=parallel)


def test_scratch_accumulator_not_split():
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref, acc_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)
    acc_ref[...] += x_ref[...]
    o_ref[...] = acc_ref[...]

  spec = pl.BlockSpec((128, 1024), lambda i: (0, 0))
  _not_split(kernel, (x,), out_shape=jax.ShapeDtypeStruct((128, 1024),
                                                          jnp.float32),
             grid=(4,), in_specs=[pl.BlockSpec((128, 1024), lambda i: (i, 0))],
             out_specs=spec,
             scratch_shapes=[pltpu.VMEM((128, 1024), jnp.float32)])


def test_program_id_not_split():
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + pl.program_id(0).astype(jnp.float32)

  spec = pl.BlockSpec((128, 1024), lambda i: (i, 0))
  _not_split(kernel, (x,), grid=(4,), in_specs=[spec], out_specs=spec)


def test_when_not_split():
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]

    @pl.when(pl.program_id(0) == 1)
    def _():
      o_ref[...] = x_ref[...] * 3.0

  spec = pl.BlockSpec((128, 1024), lambda i: (i, 0))
  _not_split(kernel, (x,), grid=(4,), in_specs=[spec], out_specs=spec)


def test_iota_and_roll_not_split():
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref):
    rows = jax.lax.broadcasted_iota(jnp.int32, x_ref.shape, 0)
    o_ref[...] = pltpu.roll(x_ref[...], 1, 0) + rows.astype(jnp.float32)

  _not_split(kernel, (x,))


def test_partial_window_not_split():
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]
    o_ref[0:8, :] = x_ref[8:16, :]

  _not_split(kernel, (x,))


def test_per_row_vector_not_split():
  """A (B,) vector broadcast along the columns (v[:, None]) holds one
  value per row but is not a block with rows: cutting x's rows without
  it would misalign them, so nothing is split."""
  x, v = _normal((512, 512)), _normal((512,), 1)

  def kernel(x_ref, v_ref, o_ref):
    o_ref[...] = x_ref[...] * v_ref[...][:, None]

  _not_split(kernel, (x, v))


def test_small_kernel_not_split():
  x, y = _normal((64, 256)), _normal((64, 256), 1)
  _not_split(_scaled_add, (x, y))


def test_edge_blocks_not_split():
  x = _normal((500, 1000))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 3.0 + 1.0

  spec = pl.BlockSpec((256, 1024), lambda i: (i, 0))
  _not_split(kernel, (x,), grid=(2,), in_specs=[spec], out_specs=spec,
             exact=False)


def test_aliased_not_split():
  x = _normal((512, 1024))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0

  _not_split(kernel, (x,), input_output_aliases={0: 0})


def test_parallel_grid_uses_its_dimension():
  x, y = _normal((512, 1024)), _normal((512, 1024), 1)
  spec = pl.BlockSpec((128, 1024), lambda i: (i, 0))
  with _specs() as seen:
    got = jax.jit(pallas_cpu.pallas_call(
        _scaled_add, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=(4,), in_specs=[spec, spec], out_specs=spec, backend="cpu",
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",))))(x, y)
  assert seen[0].row_split is None and seen[0].parallel_dim == 0
  assert_same(got, x * 2.0 + y)


def test_race_detection_not_split():
  x, y = _normal((512, 1024)), _normal((512, 1024), 1)
  with _specs() as seen:
    got = jax.jit(pallas_cpu.pallas_call(
        _scaled_add, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        backend="cpu",
        compiler_params=pallas_cpu.CompilerParams(detect_races=True)))(x, y)
  assert seen[0].row_split is None
  assert_same(got, x * 2.0 + y)


# -- edge blocks of position-wise kernels (grid.padding_plan) ----------------

def _edge_call(kernel, x, block, in_map, out_map, backend, n_out=1, **kw):
  grid = tuple(-(-n // b) for n, b in zip(x.shape, block))
  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  return jax.jit(pallas_cpu.pallas_call(
      kernel, out_shape=(out,) * n_out if n_out > 1 else out, grid=grid,
      in_specs=[pl.BlockSpec(block, in_map)],
      out_specs=([pl.BlockSpec(block, out_map)] * n_out if n_out > 1
                 else pl.BlockSpec(block, out_map)),
      backend=backend, **kw))(x)


@pytest.mark.parametrize("semantics", [None, ("parallel", "arbitrary")])
def test_position_wise_edge_blocks(semantics):
  """Edge blocks of a position-wise kernel skip the padding fills and the
  output copy-in; the in-bounds results are interpret mode's, bit for
  bit (padding reaches only the outputs' padding, which is dropped)."""
  x = _normal((200, 300))

  def kernel(x_ref, o_ref, p_ref):
    o_ref[...] = jnp.where(x_ref[...] > 0, x_ref[...], -x_ref[...]) * 3.0
    p_ref[...] = jnp.zeros_like(p_ref) + 1.0
    p_ref[...] += x_ref[...]   # reads its own (written) block

  kw = {} if semantics is None else dict(
      compiler_params=pltpu.CompilerParams(dimension_semantics=semantics))
  args = (kernel, x, (64, 128), lambda i, j: (i, j), lambda i, j: (i, j))
  got = _edge_call(*args, "cpu", n_out=2, **kw)
  want = _edge_call(*args, "interpret", n_out=2, **kw)
  for g, w in zip(got, want):
    assert_same(g, w)


def test_padding_seen_by_a_roll_keeps_the_fill():
  """A roll brings the padding into in-bounds positions: interpret mode's
  NaN fill shows in the edge blocks' results, and so must ours."""
  x = _normal((200, 300))

  def kernel(x_ref, o_ref):
    o_ref[...] = pltpu.roll(x_ref[...], 1, 1) + 1.0

  args = (kernel, x, (64, 128), lambda i, j: (i, j), lambda i, j: (i, j))
  got = _edge_call(*args, "cpu")
  assert np.isnan(np.asarray(got)).any()
  assert_same(got, _edge_call(*args, "interpret"))


def test_misaligned_blocks_keep_the_fill():
  """Output block (i, j) computed from input block (n - 1 - i, j): valid
  outputs read the input's padding (NaN in interpret mode) at the edge."""
  x = _normal((200, 300))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2.0

  args = (kernel, x, (64, 128), lambda i, j: (3 - i, j), lambda i, j: (i, j))
  got = _edge_call(*args, "cpu")
  assert np.isnan(np.asarray(got)).any()
  assert_same(got, _edge_call(*args, "interpret"))
