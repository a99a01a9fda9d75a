# RUN: %PYTHON %s | FileCheck %s
"""What the debugging rules (rules/debug.py) lower to.

pl.debug_print: each scalar's bits, zero-extended to i64, are stored in a
buffer of the print's own (allocated at kernel entry), passed to the
runtime call pallas_cpu_rt_debug_print with the print's id.  The format
string and the dtypes the runtime decodes the bits with travel in the
module attribute pallas_cpu.runtime_info (JSON), indexed by that id.
pl.debug_check (with pl.enable_debug_checks on at trace time): an scf.if on
the failure predicate around pallas_cpu_rt_check_failed(id, grid index);
the message, with the kernel's source line, is in runtime_info too.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import checkify
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test

SPEC = pl.BlockSpec((8, 128), lambda i: (i, 0))


def lower(kernel):
  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
        grid=(2,), in_specs=[SPEC], out_specs=SPEC, backend="cpu")(x)
  return lower_text(f, jnp.zeros((16, 128), jnp.float32), stage="canonical")


def print_error(kernel):
  try:
    lower(kernel)
  except NotImplementedError as e:
    print(f"NotImplementedError: {e}")
  else:
    print("lowered without error")


def printing_kernel(x_ref, y_ref, o_ref):
  pl.debug_print("step {} x={}", pl.program_id(0), x_ref[0, 0])
  pl.debug_print("flag {} y={}", x_ref[1, 1] > 0, y_ref[2, 2])
  o_ref[...] = x_ref[...]


# Print 0 has an int32 and a float32, print 1 a bool and a bfloat16: the
# i32 is zero-extended, floats go through a same-width bitcast, the i1
# and the bf16's i16 are zero-extended.  The calls stay inside the grid
# step, in program order, before the block's copy.
# CHECK-LABEL: TEST: test_debug_print
# CHECK: pallas_cpu.runtime_info = "{{.*}}\22check_messages\22: [], \22collective\22: false, \22debug_prints\22: [
# CHECK-SAME: {\22dtypes\22: [\22int32\22, \22float32\22], \22fmt\22: \22step {} x={}\22,
# CHECK-SAME: \22has_placeholders\22: true, {{.*}}},
# CHECK-SAME: {\22dtypes\22: [\22bool\22, \22bfloat16\22], \22fmt\22: \22flag {} y={}\22,
# CHECK-SAME: \22has_placeholders\22: true, {{.*}}}],
# CHECK-SAME: \22semaphore_names\22: [], \22shared_buffers\22: [], \22sites\22: [{{.*}}]}"
# CHECK: func.func private @pallas_cpu_rt_debug_print(!llvm.ptr, i64, memref<?xi64, strided<[1], offset: ?>>)
# CHECK: func.func @pallas_cpu_entry(%[[RT:.*]]: !llvm.ptr,
# CHECK-DAG: %[[ID0:.*]] = arith.constant 0 : i64
# CHECK-DAG: %[[ID1:.*]] = arith.constant 1 : i64
# CHECK-DAG: %[[ARGS0:.*]] = memref.alloc() {alignment = 64 : i64} : memref<2xi64, "vmem">
# CHECK-DAG: %[[ARGS1:.*]] = memref.alloc() {alignment = 64 : i64} : memref<2xi64, "vmem">
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[PID:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK: %[[X00:.*]] = memref.load %{{.*}}[] : memref<f32, strided<[], offset: ?>, "vmem">
# CHECK-NEXT: %[[PID64:.*]] = arith.extui %[[PID]] : i32 to i64
# CHECK-NEXT: memref.store %[[PID64]], %[[ARGS0]][%{{.*}}] : memref<2xi64, "vmem">
# CHECK-NEXT: %[[XBITS:.*]] = arith.bitcast %[[X00]] : f32 to i32
# CHECK-NEXT: %[[X64:.*]] = arith.extui %[[XBITS]] : i32 to i64
# CHECK-NEXT: memref.store %[[X64]], %[[ARGS0]][%{{.*}}] : memref<2xi64, "vmem">
# CHECK-NEXT: %[[A0:.*]] = memref.cast %[[ARGS0]]
# CHECK-NEXT: %[[H0:.*]] = memref.memory_space_cast %[[A0]] : {{.*}} to memref<2xi64, strided<[1], offset: ?>>
# CHECK-NEXT: %[[D0:.*]] = memref.cast %[[H0]] : {{.*}} to memref<?xi64, strided<[1], offset: ?>>
# CHECK-NEXT: func.call @pallas_cpu_rt_debug_print(%[[RT]], %[[ID0]], %[[D0]])
#
# CHECK: %[[X11:.*]] = memref.load %{{.*}}[] : memref<f32, strided<[], offset: ?>, "vmem">
# CHECK-NEXT: %[[FLAG:.*]] = arith.cmpf ogt, %[[X11]], %{{.*}} : f32
# CHECK: %[[B:.*]] = memref.load %{{.*}}[] : memref<bf16, strided<[], offset: ?>, "vmem">
# CHECK-NEXT: %[[FLAG64:.*]] = arith.extui %[[FLAG]] : i1 to i64
# CHECK-NEXT: memref.store %[[FLAG64]], %[[ARGS1]][%{{.*}}] : memref<2xi64, "vmem">
# CHECK-NEXT: %[[BBITS:.*]] = arith.bitcast %[[B]] : bf16 to i16
# CHECK-NEXT: %[[B64:.*]] = arith.extui %[[BBITS]] : i16 to i64
# CHECK-NEXT: memref.store %[[B64]], %[[ARGS1]][%{{.*}}] : memref<2xi64, "vmem">
# CHECK: func.call @pallas_cpu_rt_debug_print(%[[RT]], %[[ID1]], %{{.*}})
# CHECK-NEXT: linalg.generic
@run_test
def test_debug_print():
  def f(x, y):
    return pallas_cpu.pallas_call(
        printing_kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
        grid=(2,), in_specs=[SPEC, SPEC], out_specs=SPEC, backend="cpu")(x, y)
  print(lower_text(f, jnp.zeros((16, 128), jnp.float32),
                   jnp.zeros((16, 128), jnp.bfloat16), stage="canonical"))


# CHECK-LABEL: TEST: test_debug_check
@run_test
def test_debug_check():
  def checking_kernel(x_ref, o_ref):
    pl.debug_check(pl.program_id(0) < 1, "only step 0 is allowed")
    # CHECK: pallas_cpu.runtime_info = "{{.*}}\22check_messages\22: [
    # CHECK-SAME: \22only step 0 is allowed (at {{.*}}debug.py:[[# @LINE - 2]]:{{[0-9]+}} ({{.*}}checking_kernel))\22],
    # CHECK-SAME: \22debug_prints\22: [], \22semaphore_names\22: [], \22shared_buffers\22: [], \22sites\22: [{{.*}}]}"
    o_ref[...] = x_ref[...]

  with pl.enable_debug_checks(True):
    print(lower(checking_kernel))
# check_p's predicate means "failed": not(i < 1), canonicalized to i >= 1.
# The runtime gets the check's id and the linear grid index.
# CHECK: func.func private @pallas_cpu_rt_check_failed(!llvm.ptr, i64, i64)
# CHECK: func.func @pallas_cpu_entry(%[[RT:.*]]: !llvm.ptr,
# CHECK-DAG: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-DAG: %[[ID:.*]] = arith.constant 0 : i64
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[PID:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK-NEXT: %[[FAILED:.*]] = arith.cmpi sge, %[[PID]], %[[ONE]] : i32
# CHECK-NEXT: scf.if %[[FAILED]] {
# CHECK-NEXT: %[[AT:.*]] = arith.index_cast %[[I]] : index to i64
# CHECK-NEXT: func.call @pallas_cpu_rt_check_failed(%[[RT]], %[[ID]], %[[AT]]) : (!llvm.ptr, i64, i64) -> ()
# CHECK-NEXT: }
# CHECK-NEXT: linalg.generic


def check_kernel(x_ref, o_ref):
  pl.debug_check(pl.program_id(0) < 1, "only step 0 is allowed")
  o_ref[...] = x_ref[...]


# With debug checks off (the default) the check costs nothing: no message,
# no runtime call.
# CHECK-LABEL: TEST: test_debug_check_disabled
# CHECK: pallas_cpu.runtime_info = "{{.*}}\22check_messages\22: [], \22collective\22: false, \22debug_prints\22: [], \22semaphore_names\22: [], \22shared_buffers\22: [], \22sites\22: [{{.*}}]}"
# CHECK-NOT: pallas_cpu_rt_check_failed
# CHECK: return
@run_test
def test_debug_check_disabled():
  print(lower(check_kernel))


# checkify.check outside pl.debug_check (debug=False) must be
# functionalized by jax.experimental.checkify first.
# CHECK-LABEL: TEST: test_checkify_check_needs_checkify
# CHECK-NEXT: NotImplementedError: pallas_cpu: non-debug checks; functionalize them with jax.experimental.checkify
@run_test
def test_checkify_check_needs_checkify():
  def kernel(x_ref, o_ref):
    checkify.check(x_ref[0, 0] > 0, "x must be positive")
    # CHECK-NEXT: while lowering primitive 'check' at {{.*}}debug.py:[[# @LINE - 1]]:{{[0-9]+}} ({{.*}}kernel)
    o_ref[...] = x_ref[...]
  print_error(kernel)


# An array is recorded element by element, row-major, in the same i64
# buffer as the scalars (2x128 bools, then the int32 at 256): a generic
# writes the bits through an expand_shape of the buffer's window; the
# table entry carries the shapes the runtime rebuilds the arrays with.
# CHECK-LABEL: TEST: test_debug_print_of_an_array
# CHECK: \22debug_prints\22: [{\22dtypes\22: [\22bool\22, \22int32\22], \22fmt\22: \22row {} at {}\22,
# CHECK-SAME: \22shapes\22: {{\[\[}}2, 128], []]}]
# CHECK: %[[ARGS:.*]] = memref.alloc() {alignment = 64 : i64} : memref<257xi64, "vmem">
# CHECK: %[[WIN:.*]] = memref.subview %[[ARGS]][0] [256] [1]
# CHECK-NEXT: %[[ROWS:.*]] = memref.expand_shape %[[WIN]] {{\[\[}}0, 1]] output_shape [2, 128] {{.*}} into memref<2x128xi64, "vmem">
# CHECK-NEXT: linalg.generic {{.*}} outs(%[[ROWS]] : memref<2x128xi64, "vmem">)
# CHECK: arith.extui %{{.*}} : i1 to i64
# CHECK: %[[PID:.*]] = arith.extui %{{.*}} : i32 to i64
# CHECK-NEXT: memref.store %[[PID]], %[[ARGS]][%{{.*}}] : memref<257xi64, "vmem">
# CHECK: func.call @pallas_cpu_rt_debug_print(
@run_test
def test_debug_print_of_an_array():
  def kernel(x_ref, o_ref):
    pl.debug_print("row {} at {}", x_ref[0:2] > 0, pl.program_id(0))
    o_ref[...] = x_ref[...]
  print(lower(kernel))
