# RUN: %PYTHON %s | FileCheck %s
# RUN: not %PYTHON %s --uncaught 2>&1 | FileCheck %s --check-prefix=UNCAUGHT
"""Unsupported primitives fail before any IR is built, naming every
unsupported primitive and the kernel source line it comes from."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


def lower(kernel, index_map=lambda i: (i, 0)):
  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
        grid=(2,), in_specs=[pl.BlockSpec((8, 128), index_map)],
        out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
        backend="cpu")(x)
  return lower_text(f, jnp.zeros((16, 128), jnp.float32))


def print_error(kernel, **kwargs):
  try:
    lower(kernel, **kwargs)
  except NotImplementedError as e:
    print(f"NotImplementedError: {e}")
  else:
    print("lowered without error")


def sort_kernel(x_ref, o_ref):
  o_ref[...] = jax.lax.sort(x_ref[...], dimension=1)
  # UNCAUGHT: Traceback
  # UNCAUGHT: NotImplementedError: pallas_cpu cannot lower kernel 'sort_kernel': unsupported primitive(s) sort:
  # UNCAUGHT-NEXT: sort at {{.*}}errors.py:[[# @LINE - 3]]:{{[0-9]+}} (sort_kernel)


# Run as a script with --uncaught: the exception propagates and the process
# fails (the second RUN line checks that with `not`).
if "--uncaught" in sys.argv:
  lower(sort_kernel)
  sys.exit(0)


# The first line names the kernel and the primitives, then one line per
# offending equation: file:line:column (function).
# CHECK-LABEL: TEST: test_unsupported_primitive
# CHECK-NEXT: NotImplementedError: pallas_cpu cannot lower kernel 'sort_kernel': unsupported primitive(s) sort:
@run_test
def test_unsupported_primitive():
  def sort_kernel(x_ref, o_ref):
    o_ref[...] = jax.lax.sort(x_ref[...], dimension=1)
    # CHECK-NEXT: sort at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}sort_kernel)
    # CHECK-NOT: module
  print_error(sort_kernel)


# Every unsupported equation is listed in program order with its line; the
# summary names each primitive once (lgamma appears twice), sorted.
# CHECK-LABEL: TEST: test_several_unsupported_primitives
# CHECK-NEXT: NotImplementedError: pallas_cpu cannot lower kernel 'scan_kernel': unsupported primitive(s) digamma, lgamma, sort:
@run_test
def test_several_unsupported_primitives():
  def scan_kernel(x_ref, o_ref):
    x = x_ref[...]
    s = jax.lax.lgamma(x)
    # CHECK-NEXT: lgamma at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}scan_kernel)
    m = jax.lax.digamma(x)
    # CHECK-NEXT: digamma at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}scan_kernel)
    y = jax.lax.sort(x + m,
                     dimension=1)
    # CHECK-NEXT: sort at {{.*}}errors.py:[[# @LINE - 2]]:{{[0-9]+}} ({{.*}}scan_kernel)
    t = jax.lax.lgamma(y)
    # CHECK-NEXT: lgamma at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}scan_kernel)
    # CHECK-NOT: at {{.*}}errors.py
    o_ref[...] = t + s
  print_error(scan_kernel)


# Unsupported primitives nested in supported control flow are found too.
# CHECK-LABEL: TEST: test_unsupported_inside_control_flow
# CHECK-NEXT: NotImplementedError: pallas_cpu cannot lower kernel 'loop_kernel': unsupported primitive(s) lgamma:
@run_test
def test_unsupported_inside_control_flow():
  def loop_kernel(x_ref, o_ref):
    def body(i, acc):
      return jax.lax.lgamma(acc)
    # CHECK-NEXT: lgamma at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}loop_kernel.<locals>.body)
    o_ref[...] = jax.lax.fori_loop(0, 2, body, x_ref[...])
  print_error(loop_kernel)


# Index maps are lowered with the same rules and checked the same way; the
# message says which operand's index map failed.
# CHECK-LABEL: TEST: test_unsupported_in_index_map
# CHECK-NEXT: NotImplementedError: pallas_cpu cannot lower kernel 'copy_kernel (index map of args[0])': unsupported primitive(s) lgamma:
@run_test
def test_unsupported_in_index_map():
  def copy_kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]
  print_error(copy_kernel, index_map=lambda i: (
      jnp.int32(jax.lax.lgamma(jnp.float32(i + 1))), 0))
  # CHECK-NEXT: lgamma at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}<lambda>)


# jnp.sort is a jitted library function: its sort equation sits in the jaxpr
# of a nested jit and is still found, at the kernel's line (the nested
# equation has no user frame of its own: errors_nested_source_line.py).
# CHECK-LABEL: TEST: test_unsupported_inside_library_jit
# CHECK-NEXT: NotImplementedError: pallas_cpu cannot lower kernel 'jnp_sort_kernel': unsupported primitive(s) sort:
@run_test
def test_unsupported_inside_library_jit():
  def jnp_sort_kernel(x_ref, o_ref):
    o_ref[...] = jnp.sort(x_ref[...], axis=-1)
    # CHECK-NEXT: sort at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}jnp_sort_kernel)
  print_error(jnp_sort_kernel)


# A static window past the end of a ref is an IndexError naming the ref, the
# window, its shape and the kernel's line -- before MLIR's verifier sees it.
# CHECK-LABEL: TEST: test_static_window_out_of_bounds
# CHECK-NEXT: IndexError: pallas_cpu: static slice out of bounds: [pl.ds(6, 4), :] on input 0 'x_ref' of shape (8, 128): dimension 0: [6, 10) is not inside [0, 8)
@run_test
def test_static_window_out_of_bounds():
  def oob_kernel(x_ref, o_ref):
    o_ref[pl.ds(0, 4), :] = jnp.zeros((4, 128), jnp.float32)
    o_ref[pl.ds(4, 4), :] = x_ref[pl.ds(jnp.int32(6), 4), :]
    # CHECK-NEXT: while lowering primitive 'get' at {{.*}}errors.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}oob_kernel)
    # CHECK-NOT: memref.subview
  try:
    lower(oob_kernel)
  except IndexError as e:
    print(f"IndexError: {e}")
  else:
    print("lowered without error")
