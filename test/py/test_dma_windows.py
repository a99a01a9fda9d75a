"""DMA windows of run-time size and windows reaching into tile padding.

``pl.ds(start, n)`` with a traced ``n`` on a DMA's source or destination,
on any dimension (the second-minor and minor included), and what Mosaic
does with a window that reaches past the array's logical end into the
padding of its last tile (TPU stores every buffer outside SMEM in whole
tiles): reads there give the uninitialized value, writes there are dropped,
the semaphore counts the whole window.  ``pltpu.emit_pipeline`` relies on
both: its edge blocks (an array whose size is not a multiple of the block)
are rounded up to the tiling, and its ``pl.BoundedSlice`` blocks have
run-time sizes.

References: plain jnp, and TPU interpret mode with
``buffer_bounds="padded"`` (its default, "logical", raises on the edge
blocks that Mosaic runs; ``interpret=True`` cannot trace a run-time size).
"""
from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax._src.pallas.mosaic import tpu_info

import pallas_cpu
from conftest import assert_same

ANY = pl.BlockSpec(memory_space=pl.ANY)
SMEM = pl.BlockSpec(memory_space=pltpu.SMEM)
DMA_SEM = pltpu.SemaphoreType.DMA(())
PADDED = pltpu.InterpretParams(buffer_bounds="padded")


def _values(rng, shape, dtype):
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.integer):
    return jnp.asarray(rng.integers(-100, 100, shape).astype(dtype))
  return jnp.asarray(rng.standard_normal(shape).astype(dtype))


def _on(backend, fn):
  """``fn()`` compiled (backend "cpu") or under TPU interpret mode with
  padded buffer bounds ("padded")."""
  if backend == "cpu":
    with pallas_cpu.force_cpu_backend():
      return jax.block_until_ready(fn(None))
  return jax.block_until_ready(fn(PADDED))


# -- emit_pipeline's edge blocks --------------------------------------------------

def _pipelined_affine(x, block):
  """o = 2x + 1 through emit_pipeline with ``block``-shaped blocks over the
  whole array: the blocks at the array's edges are rounded up to the tile
  (pipeline._create_blocked_slice) and reach into the padding."""
  rows, cols = x.shape
  br, bc = block

  def inner(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2 + 1

  def kernel(x_hbm, o_hbm):
    pltpu.emit_pipeline(
        inner, grid=(pl.cdiv(rows, br), pl.cdiv(cols, bc)),
        in_specs=[pl.BlockSpec((br, bc), lambda i, j: (i, j))],
        out_specs=[pl.BlockSpec((br, bc), lambda i, j: (i, j))])(x_hbm, o_hbm)

  def run(interpret):
    kw = {} if interpret is None else dict(interpret=interpret)
    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape,
                                                                  x.dtype),
                          in_specs=[ANY], out_specs=ANY, **kw)(x)
  return run


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    rows=st.integers(1, 70), cols=st.integers(1, 300),
    dtype=st.sampled_from(["float32", "bfloat16", "int32", "int8"]),
    block=st.sampled_from([(32, 128), (32, 256), (64, 128)]),
    seed=st.integers(0, 2**16))
def test_emit_pipeline_edge_blocks(rows, cols, dtype, block, seed):
  x = _values(np.random.default_rng(seed), (rows, cols), dtype)
  out = _on("cpu", _pipelined_affine(x, block))
  assert_same(out, x * 2 + 1)


@pytest.mark.parametrize("shape,block,dtype", [
    ((41, 128), (16, 128), "float32"),   # rows past the end
    ((40, 200), (16, 128), "float32"),   # columns past the end
    ((41, 300), (16, 128), "bfloat16"),  # both, 16-row bf16 tiles
])
def test_emit_pipeline_edge_blocks_as_tpu_interpret_mode(shape, block, dtype):
  x = _values(np.random.default_rng(0), shape, dtype)
  run = _pipelined_affine(x, block)
  assert_same(_on("cpu", run), _on("padded", run))
  assert_same(_on("cpu", run), x * 2 + 1)


