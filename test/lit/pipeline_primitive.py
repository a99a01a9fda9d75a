# RUN: %PYTHON %s | FileCheck %s
"""emit_pipeline in its primitive form lowers inline: the rebuilt pipeline's
loop carries the grid index, and pl.program_id in the body reads that index
(plus the pipeline's zero grid offset), not the kernel's grid.  A named grid
axis answers lax.axis_index with its loop's induction variable."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax._src import config
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test

X = jnp.ones((64, 128), jnp.float32)
ANY = pl.BlockSpec(memory_space=pl.ANY)


# CHECK-LABEL: TEST: test_program_id_in_the_body_is_the_pipeline_index
# CHECK: call @pallas_cpu_rt_dma_start_f32(
# The pipeline's step loop; its last carry is the grid index:
# CHECK: scf.for %{{.*}} iter_args({{.*}}, %[[IDX:[a-z0-9_]+]] = %{{[a-z0-9_]+}}) -> (i32, i32, i32, i32, i32, i32)
# CHECK: %[[PID:.*]] = arith.addi %[[IDX]], %c0_i32{{.*}} : i32
# CHECK: call @pallas_cpu_rt_sem_wait(
# CHECK: %[[IX:.*]] = arith.index_cast %[[PID]] : i32 to index
# CHECK-NEXT: %[[I32:.*]] = arith.index_cast %[[IX]] : index to i32
# CHECK-NEXT: %[[F:.*]] = arith.sitofp %[[I32]] : i32 to f32
# CHECK-NEXT: linalg.generic
# CHECK: arith.addf %{{.*}}, %[[F]] : f32
# CHECK: scf.yield
@run_test
def test_program_id_in_the_body_is_the_pipeline_index():
  def kernel(x_hbm, o_hbm):
    def body(x_ref, o_ref):
      o_ref[...] = x_ref[...] + pl.program_id(0).astype(jnp.float32)
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    pltpu.emit_pipeline(body, grid=(8,), in_specs=[spec], out_specs=spec)(
        x_hbm, o_hbm)

  f = lambda x: pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype),
      in_specs=[ANY], out_specs=ANY)(x)
  with config.use_emit_pipeline_primitive(True):
    print(lower_text(f, X))


# CHECK-LABEL: TEST: test_axis_index_of_a_named_grid_axis
# CHECK: scf.for %[[I:[a-z0-9_]+]] =
# CHECK: scf.for %[[J:[a-z0-9_]+]] =
# The block's fill value is the inner ("j") loop's induction variable:
# CHECK: memref.subview
# CHECK: %[[V:.*]] = arith.index_cast %[[J]] : index to i32
# CHECK-NEXT: linalg.generic
# CHECK-NEXT: ^bb0(%out: i32):
# CHECK-NEXT: linalg.yield %[[V]] : i32
@run_test
def test_axis_index_of_a_named_grid_axis():
  def kernel(o_ref):
    o_ref[...] = jnp.full(o_ref.shape, jax.lax.axis_index("j"), jnp.int32)

  f = lambda: pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((16, 256), jnp.int32),
      grid=(("i", 2), ("j", 2)),
      out_specs=pl.BlockSpec((8, 128), lambda i, j: (i, j)))()
  print(lower_text(f))
