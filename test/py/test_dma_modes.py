"""DMA modes beyond a plain copy: accumulating DMAs (``start(add=True)``,
``async_copy(..., add=True)``) and DMA windows with traced starts on the
second-minor and minor dimensions (``pl.ds(start, size)`` with a traced
``start``, also strided, on either side).

What JAX itself does with add=True (jax 0.10.2): Mosaic's TensorCore
lowering raises NotImplementedError (its SparseCore lowering takes add=True
only for indexed gathers/scatters), ``interpret=True`` raises
NotImplementedError ("DMA partial discharge add=True not yet implemented"),
and TPU interpret mode ignores the flag and overwrites
(``test_the_interpreters_do_not_accumulate`` pins both, so a JAX that
changes them is noticed).  Compiled, an accumulating DMA adds its source
into its destination in the element type's arithmetic; the reference is
``dst + src`` computed by jnp."""
from __future__ import annotations

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, call

ANY = pl.BlockSpec(memory_space=pl.ANY)
DMA_SEM = pltpu.SemaphoreType.DMA(())


def _values(rng, shape, dtype):
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)  # the whole range: sums wrap
    return jnp.asarray(rng.integers(info.min, info.max, shape, endpoint=True,
                                    dtype=dtype))
  return jnp.asarray((rng.standard_normal(shape) * 4).astype(dtype))


# -- add=True -------------------------------------------------------------------

def _add_into_window(mode):
  """o = y, then o[4:12, 3:103] += x[2:10, 5:105] by one accumulating DMA
  between strided HBM windows."""
  def kernel(x_hbm, y_hbm, o_hbm, sem):
    pltpu.sync_copy(y_hbm, o_hbm)
    c = pltpu.make_async_copy(x_hbm.at[pl.ds(2, 8), pl.ds(5, 100)],
                              o_hbm.at[pl.ds(4, 8), pl.ds(3, 100)], sem)
    c.start(add=True)
    c.wait()

  def run(x, y):
    return call(kernel, jax.ShapeDtypeStruct(y.shape, y.dtype), x, y,
                in_specs=[ANY, ANY], out_specs=ANY, scratch_shapes=[DMA_SEM],
                compiler_params=pallas_cpu.CompilerParams(
                    dma_execution_mode=mode))
  return run


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8",
                                   "uint8", "int16", "int32", "uint32"])
@pytest.mark.parametrize("mode", ["eager", "on_wait"])
def test_add_accumulates_per_dtype(dtype, mode, rng):
  x, y = _values(rng, (16, 256), dtype), _values(rng, (16, 256), dtype)
  got = _add_into_window(mode)(x, y)
  want = y.at[4:12, 3:103].set(y[4:12, 3:103] + x[2:10, 5:105])
  assert_same(got, want)