def test_tpu_interpret_mode_needs_padded_bounds_for_edge_blocks():
  """Pins the interpreters' behaviour the module docstring describes, so a
  JAX that changes it is noticed."""
  x = jnp.ones((41, 128), jnp.float32)
  with pytest.raises(Exception, match="Out-of-bounds read"):
    _pipelined_affine(x, (16, 128))(pltpu.InterpretParams())
  with pytest.raises(Exception, match="concrete"):
    _pipelined_affine(x, (16, 128))(True)


# -- BoundedSlice blocks ----------------------------------------------------------

def _ragged_rows(x, lengths, block_rows):
  """Each segment of rows (lengths[k] of them, one after the other) is one
  BoundedSlice block of at most ``block_rows`` rows: o = 2x - segment
  (exact in floats: no fused multiply-add can round it differently)."""
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
  lengths = np.asarray(lengths, np.int32)

  def inner(x_ref, o_ref):
    k = pl.program_id(0)
    o_ref[...] = x_ref[...] * 2 - jnp.asarray(k, x_ref.dtype)

  def kernel(starts_ref, lengths_ref, x_hbm, o_hbm):
    spec = pl.BlockSpec(
        (pl.BoundedSlice(block_rows), x.shape[1]),
        lambda k: (pl.ds(starts_ref[k], lengths_ref[k]), 0))
    pltpu.emit_pipeline(inner, grid=(len(lengths),), in_specs=[spec],
                        out_specs=[spec])(x_hbm, o_hbm)

  def run(interpret):
    kw = {} if interpret is None else dict(interpret=interpret)
    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape,
                                                                  x.dtype),
                          in_specs=[SMEM, SMEM, ANY], out_specs=ANY,
                          **kw)(jnp.asarray(starts), jnp.asarray(lengths), x)
  segment = np.repeat(np.arange(len(lengths)), lengths)
  expected = x * 2 - jnp.asarray(segment, x.dtype)[:, None]
  return run, expected


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 16), min_size=1, max_size=6),
                  dtype=st.sampled_from(["float32", "int32"]),
                  seed=st.integers(0, 2**16))
def test_bounded_slice_blocks(lengths, dtype, seed):
  x = _values(np.random.default_rng(seed), (sum(lengths), 128), dtype)
  run, expected = _ragged_rows(x, lengths, 16)
  assert_same(_on("cpu", run), expected)


def test_bounded_slice_blocks_as_tpu_interpret_mode():
  x = _values(np.random.default_rng(1), (37, 128), "float32")
  run, expected = _ragged_rows(x, [5, 16, 3, 9, 4], 16)
  assert_same(_on("cpu", run), _on("padded", run))
  assert_same(_on("cpu", run), expected)


# -- run-time sizes on any dimension -----------------------------------------------

def _copy_window(x, dim):
  """Copies x[b, s:s+n, :] (dim 1, the second-minor) or x[b, :, s:s+n]
  (dim 2, the minor) into the leading part of a zeroed VMEM buffer of x[b]'s
  shape; b, s and n are scalar-prefetch values."""
  def kernel(p_ref, x_hbm, o_ref, buf):
    b, s, n = p_ref[0], p_ref[1], p_ref[2]
    buf[...] = jnp.zeros(buf.shape, buf.dtype)
    if dim == 1:
      pltpu.sync_copy(x_hbm.at[b, pl.ds(s, n)], buf.at[pl.ds(0, n)])
    else:
      pltpu.sync_copy(x_hbm.at[b, :, pl.ds(s, n)], buf.at[:, pl.ds(0, n)])
    o_ref[...] = buf[...]

  def run(interpret, params):
    kw = {} if interpret is None else dict(interpret=interpret)
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
        in_specs=[SMEM, ANY],
        scratch_shapes=[pltpu.VMEM(x.shape[1:], x.dtype)], **kw)(
            jnp.asarray(params, jnp.int32), x)
  return run


def _expected_window(x, dim, b, s, n):
  out = np.zeros(x.shape[1:], x.dtype)
  if dim == 1:
    out[:n] = np.asarray(x)[b, s:s + n]
  else:
    out[:, :n] = np.asarray(x)[b, :, s:s + n]
  return out


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(dim=st.sampled_from([1, 2]), data=st.data())
def test_run_time_size_on_any_dimension(dim, data):
  x = _values(np.random.default_rng(0), (3, 40, 256), "float32")
  b = data.draw(st.integers(0, 2))
  s = data.draw(st.integers(0, x.shape[dim]))
  n = data.draw(st.integers(0, x.shape[dim] - s))
  run = _copy_window(x, dim)
  with pallas_cpu.force_cpu_backend():
    out = run(None, [b, s, n])
  assert_same(out, _expected_window(x, dim, b, s, n))


