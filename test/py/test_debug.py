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


# One print per kernel: interpret mode's prints are unordered effects, which
# XLA may emit in another order than the program's within a grid step.
VECTOR_PRINTS = {
    "block": lambda x: pl.debug_print("block {}: {}", pl.program_id(0), x),
    "no_placeholders": lambda x: pl.debug_print("row", x[1, :6], x[2, 2]),
    "bool_bf16_int8": lambda x: pl.debug_print(
        "{} {} {}", x[:2, :3] > 1, x[0, :4].astype(jnp.bfloat16),
        (x[3, :5] * 10).astype(jnp.int8)),
    "f8_uint": lambda x: pl.debug_print(
        "f8 {} u {}", x[0, :4].astype(jnp.float8_e4m3fn),
        x[4, :3].astype(jnp.uint32)),
    "splat": lambda x: pl.debug_print(
        "splat {}", jnp.full((2, 3), pl.program_id(0), jnp.int32)),
}


@pytest.mark.parametrize("name", sorted(VECTOR_PRINTS))
def test_debug_print_of_vectors_matches_interpret_mode(name, capsys):
  """Arrays print as interpret mode prints them (numpy's str under the
  print's np.printoptions; an 8x128 block elided with "..."), any mix of
  arrays and scalars, every dtype: more than Mosaic's "scalars, or one
  vector ending the format"."""
  def kernel(x_ref, o_ref):
    VECTOR_PRINTS[name](x_ref[...])
    o_ref[...] = x_ref[...]

  def printed(backend):
    capsys.readouterr()
    jax.block_until_ready(pallas_cpu.pallas_call(
        kernel, out_shape=X, grid=(2,), in_specs=[SPEC], out_specs=SPEC,
        backend=backend)(X))
    return capsys.readouterr().out

  got = printed("cpu")
  assert got == printed("interpret")
  assert got.count("\n") >= 2
  if name == "block":
    assert "..." in got


def test_debug_print_of_a_float64_vector_matches_interpret_mode(capsys):
  def kernel(x_ref, o_ref):
    pl.debug_print("x64 {}", x_ref[0, :5] / 3)
    o_ref[...] = x_ref[...]

  with jax.enable_x64(True):
    x = jnp.arange(8 * 128, dtype=jnp.float64).reshape(8, 128)
    outs = []
    for backend in ("cpu", "interpret"):
      capsys.readouterr()
      jax.block_until_ready(pallas_cpu.pallas_call(
          kernel, out_shape=x, backend=backend)(x))
      outs.append(capsys.readouterr().out)
  assert outs[0] == outs[1] == "x64 [0.         0.33333333 0.66666667 1.         1.33333333]\n"