def test_add_of_64_bit_types(rng):
  with jax.enable_x64(True):
    for dtype in ("float64", "int64"):
      x, y = _values(rng, (16, 256), dtype), _values(rng, (16, 256), dtype)
      got = _add_into_window("eager")(x, y)
      assert_same(got, y.at[4:12, 3:103].set(y[4:12, 3:103] + x[2:10, 5:105]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_add_rounds_like_xla_on_special_values(dtype):
  """Overflow to inf, inf - inf = NaN, subnormal sums, ties: each sum is
  rounded once to the element type, as jnp's (XLA's) add rounds it."""
  finfo = jnp.finfo(dtype)
  specials = np.array([finfo.max, finfo.max, np.inf, -np.inf, np.nan, 0.0,
                       -0.0, finfo.smallest_subnormal, finfo.tiny,
                       finfo.eps, 1.0, -1.0, 3.0, 0.5 * float(finfo.eps),
                       float(finfo.smallest_normal) / 3, 65504.0],
                      np.float64)
  a = np.tile(specials, len(specials))
  b = np.repeat(specials, len(specials))
  n = len(a)
  cols = 128
  rows = -(-n // cols)
  pad = rows * cols - n
  x = jnp.asarray(np.pad(a, (0, pad)).reshape(rows, cols)).astype(dtype)
  y = jnp.asarray(np.pad(b, (0, pad)).reshape(rows, cols)).astype(dtype)

  def kernel(x_hbm, y_hbm, o_hbm, sem):
    pltpu.sync_copy(y_hbm, o_hbm)
    pltpu.async_copy(x_hbm, o_hbm, sem, add=True).wait()
  got = call(kernel, jax.ShapeDtypeStruct(y.shape, y.dtype), x, y,
             in_specs=[ANY, ANY], out_specs=ANY, scratch_shapes=[DMA_SEM])
  assert_same(got, y + x)


@pytest.mark.parametrize("mode", ["eager", "on_wait"])
def test_add_between_vmem_and_hbm_and_several_in_flight(mode, rng):
  """HBM -> VMEM and VMEM -> HBM accumulating DMAs; three adds into one
  destination in flight at once (on_wait: they run at the waits) all
  land; a sync_copy(add=True) too."""
  x = _values(rng, (3, 8, 128), "float32")
  y = _values(rng, (8, 128), "float32")

  def kernel(x_hbm, y_ref, o_hbm, acc, sem):
    acc[...] = y_ref[...]
    copies = [pltpu.make_async_copy(x_hbm.at[k], acc, sem.at[k])
              for k in range(3)]
    for c in copies:
      c.start(add=True)
    for c in copies:
      c.wait()
    pltpu.sync_copy(acc, o_hbm.at[0])
    pltpu.sync_copy(acc, o_hbm.at[1])
    pltpu.sync_copy(y_ref, o_hbm.at[1], add=True)

  got = call(kernel, jax.ShapeDtypeStruct((2, 8, 128), jnp.float32), x, y,
             in_specs=[ANY, pl.BlockSpec((8, 128), lambda: (0, 0))],
             out_specs=ANY,
             scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                             pltpu.SemaphoreType.DMA((3,))],
             compiler_params=pallas_cpu.CompilerParams(
                 dma_execution_mode=mode))
  # (Each DMA has its own semaphore, waited in order: on_wait runs them
  # in that order too.)
  acc = ((y + x[0]) + x[1]) + x[2]
  assert_same(got[0], acc)
  assert_same(got[1], acc + y)


def test_add_with_overlapping_source_and_destination(rng):
  """Source and destination windows of one buffer overlap: every element
  adds the source as it was before the DMA (as a copy reads it first)."""
  x = _values(rng, (16, 128), "int32")

  def kernel(x_hbm, o_hbm, sem):
    pltpu.sync_copy(x_hbm, o_hbm)
    pltpu.async_copy(o_hbm.at[pl.ds(0, 12)], o_hbm.at[pl.ds(4, 12)], sem,
                     add=True).wait()
  got = call(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), x,
             in_specs=[ANY], out_specs=ANY, scratch_shapes=[DMA_SEM])
  assert_same(got, x.at[4:].set(x[4:] + x[:12]))


def test_cores_accumulate_into_one_destination(rng):
  """Every core of a 4-core mesh adds its slab into the same HBM rows:
  the adds are atomic towards each other (none is lost)."""
  cores = 4
  x = _values(rng, (cores, 16, 128), "int32")
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=cores)

  @jax.jit
  def f(x):
    @pl.kernel(out_type=jax.ShapeDtypeStruct((16, 128), jnp.int32), mesh=mesh,
               scratch_types=[pltpu.SemaphoreType.DMA(()),
                              pltpu.SemaphoreType.REGULAR(())])
    def kernel(x_hbm, o_hbm, sem, ready):
      c = jax.lax.axis_index("core")

      @pl.when(c == 0)
      def _():
        o_hbm[...] = jnp.zeros((16, 128), jnp.int32)
        for k in range(1, cores):
          pl.semaphore_signal(ready, 1, core_index=k)

      @pl.when(c != 0)
      def _():
        pl.semaphore_wait(ready, 1)
      pltpu.async_copy(x_hbm.at[c], o_hbm, sem, add=True).wait()
    return kernel(x)

  with pallas_cpu.force_cpu_backend():
    got = jax.block_until_ready(f(x))
  assert_same(got, x.sum(axis=0, dtype=jnp.int32))


def test_add_of_unsupported_element_types_is_a_clear_error():
  x = jnp.zeros((8, 128), jnp.float8_e4m3fn)

  def kernel(x_hbm, o_hbm, sem):
    pltpu.async_copy(x_hbm, o_hbm, sem, add=True).wait()
  with pytest.raises(NotImplementedError, match="add=True of float8_e4m3fn"):
    call(kernel, x, x, in_specs=[ANY], out_specs=ANY,
         scratch_shapes=[DMA_SEM])


