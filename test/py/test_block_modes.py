"""BlockSpec block dimensions beyond Blocked/Squeezed: ``pl.Element``
(element offsets, with and without padding, inputs and outputs) against
interpret=True; ``pl.BoundedSlice`` and ``pl.Indirect``, which neither
interpret mode nor Mosaic runs in a pallas_call, are a clear error there
(``BoundedSlice`` blocks of ``pltpu.emit_pipeline`` run: test_dma_windows.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, check_against_interpret

S = jax.ShapeDtypeStruct
X = jnp.asarray(np.random.default_rng(0).standard_normal((20, 128)),
                jnp.float32)


def _plus_one(x_ref, o_ref):
  o_ref[...] = x_ref[...] + 1


def _windows_out(n, rows=8, cols=128):
  return pl.BlockSpec((None, rows, cols), lambda i: (i, 0, 0)), S(
      (n, rows, cols), jnp.float32)


def test_element_sliding_windows_without_padding():
  """Overlapping windows at element offsets (stride 4, size 8)."""
  spec, shape = _windows_out(4)
  got = check_against_interpret(
      _plus_one, shape, X, grid=(4,),
      in_specs=[pl.BlockSpec((pl.Element(8), 128), lambda i: (i * 4, 0))],
      out_specs=spec)
  assert_same(got, jnp.stack([X[4 * i:4 * i + 8] + 1 for i in range(4)]))


@pytest.mark.parametrize("padding", [(3, 0), (0, 5), (3, 4), (8, 8)])
def test_element_padding_on_inputs(padding):
  """Windows reaching into the low and high padding read the
  uninitialized value (NaN), as interpret mode's padded array does."""
  lo, hi = padding
  n_blocks = (lo + 20 + hi - 8) // 5 + 1
  spec, shape = _windows_out(n_blocks)
  check_against_interpret(
      _plus_one, shape, X, grid=(n_blocks,),
      in_specs=[pl.BlockSpec((pl.Element(8, padding), 128),
                             lambda i: (i * 5, 0))],
      out_specs=spec)


def test_element_padding_on_outputs_and_two_dims():
  """An output written through padded Element windows (writes to the
  padding are dropped); Element on both dimensions, a block wider than the
  array's columns."""
  y = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8, 128)),
                  jnp.float32)
  check_against_interpret(
      _plus_one, S((20, 128), jnp.float32), y, grid=(3,),
      in_specs=[pl.BlockSpec((None, 8, 128), lambda i: (i, 0, 0))],
      out_specs=pl.BlockSpec((pl.Element(8, (2, 3)), 128),
                             lambda i: (i * 8, 0)))
  x = X[:, :12]
  spec, shape = _windows_out(3, 8, 16)
  check_against_interpret(
      _plus_one, shape, x, grid=(3,),
      in_specs=[pl.BlockSpec((pl.Element(8, (1, 1)), pl.Element(16, (2, 2))),
                             lambda i: (i * 7, 0))],
      out_specs=spec)


def test_element_offsets_from_scalar_prefetch():
  """Ragged rows: each step's window starts at an offset a prefetched
  table gives (the paged/ragged attention pattern)."""
  starts = jnp.asarray([0, 3, 11, 12, 7], jnp.int32)

  def kernel(s_ref, x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2 + s_ref[pl.program_id(0)].astype(jnp.float32)

  gs = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(5,),
      in_specs=[pl.BlockSpec((pl.Element(8), 128), lambda i, s: (s[i], 0))],
      out_specs=pl.BlockSpec((None, 8, 128), lambda i, s: (i, 0, 0)))
  got = check_against_interpret(kernel, S((5, 8, 128), jnp.float32), starts,
                                X, grid_spec=gs)
  want = jnp.stack([X[s:s + 8] * 2 + s for s in np.asarray(starts)])
  assert_same(got, want)


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_element_windows_fuzz(data):
  n = data.draw(st.sampled_from([5, 9, 20]))
  size = data.draw(st.sampled_from([1, 4, 8]))
  lo = data.draw(st.integers(0, 4))
  hi = data.draw(st.integers(0, 4))
  extent = -(-(lo + n + hi) // size) * size
  k = data.draw(st.integers(1, 4))
  offsets = jnp.asarray(data.draw(st.lists(
      st.integers(0, extent - size), min_size=k, max_size=k)), jnp.int32)
  x = X[:n, :16]

  gs = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(k,),
      in_specs=[pl.BlockSpec((pl.Element(size, (lo, hi)), 16),
                             lambda i, s: (s[i], 0))],
      out_specs=pl.BlockSpec((None, size, 16), lambda i, s: (i, 0, 0)))

  def kernel(s_ref, x_ref, o_ref):
    o_ref[...] = x_ref[...] - 1
  check_against_interpret(kernel, S((k, size, 16), jnp.float32), offsets, x,
                          grid_spec=gs)


def test_element_offset_out_of_range_is_an_error():
  """A window past the padded array: interpret mode clamps it; reported."""
  f = pallas_cpu.pallas_call(
      _plus_one, out_shape=S((8, 128), jnp.float32), grid=(1,),
      in_specs=[pl.BlockSpec((pl.Element(8, (0, 2)), 128),
                             lambda i: (i + 17, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)), backend="cpu")
  with pytest.raises(Exception, match=r"Out-of-bounds block index"):
    jax.block_until_ready(f(X))


@pytest.mark.parametrize("dim", [pl.BoundedSlice(8), pl.Indirect(8)],
                         ids=["BoundedSlice", "Indirect"])
def test_bounded_slice_and_indirect_in_pallas_call_are_named(dim):
  if isinstance(dim, pl.BoundedSlice):
    index_map = lambda i: (pl.ds(i * 8, 8), 0)   # noqa: E731
  else:
    index_map = lambda i: (i, 0)                  # noqa: E731
  with pytest.raises(NotImplementedError, match=type(dim).__name__):
    pallas_cpu.pallas_call(
        _plus_one, out_shape=S((8, 128), jnp.float32), grid=(1,),
        in_specs=[pl.BlockSpec((dim, 128), index_map)],
        out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)),
        backend="cpu")(X)
