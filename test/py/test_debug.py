"""pl.debug_print prints from compiled code exactly what interpret mode
prints; pl.debug_check raises with the check's message and grid point."""
import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl

import pallas_cpu

X = jnp.arange(16 * 128, dtype=jnp.float32).reshape(16, 128) / 7
SPEC = pl.BlockSpec((8, 128), lambda i: (i, 0))


def _printing_kernel(x_ref, o_ref):
  i = pl.program_id(0)
  pl.debug_print("step {} of {}", i, pl.num_programs(0))
  pl.debug_print("values", x_ref[0, 0], x_ref[1, 1] > 0,
                 x_ref[2, 2].astype(jnp.bfloat16), (x_ref[3, 3] * 100).astype(
                     jnp.int8))
  o_ref[...] = x_ref[...]


def _printed(backend, capsys):
  capsys.readouterr()
  jax.block_until_ready(pallas_cpu.pallas_call(
      _printing_kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
      out_specs=SPEC, backend=backend)(X))
  return capsys.readouterr().out


def test_debug_print_matches_interpret_mode(capsys):
  got = _printed("cpu", capsys)
  assert got == _printed("interpret", capsys)
  assert got.splitlines()[0] == "step 0 of 2"
  assert len(got.splitlines()) == 4  # once per executed print


def test_debug_check(capsys):
  def kernel(x_ref, o_ref):
    pl.debug_check(pl.program_id(0) < 1, "only step 0 is allowed")
    o_ref[...] = x_ref[...]

  f = pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                             out_specs=SPEC)
  with pl.enable_debug_checks(True):
    with pytest.raises(Exception, match=r"debug check failed at grid point "
                       r"\(1\): only step 0 is allowed \(at .*test_debug.py"):
      jax.block_until_ready(jax.jit(f)(X))
  # With checks off (the default) the check is not compiled at all.
  assert (jax.jit(f)(X) == X).all()


def test_debug_callback_is_dropped_with_a_warning():
  """As Mosaic does: the kernel computes, the callback never runs."""
  calls = []

  def kernel(x_ref, o_ref):
    jax.debug.callback(lambda v: calls.append(v), x_ref[0, 0])
    o_ref[...] = x_ref[...] * 2

  with pytest.warns(UserWarning, match=r"jax.debug.callback at "
                    r".*test_debug.py.* is dropped"):
    out = jax.jit(pallas_cpu.pallas_call(kernel, out_shape=X))(X)
  assert (out == X * 2).all()
  assert not calls
