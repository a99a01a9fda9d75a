"""Bad input gets a clear error: unsupported primitives (all of them, with
source lines), out-of-bounds block indices, invalid options."""
import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl

import pallas_cpu

X = jnp.ones((16, 128), jnp.float32)
SPEC = pl.BlockSpec((8, 128), lambda i: (i, 0))


def test_unsupported_primitives_are_all_named_with_source_lines():
  def kernel(x_ref, o_ref):
    a = jnp.sort(x_ref[...], axis=0)
    b = jax.lax.cumsum(x_ref[...], axis=0)
    o_ref[...] = a + b

  with pytest.raises(NotImplementedError) as e:
    pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                           out_specs=SPEC)(X)
  msg = str(e.value)
  assert "cumsum" in msg and "sort" in msg and "kernel" in msg
  assert "test_errors.py" in msg  # the user's line, not ours


def test_out_of_bounds_block_index_is_reported_not_a_segfault():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=X, grid=(3,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],  # i=2 is past
      out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)))
  with pytest.raises(Exception, match=r"out of bounds: operand 0, dimension 0"):
    jax.block_until_ready(f(X))


def test_negative_block_index_is_reported():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=X, grid=(2,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (i - 1, 0))],
      out_specs=SPEC)
  with pytest.raises(Exception, match=r"window \[-8, 0\)"):
    jax.block_until_ready(f(X))


def test_bad_backend_and_params():
  with pytest.raises(ValueError, match="backend"):
    pallas_cpu.pallas_call(lambda x, o: None, out_shape=X, backend="gpu")
  with pytest.raises(ValueError, match="uninitialized_memory"):
    pallas_cpu.CompilerParams(uninitialized_memory="garbage")


def test_error_inside_rule_names_primitive_and_line():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[jnp.arange(8), :]  # gather by an index array

  with pytest.raises(NotImplementedError) as e:
    pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                           out_specs=SPEC)(X)
  assert "test_errors.py" in str(e.value)


def test_error_in_a_nested_jaxpr_is_reported_once():
  """A rule failing two levels down (cond inside jit) is wrapped once, at
  the innermost equation; re-raising it must not chain it to itself (JAX's
  error handling would then loop forever)."""
  @jax.jit
  def helper(ref):
    return jax.lax.cond(True, lambda: ref[jnp.arange(8), :],
                        lambda: ref[...])

  def kernel(x_ref, o_ref):
    o_ref[...] = helper(x_ref)

  with pytest.raises(NotImplementedError) as e:
    pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                           out_specs=SPEC)(X)
  assert e.value.__cause__ is not e.value
  assert str(e.value).count("while lowering primitive") == 1


def test_zero_size_block_operand_is_a_clear_error():
  """(interpret=True itself fails here with a ZeroDivisionError.)"""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0
  x = jnp.zeros((16, 0), jnp.float32)
  with pytest.raises(NotImplementedError, match=r"zero-size shape \(16, 0\)"):
    pallas_cpu.pallas_call(kernel, out_shape=x, backend="cpu")(x)
