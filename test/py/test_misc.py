"""Primitives with little CPU meaning: Mosaic's branch of platform_dependent,
no-op delay/trace_value/touch, identities (stage, reshard), add_any."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

X = jnp.asarray(np.random.default_rng(0).standard_normal((8, 128)), jnp.float32)


def test_platform_dependent_takes_mosaics_branch():
  """Mosaic picks the branch naming "mosaic", else the default one (a
  "tpu" branch is the XLA TPU platform's, not Mosaic's)."""
  def kernel(x_ref, o_ref):
    o_ref[...] = jax.lax.platform_dependent(
        x_ref[...], tpu=lambda v: v * 2, default=lambda v: v * 3)

  out = pallas_cpu.pallas_call(kernel, out_shape=X)(X)
  assert_same(out, X * 3)


def test_delay_trace_value_and_touch_are_no_ops():
  def kernel(x_ref, o_ref):
    pl.delay(100)
    pltpu.trace_value("first element", x_ref[0, 0])
    pltpu.touch(x_ref)
    o_ref[...] = x_ref[...] + 1

  assert_same(pallas_cpu.pallas_call(kernel, out_shape=X)(X), X + 1)


def test_custom_vjp_gradient_accumulation_inside_kernel():
  @jax.custom_vjp
  def f(v):
    return v * v

  def fwd(v):
    return f(v), v

  def bwd(v, g):
    return (2 * v * g,)

  f.defvjp(fwd, bwd)

  def kernel(x_ref, o_ref):
    o_ref[...] = f(x_ref[...]) + jnp.sin(x_ref[...])

  out = pallas_cpu.pallas_call(kernel, out_shape=X)(X)
  assert_same(out, X * X + jnp.sin(X), exact=False, rtol=1e-6, atol=1e-6)
