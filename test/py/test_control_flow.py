"""pl.when / lax.cond / switch, fori_loop (scan), while_loop, nested jit."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from conftest import assert_same, check_against_interpret

SPEC = pl.BlockSpec((8, 128), lambda i: (i, 0))
X = jnp.asarray(np.random.default_rng(0).standard_normal((32, 128)),
                jnp.float32)
OUT = jax.ShapeDtypeStruct(X.shape, X.dtype)


def _check(kernel, x=X, exact=True):
  return check_against_interpret(kernel, OUT, x, grid=(4,), in_specs=[SPEC],
                                 out_specs=SPEC, exact=exact, rtol=1e-5)


def test_when():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]

    @pl.when(pl.program_id(0) % 2 == 1)
    def _():
      o_ref[...] = -x_ref[...] * 2

  _check(kernel)


def test_cond_with_results_scalar_and_array():
  def kernel(x_ref, o_ref):
    i = pl.program_id(0)
    s, a = jax.lax.cond(i < 2, lambda: (i * 2, x_ref[...] + 1),
                        lambda: (i + 10, x_ref[...] * 3))
    o_ref[...] = a + s.astype(jnp.float32)

  _check(kernel)


def test_switch_many_branches():
  def kernel(x_ref, o_ref):
    v = x_ref[...]
    o_ref[...] = jax.lax.switch(pl.program_id(0),
                                [lambda: v, lambda: v * 2, lambda: -v,
                                 lambda: v + 7])

  _check(kernel)


def test_fori_loop_scalar_and_array_carries():
  def kernel(x_ref, o_ref):
    def body(j, carry):
      acc, s = carry
      return acc * 0.5 + x_ref[...], s + x_ref[j, 0]
    acc, s = jax.lax.fori_loop(0, 5, body, (jnp.zeros((8, 128), jnp.float32),
                                            0.0))
    o_ref[...] = acc + s

  _check(kernel, exact=False)


def test_fori_loop_writing_refs_with_dynamic_slices():
  def kernel(x_ref, o_ref):
    def body(j, _):
      o_ref[pl.ds(j, 1), :] = x_ref[pl.ds(7 - j, 1), :] * j.astype(jnp.float32)
      return _
    jax.lax.fori_loop(0, 8, body, 0)

  _check(kernel)


def test_scan_with_xs_and_ys():
  def kernel(x_ref, o_ref):
    def step(c, row):
      c = c + row
      return c, c * 2
    c, ys = jax.lax.scan(step, jnp.zeros((128,), jnp.float32), x_ref[...])
    o_ref[...] = ys - c

  _check(kernel, exact=False)


def test_while_loop():
  def kernel(x_ref, o_ref):
    # program_id is read outside the loop: interpret=True cannot evaluate it
    # inside a while condition.
    n = 3 + pl.program_id(0)

    def cond(c):
      return c[0] < n

    def body(c):
      return c[0] + 1, c[1] * 1.5 + x_ref[...]
    _, v = jax.lax.while_loop(cond, body, (0, jnp.zeros((8, 128), jnp.float32)))
    o_ref[...] = v

  _check(kernel, exact=False)


def test_nested_jit_and_custom_jvp():
  @jax.jit
  def helper(v):
    return jnp.tanh(v) * 2

  def kernel(x_ref, o_ref):
    o_ref[...] = helper(x_ref[...]) + jax.nn.relu(x_ref[...])

  _check(kernel, exact=False)


# -- array carries: computed in place where safe (rules/control_flow.py) -------
def test_carries_swapped_each_iteration():
  """(a, b) -> (b + 1, a * 2): each new value reads the other's old buffer."""
  def kernel(x_ref, o_ref):
    a, b = jax.lax.fori_loop(0, 5, lambda i, ab: (ab[1] + 1.0, ab[0] * 2.0),
                             (x_ref[...], -x_ref[...]))
    o_ref[...] = a - b
  _check(kernel)


def test_carry_reads_itself_shifted_and_unchanged_carry():
  """A carry whose new value reads its own buffer at other points (a roll)
  is not computed in place; an unchanged carry keeps its value."""
  def kernel(x_ref, o_ref):
    def body(i, c):
      acc, keep = c
      return jnp.roll(acc, 1, axis=1) + keep * 0.5, keep
    acc, keep = jax.lax.fori_loop(0, 3, body, (x_ref[...], x_ref[...] + 1.0))
    o_ref[...] = acc + keep
  _check(kernel, exact=False)


def test_carry_read_survives_writes_in_the_body():
  """acc read before a ref write in the same iteration (a pl.when storing
  to the output) keeps its value: carries are not refs the kernel writes."""
  def kernel(x_ref, o_ref):
    def body(i, acc):
      old = acc * 1.0

      @pl.when(i == 1)
      def _():
        o_ref[...] = acc

      return old + x_ref[...]
    acc = jax.lax.fori_loop(0, 4, body, jnp.zeros_like(x_ref))
    o_ref[...] = o_ref[...] + acc
  _check(kernel)


def test_one_new_value_for_two_carries():
  """(a, b) -> (n, n + b) with n = a + 1: ``a`` is read by both new values,
  so it is not written before ``b``'s is computed."""
  def kernel(x_ref, o_ref):
    def body(i, c):
      n = c[0] + 1.0
      return n, n + c[1]
    a, b = jax.lax.fori_loop(0, 3, body, (x_ref[...], x_ref[...] * 2.0))
    o_ref[...] = a - b
  _check(kernel, exact=False)


def test_cond_result_carried_and_read_next_iteration():
  """A cond's result buffer, carried to the next iteration, where the same
  cond writes that buffer again before the carried value is used."""
  def kernel(x_ref, o_ref):
    def body(i, c):
      a, r0 = c
      r = jax.lax.cond(i % 2 == 0, lambda v: v + 1.0, lambda v: v * 2.0, a)
      return r + r0, r
    a, r = jax.lax.fori_loop(0, 4, body, (x_ref[...], x_ref[...] * 0.0))
    o_ref[...] = a - r
  _check(kernel, exact=False)


def test_while_cond_reads_the_array_carry():
  def kernel(x_ref, o_ref):
    def cond(c):
      return (jnp.max(c[0]) < 50.0) & (c[1] < 20)

    def body(c):
      return c[0] * 1.5 + 0.5, c[1] + 1
    a, n = jax.lax.while_loop(cond, body, (jnp.abs(x_ref[...]), 0))
    o_ref[...] = a - n.astype(jnp.float32)
  _check(kernel, exact=False)