@pytest.mark.parametrize("dim", [1, 2])
def test_run_time_size_as_tpu_interpret_mode(dim):
  x = _values(np.random.default_rng(2), (3, 40, 256), "float32")
  run = _copy_window(x, dim)
  params = [2, 5, 27]
  with pallas_cpu.force_cpu_backend():
    out = run(None, params)
  assert_same(out, run(pltpu.InterpretParams(), params))
  assert_same(out, _expected_window(x, dim, *params))


# -- reads and writes in the padding ----------------------------------------------

def _through_padding(x, start, rows):
  """Copies ``rows`` rows of x from a traced ``start`` into a VMEM buffer
  (reading past x's end into its tile padding), outputs the buffer, and
  copies it back into an alias of x at the same rows (writing past the
  end, which must be dropped)."""
  def kernel(p_ref, x_hbm, y_hbm, o_ref, y_out, buf, sem):
    del y_hbm
    s = p_ref[0]
    n = rows + p_ref[1]  # a run-time size
    pltpu.sync_copy(x_hbm.at[pl.ds(s, n)], buf.at[pl.ds(0, n)])
    o_ref[...] = buf[...]
    c = pltpu.make_async_copy(buf.at[pl.ds(0, n)], y_out.at[pl.ds(s, n)], sem)
    c.start()
    c.wait()

  def run(interpret):
    kw = {} if interpret is None else dict(interpret=interpret)
    return pl.pallas_call(
        kernel, out_shape=(jax.ShapeDtypeStruct((rows, x.shape[1]), x.dtype),
                           jax.ShapeDtypeStruct(x.shape, x.dtype)),
        in_specs=[SMEM, ANY, ANY], out_specs=(
            pl.BlockSpec(memory_space=pltpu.VMEM), ANY),
        scratch_shapes=[pltpu.VMEM((rows, x.shape[1]), x.dtype), DMA_SEM],
        input_output_aliases={2: 1}, **kw)(
            jnp.asarray([start, 0], jnp.int32), x, x * 0 - 1)
  return run


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reads_of_tile_padding_are_uninitialized(dtype):
  """Rows 32..40 exist, 41..47 are the last tile's padding: they read as
  NaN (the uninitialized value), as in TPU interpret mode; writing them
  back into the aliased y drops them, so y is x's rows 32..40 and -1
  elsewhere."""
  x = _values(np.random.default_rng(3), (41, 128), dtype)
  rows = 16
  run = _through_padding(x, 32, rows)
  out, y = _on("cpu", run)
  ref_out, ref_y = _on("padded", run)
  expected = np.full((rows, 128), np.nan, np.float32)
  expected[:9] = np.asarray(x[32:], np.float32)
  assert_same(np.asarray(out, np.float32), expected)
  assert_same(np.asarray(ref_out, np.float32), expected)
  expected_y = np.full((41, 128), -1, np.float32)
  expected_y[32:] = np.asarray(x[32:], np.float32)
  assert_same(np.asarray(y, np.float32), expected_y)
  assert_same(np.asarray(ref_y, np.float32), expected_y)


def test_int_padding_reads_our_uninitialized_value():
  """Integers read from the padding get this backend's uninitialized
  value (INT_MIN, as interpret=True fills memory; TPU interpret mode uses
  INT_MAX): the rows that exist match TPU interpret mode."""
  x = _values(np.random.default_rng(4), (41, 128), "int32")
  run = _through_padding(x, 32, 16)
  out, y = _on("cpu", run)
  ref_out, ref_y = _on("padded", run)
  assert_same(out[:9], x[32:])
  assert_same(out[:9], ref_out[:9])
  assert (np.asarray(out[9:]) == np.iinfo(np.int32).min).all()
  assert (np.asarray(ref_out[9:]) == np.iinfo(np.int32).max).all()
  assert_same(y, ref_y)