def test_the_interpreters_do_not_accumulate():
  """interpret=True rejects add=True; TPU interpret mode overwrites (jax
  0.10.2).  Should either start accumulating, the compiled result above
  can be checked against it."""
  x = jnp.full((8, 128), 2.0, jnp.float32)

  def kernel(x_hbm, o_hbm, sem):
    pltpu.sync_copy(x_hbm, o_hbm)
    pltpu.async_copy(x_hbm, o_hbm, sem, add=True).wait()
  kw = dict(in_specs=[ANY], out_specs=ANY, scratch_shapes=[DMA_SEM])
  with pytest.raises(NotImplementedError, match="add=True"):
    call(kernel, x, x, backend="interpret", **kw)
  assert_same(call(kernel, x, x, backend="tpu-interpret", **kw), x)
  assert_same(call(kernel, x, x, backend="cpu", **kw), x + x)


# -- traced starts on the minor dimensions -----------------------------------------

@functools.lru_cache(maxsize=None)
def _window_kernel(src_shape, size, stride, dst_shape):
  """A kernel copying src[i, pl.ds(r, size[0], stride[0]), pl.ds(c, size[1],
  stride[1])] into dst[pl.ds(dr, size[0]), pl.ds(dc, size[1])] of a VMEM
  scratch (first filled with -1), every start traced (scalar prefetch), for
  every leading index i (grid step) -- then the scratch to the output
  block; and back: the scratch window into the same strided window of an
  HBM output (aliasing a zero input)."""
  (h, w), (sh, sw) = size, stride

  def kernel(s_ref, x_hbm, z_hbm, o_ref, back_hbm, buf, sem):
    del z_hbm
    i = pl.program_id(0)
    r, c, dr, dc = s_ref[4 * i], s_ref[4 * i + 1], s_ref[4 * i + 2], s_ref[4 * i + 3]
    buf[...] = jnp.full(buf.shape, -1, buf.dtype)
    cp = pltpu.make_async_copy(
        x_hbm.at[i, pl.ds(r, h, stride=sh), pl.ds(c, w, stride=sw)],
        buf.at[pl.ds(dr, h), pl.ds(dc, w)], sem)
    cp.start()
    cp.wait()
    o_ref[0] = buf[...]
    pltpu.sync_copy(buf.at[pl.ds(dr, h), pl.ds(dc, w)],
                    back_hbm.at[i, pl.ds(r, h, stride=sh),
                                pl.ds(c, w, stride=sw)])

  n = src_shape[0]
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(n,), in_specs=[ANY, ANY],
      out_specs=[pl.BlockSpec((1, *dst_shape), lambda i, s: (i, 0, 0)), ANY],
      scratch_shapes=[pltpu.VMEM(dst_shape, jnp.float32), DMA_SEM])
  out_shape = [jax.ShapeDtypeStruct((n, *dst_shape), jnp.float32),
               jax.ShapeDtypeStruct(src_shape, jnp.float32)]

  def run(backend, starts, x):
    return call(kernel, out_shape, starts, x, jnp.zeros_like(x),
                grid_spec=grid_spec, backend=backend,
                input_output_aliases={2: 1})
  return run


def _reference(x, starts, size, stride, dst_shape):
  x = np.asarray(x)
  (h, w), (sh, sw) = size, stride
  out = np.full((x.shape[0], *dst_shape), -1, np.float32)
  back = np.zeros_like(x)
  for i in range(x.shape[0]):
    r, c, dr, dc = starts[4 * i: 4 * i + 4]
    win = x[i, r:r + (h - 1) * sh + 1:sh, c:c + (w - 1) * sw + 1:sw]
    out[i, dr:dr + h, dc:dc + w] = win
    back[i, r:r + (h - 1) * sh + 1:sh, c:c + (w - 1) * sw + 1:sw] = win
  return out, back


