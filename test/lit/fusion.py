# RUN: %PYTHON %s | FileCheck %s
"""Elementwise chains fuse into one linalg.generic writing the output view."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

import pallas_cpu
from lit_helpers import lower_text, run_test


def blocked(kernel, n_in):
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  def f(*args):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
        grid=(2,), in_specs=[spec] * n_in, out_specs=spec,
        backend="cpu")(*args)
  return f


X = jnp.zeros((16, 128), jnp.float32)


def exp_kernel(x_ref, y_ref, o_ref):
  o_ref[...] = jnp.exp(x_ref[...] * 2.0 + y_ref[...])


# exp(x * 2 + y): one generic reads both input blocks and writes the output
# block in place, no temporary buffer of the block's shape.  The body
# starts with x * 2 + y and everything up to its yield computes exp of that
# sum (math.exp or its inline f32 expansion) in the same body.
# CHECK-LABEL: TEST: test_elementwise_chain_is_one_generic
# CHECK-NOT: memref.alloc() {{.*}}: memref<8x128xf32
# CHECK: %[[TWO:.*]] = arith.constant 2.000000e+00 : f32
# CHECK-NOT: memref.alloc() {{.*}}: memref<8x128xf32
# CHECK: %[[XV:.*]] = memref.memory_space_cast %{{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: %[[YV:.*]] = memref.memory_space_cast %{{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: %[[OV:.*]] = memref.memory_space_cast %{{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK-NOT: memref.alloc() {{.*}}: memref<8x128xf32
# CHECK: linalg.generic {indexing_maps = [#map, #map, #map], iterator_types = ["parallel", "parallel"]} ins(%[[XV]], %[[YV]] : {{.*}}) outs(%[[OV]] : {{.*}}) {
# CHECK-NEXT: ^bb0(%[[X:.*]]: f32, %[[Y:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[X2:.*]] = arith.mulf %[[X]], %[[TWO]] : f32
# CHECK-NEXT: %[[SUM:.*]] = arith.addf %[[X2]], %[[Y]] : f32
# CHECK-NEXT: {{.*}} %[[SUM]]{{[ ,]}}
# CHECK-NOT: linalg.
# CHECK-NOT: memref.
# CHECK: linalg.yield %{{.*}} : f32
# CHECK-NEXT: }
# CHECK-NOT: linalg.generic
# CHECK-NOT: linalg.copy
# CHECK-NOT: memref.alloc() {{.*}}: memref<8x128xf32
# CHECK: return
@run_test
def test_elementwise_chain_is_one_generic():
  print(lower_text(blocked(exp_kernel, 2), X, X, stage="canonical"))


def broadcast_kernel(x_ref, b_ref, o_ref):
  o_ref[...] = jnp.tanh(x_ref[...] - b_ref[0:1, :])


# A broadcast operand joins the same generic through a broadcasting
# indexing map (the (1, 128) slice is read with the row index fixed).
# CHECK-LABEL: TEST: test_broadcast_fuses
# CHECK-DAG: #[[ID:.*]] = affine_map<(d0, d1) -> (d0, d1)>
# CHECK-DAG: #[[ROW0:.*]] = affine_map<(d0, d1) -> (0, d1)>
# CHECK-NOT: memref.alloc() {{.*}}: memref<8x128xf32
# CHECK: linalg.generic {indexing_maps = [#[[ID]], #[[ROW0]], #[[ID]]], iterator_types = ["parallel", "parallel"]}
# CHECK-NEXT: ^bb0(%[[X:.*]]: f32, %[[B:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[D:.*]] = arith.subf %[[X]], %[[B]] : f32
# tanh of the difference (math.tanh or its inline f32 expansion), in the
# same body.
# CHECK-NEXT: {{.*}} %[[D]]{{[ ,]}}
# CHECK-NOT: linalg.
# CHECK-NOT: memref.
# CHECK: linalg.yield %{{.*}} : f32
# CHECK-NEXT: }
# CHECK-NOT: linalg.generic
# CHECK-NOT: memref.alloc() {{.*}}: memref<8x128xf32
# CHECK: return
@run_test
def test_broadcast_fuses():
  print(lower_text(blocked(broadcast_kernel, 2), X, X, stage="canonical"))


def reuse_kernel(x_ref, o_ref):
  t = jnp.sin(x_ref[...])
  o_ref[...] = t * t + t


# A value used more than once is computed once into a vmem temporary, then
# the rest fuses.
# CHECK-LABEL: TEST: test_shared_value_is_materialized_once
# CHECK: %[[TMP:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x128xf32, "vmem">
# CHECK: linalg.generic {{.*}} outs(%[[TMP]] : memref<8x128xf32, "vmem">)
# CHECK: math.sin
# CHECK-NOT: math.sin
# CHECK: linalg.generic {{.*}} ins(%[[TMP]] : memref<8x128xf32, "vmem">) outs(%{{.*}} : memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">)
# CHECK-NEXT: ^bb0(%[[T:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[SQ:.*]] = arith.mulf %[[T]], %[[T]] : f32
# CHECK-NEXT: arith.addf %[[SQ]], %[[T]] : f32
# CHECK-NOT: linalg.generic
# CHECK: memref.dealloc %[[TMP]]
@run_test
def test_shared_value_is_materialized_once():
  print(lower_text(blocked(reuse_kernel, 1), X, stage="canonical"))