def test_race_detection_sees_only_the_copied_part():
  """The padded pipeline under the race detector: no race, same result."""
  x = _values(np.random.default_rng(5), (41, 300), "float32")

  def inner(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2 + 1

  def kernel(x_hbm, o_hbm):
    pltpu.emit_pipeline(
        inner, grid=(3, 3),
        in_specs=[pl.BlockSpec((16, 128), lambda i, j: (i, j))],
        out_specs=[pl.BlockSpec((16, 128), lambda i, j: (i, j))])(x_hbm, o_hbm)

  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      in_specs=[ANY], out_specs=ANY,
      compiler_params=pallas_cpu.CompilerParams(detect_races=True,
                                                on_race="raise"))(x)
  assert_same(out, x * 2 + 1)


# -- views of views, transforms, accumulation ------------------------------------------

def _copy_rows(x, make_src, rows=16, dtype=None, **params):
  """Copies ``make_src(x_hbm, start)`` (a window of ``rows`` rows from a
  traced start) into a VMEM buffer and outputs it."""
  dtype = dtype or x.dtype

  def kernel(p_ref, x_hbm, o_ref, buf):
    pltpu.sync_copy(make_src(x_hbm, p_ref[0]), buf)
    o_ref[...] = buf[...]

  def run(start, interpret=None):
    kw = {} if interpret is None else dict(interpret=interpret)
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((rows, x.shape[-1]), dtype),
        in_specs=[SMEM, ANY], scratch_shapes=[pltpu.VMEM((rows, x.shape[-1]),
                                                         dtype)],
        compiler_params=pallas_cpu.CompilerParams(**params) if params else None,
        **kw)(jnp.asarray([start], jnp.int32), x)
  return run


def test_a_view_of_a_view_reaches_into_padding():
  """x_hbm.at[1].at[pl.ds(32, 16)]: the view of x[1] ends where the data
  does, so a window of it may go on into the padding (emit_pipeline over
  x_hbm.at[b] does this), as x_hbm.at[1, pl.ds(32, 16)] may; a view that
  ends before the data does not reach past its own end."""
  x = _values(np.random.default_rng(6), (2, 41, 128), "float32")
  expected = np.full((16, 128), np.nan, np.float32)
  expected[:9] = np.asarray(x[1, 32:])
  for make in (lambda r, s: r.at[1].at[pl.ds(s, 16)],
               lambda r, s: r.at[1, pl.ds(s, 16)],
               lambda r, s: r.at[1, pl.ds(8, 33)].at[pl.ds(s - 8, 16)]):
    run = _copy_rows(x, make)
    with pallas_cpu.force_cpu_backend():
      assert_same(run(32), expected)
    assert_same(run(32, PADDED), expected)
  run = _copy_rows(x, lambda r, s: r.at[1, pl.ds(0, 40)].at[pl.ds(s, 16)])
  with pytest.raises(Exception, match="Out-of-bounds read"):
    with pallas_cpu.force_cpu_backend():
      jax.block_until_ready(run(32))


def test_emit_pipeline_over_views_of_each_batch():
  x = _values(np.random.default_rng(7), (3, 41, 200), "float32")

  def inner(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2 + 1

  def kernel(x_hbm, o_hbm):
    @pl.loop(0, x.shape[0])
    def _(b):
      pltpu.emit_pipeline(
          inner, grid=(3, 2),
          in_specs=[pl.BlockSpec((16, 128), lambda i, j: (i, j))],
          out_specs=[pl.BlockSpec((16, 128), lambda i, j: (i, j))])(
              x_hbm.at[b], o_hbm.at[b])

  def run(interpret):
    kw = {} if interpret is None else dict(interpret=interpret)
    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape,
                                                                  x.dtype),
                          in_specs=[ANY], out_specs=ANY, **kw)(x)
  assert_same(_on("cpu", run), x * 2 + 1)
  assert_same(_on("cpu", run), _on("padded", run))


def test_equal_width_bitcast_of_a_window_into_padding():
  """The bitcast view keeps the window's padding: rows past the end read
  as the uninitialized value of the DMA's element type (int32: INT_MIN),
  not as the next batch's rows."""
  x = _values(np.random.default_rng(8), (2, 41, 128), "float32")
  run = _copy_rows(x, lambda r, s: r.at[0, pl.ds(s, 16)].bitcast(jnp.int32),
                   dtype=jnp.int32)
  with pallas_cpu.force_cpu_backend():
    out = np.asarray(run(32))
  expected = np.full((16, 128), np.iinfo(np.int32).min, np.int32)
  expected[:9] = np.asarray(x[0, 32:]).view(np.int32)
  np.testing.assert_array_equal(out, expected)


