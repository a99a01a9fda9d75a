"""emit_pipeline in its primitive form (emit_pipeline_p / pipeline_body_p,
behind ``jax_use_emit_pipeline_primitive``) and lax.axis_index.

TPU interpret mode has no rule for emit_pipeline_p, so each pipeline kernel
is checked against jnp and against the same kernel with the flag off (where
emit_pipeline traces into DMAs, semaphores and loops directly)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import config
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

import pallas_cpu
from conftest import assert_same

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((64, 128)), jnp.float32)
Y = jnp.asarray(RNG.standard_normal((64, 128)), jnp.float32)
ANY = pl.BlockSpec(memory_space=pl.ANY)
MODES = ["on_wait", "eager"]


def _run(kernel, out_shape, *args, primitive, mode="on_wait", **kw):
  """The kernel compiled with the flag set to ``primitive``: traced afresh
  (no jit cache shared between the two forms)."""
  with config.use_emit_pipeline_primitive(primitive):
    return pallas_cpu.pallas_call(
        kernel, out_shape=out_shape,
        compiler_params=pallas_cpu.CompilerParams(dma_execution_mode=mode),
        **kw)(*args)


def _both_forms(kernel, out_shape, *args, want, mode="on_wait", **kw):
  assert _binds_emit_pipeline(kernel, out_shape, *args, primitive=True, **kw)
  assert not _binds_emit_pipeline(kernel, out_shape, *args, primitive=False,
                                  **kw)
  got = _run(kernel, out_shape, *args, primitive=True, mode=mode, **kw)
  assert_same(got, _run(kernel, out_shape, *args, primitive=False, mode=mode,
                        **kw))
  assert_same(got, want)
  return got


def _binds_emit_pipeline(kernel, out_shape, *args, primitive, **kw) -> bool:
  with config.use_emit_pipeline_primitive(primitive):
    text = str(jax.make_jaxpr(pallas_cpu.pallas_call(
        kernel, out_shape=out_shape, **kw))(*args))
  return "emit_pipeline[" in text


@pytest.mark.parametrize("mode", MODES)
def test_blocked_add(mode):
  """The test_memory_model pattern: a blocked add over HBM refs."""
  def inner(x_ref, y_ref, o_ref):
    o_ref[...] = x_ref[...] + y_ref[...]

  def kernel(x_hbm, y_hbm, o_hbm):
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    pltpu.emit_pipeline(inner, grid=(8,), in_specs=[spec, spec],
                        out_specs=spec)(x_hbm, y_hbm, o_hbm)

  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, Y,
              want=X + Y, mode=mode, in_specs=[ANY, ANY], out_specs=ANY)


def test_program_id_and_num_programs_in_the_body_are_the_pipelines():
  """A 2-D pipeline whose body writes its own grid position."""
  def inner(x_ref, o_ref):
    i, j = pl.program_id(0), pl.program_id(1)
    tag = (i * 10 + j + 100 * pl.num_programs(1)).astype(jnp.float32)
    o_ref[...] = x_ref[...] * 2 + tag

  def kernel(x_hbm, o_hbm):
    spec = pl.BlockSpec((16, 32), lambda i, j: (i, j))
    pltpu.emit_pipeline(inner, grid=(4, 4), in_specs=[spec],
                        out_specs=spec)(x_hbm, o_hbm)

  ii, jj = np.meshgrid(np.arange(64) // 16, np.arange(128) // 32,
                       indexing="ij")
  want = X * 2 + jnp.asarray(ii * 10 + jj + 400, jnp.float32)
  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, want=want,
              in_specs=[ANY], out_specs=ANY)


def test_matmul_accumulating_over_the_pipelines_k_axis():
  """The canonical inner-pipeline matmul: the output block stays resident
  over k, zeroed when the body sees k == 0."""
  a = jnp.asarray(RNG.integers(-4, 4, (64, 96)), jnp.float32)
  b = jnp.asarray(RNG.integers(-4, 4, (96, 128)), jnp.float32)

  def inner(a_ref, b_ref, o_ref):
    @pl.when(pl.program_id(2) == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)
    o_ref[...] += jnp.dot(a_ref[...], b_ref[...])

  def kernel(a_hbm, b_hbm, o_hbm):
    pltpu.emit_pipeline(
        inner, grid=(2, 2, 3),
        in_specs=[pl.BlockSpec((32, 32), lambda i, j, k: (i, k)),
                  pl.BlockSpec((32, 64), lambda i, j, k: (k, j))],
        out_specs=pl.BlockSpec((32, 64), lambda i, j, k: (i, j)))(
            a_hbm, b_hbm, o_hbm)

  _both_forms(kernel, jax.ShapeDtypeStruct((64, 128), jnp.float32), a, b,
              want=a @ b, in_specs=[ANY, ANY], out_specs=ANY)


def test_nested_grids_over_transformed_refs():
  """An outer pallas_call grid over row bands; each step pipelines over its
  band of the HBM refs (``ref.at[pl.ds(...)]``).  The body reads the
  pipeline's index with pl.program_id and the kernel's through a value
  captured outside the pipeline (a body constant)."""
  def kernel(x_hbm, o_hbm):
    band = pl.program_id(0)
    rows = pl.ds(pl.multiple_of(band * 32, 32), 32)

    def inner(x_ref, o_ref):
      tag = (band * 10 + pl.program_id(0)).astype(jnp.float32)
      o_ref[...] = x_ref[...] + tag

    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    pltpu.emit_pipeline(inner, grid=(4,), in_specs=[spec], out_specs=spec)(
        x_hbm.at[rows], o_hbm.at[rows])

  tag = (np.arange(64) // 32) * 10 + (np.arange(64) % 32) // 8
  want = X + jnp.asarray(tag[:, None], jnp.float32)
  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, want=want,
              grid=(2,), in_specs=[ANY], out_specs=ANY)


def test_pipeline_over_vmem_blocks_of_an_outer_grid():
  """The outer grid's BlockSpecs bring (32, 128) blocks into VMEM; the
  pipeline subdivides each into (8, 64) tiles."""
  def inner(x_ref, y_ref, o_ref):
    o_ref[...] = x_ref[...] * y_ref[...] - pl.program_id(1).astype(jnp.float32)

  def kernel(x_ref, y_ref, o_ref):
    spec = pl.BlockSpec((8, 64), lambda i, j: (i, j))
    pltpu.emit_pipeline(inner, grid=(4, 2), in_specs=[spec, spec],
                        out_specs=spec)(x_ref, y_ref, o_ref)

  block = pl.BlockSpec((32, 128), lambda i: (i, 0))
  cols = jnp.asarray((np.arange(128) // 64)[None, :], jnp.float32)
  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, Y,
              want=X * Y - cols, grid=(2,), in_specs=[block, block],
              out_specs=block)


def test_nested_pipelines():
  """A pipeline inside a pipeline's body: the inner body's program ids are
  the inner pipeline's, the outer one's index is captured."""
  def kernel(x_hbm, o_hbm):
    def outer_body(x_ref, o_ref):
      i = pl.program_id(0)

      def inner_body(xb, ob):
        ob[...] = xb[...] + (i * 100 + pl.program_id(0)).astype(jnp.float32)

      spec = pl.BlockSpec((8, 64), lambda j: (0, j))
      pltpu.emit_pipeline(inner_body, grid=(2,), in_specs=[spec],
                          out_specs=spec)(x_ref, o_ref)

    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    pltpu.emit_pipeline(outer_body, grid=(8,), in_specs=[spec],
                        out_specs=spec)(x_hbm, o_hbm)

  tag = (np.arange(64) // 8)[:, None] * 100 + (np.arange(128) // 64)[None, :]
  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X,
              want=X + jnp.asarray(tag, jnp.float32),
              in_specs=[ANY], out_specs=ANY)


def test_dynamic_pipeline_grid_size():
  """A pipeline whose step count is read at run time (num_programs in the
  body is then a run-time value too)."""
  def inner(x_ref, o_ref):
    o_ref[...] = x_ref[...] + pl.num_programs(0).astype(jnp.float32)

  def kernel(n_ref, x_hbm, o_hbm):
    pltpu.sync_copy(x_hbm, o_hbm)  # the rows past the pipeline's keep x
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    pltpu.emit_pipeline(inner, grid=(n_ref[0],), in_specs=[spec],
                        out_specs=spec)(x_hbm, o_hbm)

  n = 5
  want = X.at[:n * 8].add(float(n))
  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype),
              jnp.array([n], jnp.int32), X, want=want,
              in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM), ANY],
              out_specs=ANY)


def test_axis_index_of_the_kernels_named_axis_inside_the_pipeline():
  def kernel(x_hbm, o_hbm):
    def inner(x_ref, o_ref):
      o_ref[...] = x_ref[...] + jax.lax.axis_index("band").astype(jnp.float32)

    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    rows = pl.ds(pl.program_id(0) * 32, 32)
    pltpu.emit_pipeline(inner, grid=(4,), in_specs=[spec], out_specs=spec)(
        x_hbm.at[rows], o_hbm.at[rows])

  want = X + jnp.asarray((np.arange(64) // 32)[:, None], jnp.float32)
  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, want=want,
              grid=(("band", 2),), in_specs=[ANY], out_specs=ANY)


# -- axis_index -------------------------------------------------------------------
def test_axis_index_of_named_grid_axes():
  def kernel(x_ref, o_ref):
    i, j = jax.lax.axis_index("i"), jax.lax.axis_index("j")
    o_ref[...] = x_ref[...] + (i * 10 + j).astype(jnp.float32)

  kw = dict(out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype),
            grid=(("i", 4), ("j", 2)),
            in_specs=[pl.BlockSpec((16, 64), lambda i, j: (i, j))],
            out_specs=pl.BlockSpec((16, 64), lambda i, j: (i, j)))
  got = pallas_cpu.pallas_call(kernel, **kw)(X)
  # The HLO interpreter binds no grid names; TPU interpret mode does.
  want = pallas_cpu.pallas_call(kernel, backend="tpu-interpret", **kw)(X)
  assert_same(got, want)
  ii, jj = np.meshgrid(np.arange(64) // 16, np.arange(128) // 64,
                       indexing="ij")
  assert_same(got, X + jnp.asarray(ii * 10 + jj, jnp.float32))


def test_axis_index_of_a_shard_map_axis():
  """(One device here; several: test/devices.)"""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + jax.lax.axis_index("x") + 7

  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.int32))(x)

  mesh = jax.make_mesh((1,), ("x",))
  g = jax.shard_map(f, mesh=mesh, in_specs=P(), out_specs=P(),
                    check_vma=False)
  got = jax.jit(g)(jnp.ones((8, 128), jnp.int32))
  np.testing.assert_array_equal(got, np.full((8, 128), 8, np.int32))


def test_a_kernel_in_a_partly_automatic_shard_map_is_unsupported():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + jax.lax.axis_index("x")

  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.int32))(x)

  mesh = jax.make_mesh((1, 1), ("x", "y"))
  g = jax.shard_map(f, mesh=mesh, in_specs=P(), out_specs=P(),
                    axis_names={"x"}, check_vma=False)
  with pytest.raises(NotImplementedError, match=r"leaves mesh axes \['y'\]"):
    jax.jit(g)(jnp.zeros((8, 128), jnp.int32))


@pytest.mark.parametrize("options", [
    dict(no_pipelining=True),
    dict(buffers=3),
    dict(buffers=1),
], ids=["no_pipelining", "buffered3", "buffered1"])
def test_pipeline_options(options):
  """Pipeline parameters reach the rebuilt pipeline (no_pipelining) and the
  input block mappings keep their buffer counts (outputs allow at most 2)."""
  options = dict(options)
  buffers = options.pop("buffers", None)
  mode = {} if buffers is None else dict(pipeline_mode=pl.Buffered(buffers))

  def inner(x_ref, o_ref):
    o_ref[...] = x_ref[...] * pl.program_id(0).astype(jnp.float32)

  def kernel(x_hbm, o_hbm):
    in_spec = pl.BlockSpec((8, 128), lambda i: (i, 0), **mode)
    out_spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    pltpu.emit_pipeline(inner, grid=(8,), in_specs=[in_spec],
                        out_specs=out_spec, **options)(x_hbm, o_hbm)

  want = X * jnp.asarray((np.arange(64) // 8)[:, None], jnp.float32)
  _both_forms(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, want=want,
              in_specs=[ANY], out_specs=ANY)
