# RUN: %PYTHON %s | FileCheck %s
"""The race-detecting build reports every ref operation's window to the
runtime (get, swap, block copies) and registers the kernel's buffers; the
plain build of the same kernel carries no instrumentation at all."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test

X = jnp.ones((16, 128), jnp.float32)


def _kernel(x_ref, o_ref, acc_ref):
  acc_ref[...] = x_ref[...] * 2
  o_ref[...] = acc_ref[...] + 1


def _call(x):
  return pl.pallas_call(
      _kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
      grid=(2,), in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32)])(x)


# CHECK-LABEL: TEST: test_plain_build
# CHECK-NOT: pallas_cpu_rt_race_access
# CHECK-NOT: pallas_cpu_rt_buffer_register
# CHECK-LABEL: TEST: test_instrumented_build
@run_test
def test_plain_build():
  print(lower_text(_call, X))


# The scratch buffer is registered with its element size (4) and a name:
# CHECK: call @pallas_cpu_rt_buffer_register(%[[RT:[^,]*]], %{{.*}}, %c4096_i64{{.*}}, %c4_i64{{.*}}, %{{.*}})
# CHECK: call @pallas_cpu_rt_enter
# Each ref operation: (window, element bytes, write?, site, grid point).
# The read of x_ref, the write of acc_ref, its read, the write of o_ref:
# CHECK: call @pallas_cpu_rt_race_access_f32(%[[RT]], %{{.*}}, %c4_i64{{.*}}, %c0_i64{{.*}}, %{{.*}}, %{{.*}}) : (!llvm.ptr, memref<*xf32>, i64, i64, i64, i64) -> ()
# CHECK: call @pallas_cpu_rt_race_access_f32(%[[RT]], %{{.*}}, %c4_i64{{.*}}, %c1_i64{{.*}},
# CHECK: call @pallas_cpu_rt_race_access_f32(%[[RT]], %{{.*}}, %c4_i64{{.*}}, %c0_i64{{.*}},
# CHECK: call @pallas_cpu_rt_race_access_f32(%[[RT]], %{{.*}}, %c4_i64{{.*}}, %c1_i64{{.*}},
# The sites name the operation, the ref and the line:
# CHECK: pallas_cpu.runtime_info = {{.*}}read of input 0 'x_ref' at {{.*}}races.py{{.*}}write of scratch operand 0 'acc_ref'
@run_test
def test_instrumented_build():
  text = lower_text(_call, X,
                    params=pallas_cpu.CompilerParams(detect_races=True))
  body, _, attrs = text.partition("func.func @pallas_cpu_entry")
  print("func.func @pallas_cpu_entry" + attrs)
  print(body)