@st.composite
def _windows(draw):
  n = draw(st.integers(1, 3))
  rows, cols = draw(st.integers(2, 20)), draw(st.integers(2, 300))
  sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
  h = draw(st.integers(1, (rows - 1) // sh + 1))
  w = draw(st.integers(1, (cols - 1) // sw + 1))
  dh, dw = h + draw(st.integers(0, 5)), w + draw(st.integers(0, 9))
  starts = []
  for _ in range(n):
    starts += [draw(st.integers(0, rows - ((h - 1) * sh + 1))),
               draw(st.integers(0, cols - ((w - 1) * sw + 1))),
               draw(st.integers(0, dh - h)), draw(st.integers(0, dw - w))]
  return (n, rows, cols), (h, w), (sh, sw), (dh, dw), starts


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(_windows())
def test_traced_windows_on_minor_dimensions(case):
  """Against interpret=True and numpy: traced starts on the second-minor
  and minor dimensions of both the source and the destination, strided
  source windows, sizes that are no multiple of anything."""
  src_shape, size, stride, dst_shape, starts = case
  x = jnp.arange(np.prod(src_shape), dtype=jnp.float32).reshape(src_shape)
  s = jnp.asarray(starts, jnp.int32)
  run = _window_kernel(src_shape, size, stride, dst_shape)
  got = run("cpu", s, x)
  want = _reference(x, starts, size, stride, dst_shape)
  assert_same(got[0], want[0])
  assert_same(got[1], want[1])
  assert_same(got, run("interpret", s, x))


def test_traced_windows_against_tpu_interpret_mode():
  src_shape, size, stride, dst_shape = (2, 16, 256), (5, 100), (2, 1), (8, 128)
  starts = [3, 17, 2, 5, 6, 150, 0, 28]
  x = jnp.arange(np.prod(src_shape), dtype=jnp.float32).reshape(src_shape)
  s = jnp.asarray(starts, jnp.int32)
  run = _window_kernel(src_shape, size, stride, dst_shape)
  got = run("cpu", s, x)
  want = _reference(x, starts, size, stride, dst_shape)
  assert_same(got[0], want[0])
  assert_same(got[1], want[1])
  assert_same(got, run("tpu-interpret", s, x))


def test_traced_squeezed_minor_indices_and_accumulating_windows(rng):
  """x.at[:, i, :] and x.at[:, :, j] with traced i, j (the DMA drops a
  minor dimension), and add=True into a window at traced starts."""
  x = _values(rng, (4, 16, 256), "float32")

  def kernel(x_hbm, o_ref, acc_ref, rows, cols, sem):
    i = pl.program_id(0)
    pltpu.sync_copy(x_hbm.at[:, i + 3, :], rows)
    pltpu.sync_copy(x_hbm.at[:, :, 2 * i + 1], cols)
    o_ref[0, :, :] = rows[...]
    o_ref[0, :, 0:16] = cols[...]
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
    pltpu.async_copy(x_hbm.at[i, pl.ds(i, 8), pl.ds(3 * i, 128)],
                     acc_ref.at[0, pl.ds(i, 8), pl.ds(i + 1, 128)], sem,
                     add=True).wait()
    pltpu.async_copy(x_hbm.at[i, pl.ds(i, 8), pl.ds(3 * i, 128)],
                     acc_ref.at[0, pl.ds(i, 8), pl.ds(i + 1, 128)], sem,
                     add=True).wait()

  got_o, got_acc = call(
      kernel, [jax.ShapeDtypeStruct((4, 4, 256), jnp.float32),
               jax.ShapeDtypeStruct((4, 16, 160), jnp.float32)], x,
      grid=(4,), in_specs=[ANY],
      out_specs=[pl.BlockSpec((1, 4, 256), lambda i: (i, 0, 0)),
                 pl.BlockSpec((1, 16, 160), lambda i: (i, 0, 0))],
      scratch_shapes=[pltpu.VMEM((4, 256), jnp.float32),
                      pltpu.VMEM((4, 16), jnp.float32), DMA_SEM])
  want_o = np.zeros((4, 4, 256), np.float32)
  want_acc = np.zeros((4, 16, 160), np.float32)
  xn = np.asarray(x)
  for i in range(4):
    want_o[i] = xn[:, i + 3, :]
    want_o[i, :, :16] = xn[:, :16, 2 * i + 1]
    win = xn[i, i:i + 8, 3 * i:3 * i + 128]
    want_acc[i, i:i + 8, i + 1:i + 129] = win + win
  assert_same(got_o, want_o)
  assert_same(got_acc, want_acc)
