"""Primitives with little CPU meaning: Mosaic's branch of platform_dependent,
no-op delay/trace_value/touch, identities (stage, reshard), add_any,
dim_as_value (concrete dims; symbolic ones are a clear error)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, check_against_interpret

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


def test_dim_as_value_of_a_concrete_dimension():
  """Bound directly: tracing produces it only for symbolic dims."""
  from jax._src.export import shape_poly

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + shape_poly.dim_as_value_p.bind(dim=7)

  assert_same(pallas_cpu.pallas_call(kernel, out_shape=X)(X), X + 7)


def test_shape_polymorphic_export_is_a_clear_error():
  """jax.export with symbolic shapes: a symbolic dim used as a value in the
  kernel, or symbolic operand shapes, give NotImplementedError."""
  from jax import export

  def captured(x):  # concrete operands, a symbolic dim in the body
    n = x.shape[0]

    def kernel(x_ref, o_ref):
      o_ref[...] = x_ref[...] + n
    return pl.pallas_call(kernel, out_shape=X)(x[:8])

  def gridded(x):  # symbolic operands (the grid size is a dynamic bound)
    def kernel(x_ref, o_ref):
      o_ref[...] = x_ref[...] * 2
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(
        x.shape, x.dtype), grid=(x.shape[0] // 8,), in_specs=[spec],
                          out_specs=spec)(x)

  b, = export.symbolic_shape("8*b")
  arg = jax.ShapeDtypeStruct((b, 128), jnp.float32)
  with pallas_cpu.force_cpu_backend():
    with pytest.raises(NotImplementedError, match=r"symbolic dimension 8\*b "
                       r"is used as a value.*shape-polymorphic export"):
      export.export(jax.jit(captured), platforms=["cpu"])(arg)
    with pytest.raises(NotImplementedError, match=r"operand of shape "
                       r"\(8\*b, 128\) is shape-polymorphic"):
      export.export(jax.jit(gridded), platforms=["cpu"])(arg)
  # Concrete shapes export (the custom call has no compatibility
  # guarantee: allowed explicitly) and run.
  allow = [export.DisabledSafetyCheck.custom_call("pallas_cpu_call")]
  with pallas_cpu.force_cpu_backend():
    exp = export.export(jax.jit(gridded), platforms=["cpu"],
                        disabled_checks=allow)(
        jax.ShapeDtypeStruct((16, 128), jnp.float32))
  x = jnp.concatenate([X, X])
  assert_same(exp.call(x), x * 2)


def test_kernel_that_crashes_llvms_vectorizer_on_znver5():
  """opt -mcpu=znver5 (the bundled LLVM has assertions on) aborts on this
  kernel ("VPlan cost model and legacy cost model disagreed"); the native
  build retries with the generic x86-64 level the host supports."""
  def kernel(x_ref, o_ref):
    iota = jax.lax.broadcasted_iota(jnp.int32, (5, 20), 0)
    o_ref[...] = x_ref[...] + (iota * 5 + 3) % 5
  x = jnp.arange(100, dtype=jnp.int32).reshape(5, 20)
  check_against_interpret(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def test_native_cpu_targets_end_generic():
  from pallas_cpu import native
  targets = native.cpu_targets()
  assert targets[0] == "native" and targets[-1] == "x86-64"