def test_reshape_of_a_window_into_padding_is_named():
  x = _values(np.random.default_rng(9), (41, 128), "float32")
  run = _copy_rows(x, lambda r, s: r.at[pl.ds(s, 16)].reshape(16, 128))
  with pytest.raises(NotImplementedError, match="ReshapeTransform .*padding"):
    with pallas_cpu.force_cpu_backend():
      run(32)


@pytest.mark.parametrize("dtype,fill", [("float32", "zero"),
                                        ("int32", "zero"), ("int32", "nan")])
def test_accumulating_dma_adds_the_padding_it_reads(dtype, fill):
  """add=True from a window into padding: the rows that exist are added,
  the padding adds the uninitialized value (0 under "zero"; INT_MIN,
  wrapping, under "nan")."""
  x = _values(np.random.default_rng(10), (41, 128), dtype)

  def kernel(p_ref, x_hbm, o_ref, buf, sem):
    buf[...] = jnp.full(buf.shape, 5, buf.dtype)
    c = pltpu.make_async_copy(x_hbm.at[pl.ds(p_ref[0], 16)], buf, sem)
    c.start(add=True)
    c.wait()
    o_ref[...] = buf[...]

  out = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((16, 128), x.dtype),
      in_specs=[SMEM, ANY],
      scratch_shapes=[pltpu.VMEM((16, 128), x.dtype), DMA_SEM],
      compiler_params=pallas_cpu.CompilerParams(uninitialized_memory=fill))(
          jnp.asarray([32], jnp.int32), x)
  expected = np.full((16, 128), 5, dtype)
  expected[:9] += np.asarray(x[32:])
  if fill == "nan":
    expected[9:] = np.int32(5) + np.iinfo(np.int32).min
  assert_same(out, expected)


# -- a differential fuzz of windows --------------------------------------------------

