# RUN: %PYTHON %s | FileCheck %s
"""An unsupported primitive inside a nested jaxpr (the jit that jnp.sort
wraps around lax.sort) is reported at the kernel's line: the nested
equation's traceback stops inside jax/_src/numpy, so the walker falls back
to the line of the enclosing equation."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


# CHECK-LABEL: TEST: test_nested_jit_primitive_has_source_line
# CHECK-NEXT: NotImplementedError: pallas_cpu cannot lower kernel 'jnp_sort_kernel': unsupported primitive(s) sort:
@run_test
def test_nested_jit_primitive_has_source_line():
  def jnp_sort_kernel(x_ref, o_ref):
    o_ref[...] = jnp.sort(x_ref[...], axis=-1)
    # CHECK-NEXT: sort at {{.*}}errors_nested_source_line.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}jnp_sort_kernel)

  def f(x):
    return pallas_cpu.pallas_call(
        jnp_sort_kernel,
        out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32), grid=(2,),
        in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
        backend="cpu")(x)
  try:
    lower_text(f, jnp.zeros((16, 128), jnp.float32))
  except NotImplementedError as e:
    print(f"NotImplementedError: {e}")