def _padded(shape, dtype):
  """The shape a TPU stores: whole tiles of Mosaic's tiling (8 x 128 for
  32-bit types; fewer rows for an array of fewer rows)."""
  tiling = tpu_info.infer_tiling(jax.core.ShapedArray(shape, dtype))
  return tuple(-(-n // t) * t for n, t in zip(shape, tiling))


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(data=st.data())
def test_windows_as_tpu_interpret_mode(data):
  """Random windows of run-time position and size anywhere inside a
  (B, R, C) array's padded shape, reached in one indexer, through a view
  of one batch, or through a view of rows running to the data's end (of
  static size: JAX cannot index a view of run-time size); read into a
  VMEM buffer and written back at another such window of an aliased
  output.  Against numpy on NaN-padded copies and TPU interpret mode."""
  draw = data.draw
  shape = (draw(st.integers(1, 3)), draw(st.integers(1, 40)),
           draw(st.integers(1, 300)))
  _, rows, cols = shape
  room = _padded(shape, jnp.float32)[1:]

  def window():
    b = draw(st.integers(0, shape[0] - 1))
    r0 = draw(st.integers(0, room[0] - 1))
    c0 = draw(st.integers(0, room[1] - 1))
    form = draw(st.sampled_from(["one", "batch", "to_end"]))
    if form == "to_end":  # a static view of rows [ra, rows) first
      form = (form, draw(st.integers(0, min(r0, rows - 1))))
    return b, r0, c0, form
  src, dst = window(), window()
  nr = draw(st.integers(0, room[0] - max(src[1], dst[1])))
  nc = draw(st.integers(0, room[1] - max(src[2], dst[2])))
  x = _values(np.random.default_rng(draw(st.integers(0, 99))), shape,
              "float32")

  def view(ref, p, k, form):
    b, r0, c0, n_rows, n_cols = (p[k], p[k + 1], p[k + 2], p[6], p[7])
    if form == "one":
      return ref.at[b, pl.ds(r0, n_rows), pl.ds(c0, n_cols)]
    if form == "batch":
      return ref.at[b].at[pl.ds(r0, n_rows), pl.ds(c0, n_cols)]
    ra = form[1]
    return ref.at[b, pl.ds(ra, rows - ra)].at[
        pl.ds(r0 - ra, n_rows), pl.ds(c0, n_cols)]

  def kernel(p_ref, x_hbm, y_hbm, o_ref, y_out, buf):
    del y_hbm
    buf[...] = jnp.zeros(buf.shape, buf.dtype)
    here = buf.at[pl.ds(0, p_ref[6]), pl.ds(0, p_ref[7])]
    pltpu.sync_copy(view(x_hbm, p_ref, 0, src[3]), here)
    pltpu.sync_copy(here, view(y_out, p_ref, 3, dst[3]))
    o_ref[...] = buf[...]

  params = jnp.asarray([*src[:3], *dst[:3], nr, nc], jnp.int32)
  y = jnp.full(shape, -1, jnp.float32)

  def run(interpret):
    kw = {} if interpret is None else dict(interpret=interpret)
    return pl.pallas_call(
        kernel, out_shape=(jax.ShapeDtypeStruct(room, jnp.float32),
                           jax.ShapeDtypeStruct(shape, jnp.float32)),
        in_specs=[SMEM, ANY, ANY],
        out_specs=(pl.BlockSpec(memory_space=pltpu.VMEM), ANY),
        scratch_shapes=[pltpu.VMEM(room, jnp.float32)],
        input_output_aliases={2: 1}, **kw)(params, x, y)
  out, y_got = _on("cpu", run)
  padded_x = np.full((shape[0], *room), np.nan, np.float32)
  padded_x[:, :rows, :cols] = np.asarray(x)
  expected = np.zeros(room, np.float32)
  b, r0, c0, _ = src
  expected[:nr, :nc] = padded_x[b, r0:r0 + nr, c0:c0 + nc]
  padded_y = np.full((shape[0], *room), -1, np.float32)
  b, r1, c1, _ = dst
  padded_y[b, r1:r1 + nr, c1:c1 + nc] = expected[:nr, :nc]
  assert_same(out, expected)
  assert_same(y_got, padded_y[:, :rows, :cols])
  ref_out, ref_y = _on("padded", run)
  assert_same(out, ref_out)
  assert_same(y_got, ref_y)


# -- errors -------------------------------------------------------------------------

def _one_copy(x, rows):
  def kernel(p_ref, x_hbm, o_ref, buf):
    pltpu.sync_copy(x_hbm.at[pl.ds(p_ref[0], p_ref[1])],
                    buf.at[pl.ds(0, p_ref[2])])
    o_ref[...] = buf[...]
  return lambda p: pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((rows, 128), x.dtype),
      in_specs=[SMEM, ANY],
      scratch_shapes=[pltpu.VMEM((rows, 128), x.dtype)])(
          jnp.asarray(p, jnp.int32), x)


@pytest.mark.parametrize("params,match", [
    # rows [40, 56) of a (41, 128) array padded to 48 rows
    ([40, 16, 16], r"Out-of-bounds read of .*x_hbm|Out-of-bounds read"),
    ([0, -1, -1], r"Out-of-bounds read"),     # a negative size
    ([0, 8, 16], r"shapes differ"),            # 8 rows into 16
])
def test_bad_run_time_windows_are_errors(params, match):
  x = jnp.ones((41, 128), jnp.float32)
  with pytest.raises(Exception, match=match):
    jax.block_until_ready(_one_copy(x, 16)(params))


def test_window_past_the_logical_end_of_smem_is_an_error():
  """SMEM is not tiled: no padding to reach into."""
  def kernel(p_ref, x_smem, o_ref, buf):
    pltpu.sync_copy(x_smem.at[pl.ds(p_ref[0], 8)], buf)
    o_ref[...] = jnp.full(o_ref.shape, buf[0], o_ref.dtype)
  f = pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
      in_specs=[SMEM, SMEM], scratch_shapes=[pltpu.SMEM((8,), jnp.float32)])
  with pytest.raises(Exception, match="Out-of-bounds read"):
    jax.block_until_ready(f(jnp.asarray([5], jnp.int32),
                            jnp.ones((10,), jnp.float32)))
