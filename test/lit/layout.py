# RUN: %PYTHON %s | FileCheck %s
"""What the layout primitives lower to: windows (subviews) of one output
buffer, linalg.copy/fill, generics with non-identity input maps, and for
take_along_axis a fused generic that loads the operand at the index."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test


def blocked(kernel, n_in, out_lanes=128):
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  out_spec = pl.BlockSpec((8, out_lanes), lambda i: (i, 0))
  def f(*args):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((16, out_lanes), jnp.float32),
        grid=(2,), in_specs=[spec] * n_in, out_specs=out_spec,
        backend="cpu")(*args)
  return f


X = jnp.zeros((16, 128), jnp.float32)
I = jnp.zeros((16, 128), jnp.int32)


def concat_kernel(x_ref, o_ref):
  o_ref[...] = jnp.concatenate([x_ref[...] * 2, x_ref[:, :64]], axis=1)


# Each operand is computed straight into its window of one 8x192 buffer:
# the lazy x * 2 fuses into the generic that writes the first window.
# CHECK-LABEL: TEST: test_concatenate_writes_windows
# CHECK: %[[BUF:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x192xf32, "vmem">
# CHECK: %[[W0:.*]] = memref.subview %[[BUF]][0, 0] [8, 128] [1, 1]
# CHECK: linalg.generic {{.*}} outs(%[[W0]] : memref<8x128xf32, strided<[192, 1]>, "vmem">)
# CHECK: arith.mulf
# CHECK: %[[W1:.*]] = memref.subview %[[BUF]][0, 128] [8, 64] [1, 1]
# CHECK: linalg.generic {{.*}} outs(%[[W1]] : memref<8x64xf32, strided<[192, 1], offset: 128>, "vmem">)
# CHECK-NEXT: ^bb0(%[[IN:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: linalg.yield %[[IN]] : f32
@run_test
def test_concatenate_writes_windows():
  print(lower_text(blocked(concat_kernel, 1, 192), X, stage="canonical"))


def pad_kernel(x_ref, o_ref):
  o_ref[...] = jax.lax.pad(x_ref[:, :63] + 1, 0.5, ((0, 0, 0), (1, 0, 1)))


# Interior padding: fill with the padding value, then write the operand
# (its lazy expression fused) into a window with lane step 2.
# CHECK-LABEL: TEST: test_pad_fills_then_writes_a_strided_window
# CHECK: %[[BUF:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x126xf32, "vmem">
# CHECK: linalg.fill ins(%{{.*}} : f32) outs(%[[BUF]] : memref<8x126xf32, "vmem">)
# CHECK: %[[W:.*]] = memref.subview %[[BUF]][0, 1] [8, 63] [1, 2] : memref<8x126xf32, "vmem"> to memref<8x63xf32, strided<[126, 2], offset: 1>, "vmem">
# CHECK: linalg.generic {{.*}} outs(%[[W]] :
# CHECK: arith.addf
@run_test
def test_pad_fills_then_writes_a_strided_window():
  print(lower_text(blocked(pad_kernel, 1, 126), X, stage="canonical"))


def rev_kernel(x_ref, o_ref):
  o_ref[...] = jnp.flip(x_ref[...], 1)


# rev reads the input block where it lies through a reversing input map.
# CHECK-LABEL: TEST: test_rev_is_a_generic_with_a_reversed_map
# CHECK: #[[REV:.*]] = affine_map<(d0, d1) -> (d0, -d1 + 127)>
# CHECK: %[[X:.*]] = memref.memory_space_cast %{{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: linalg.generic {indexing_maps = [#[[REV]], #{{.*}}], iterator_types = ["parallel", "parallel"]} ins(%[[X]] :
@run_test
def test_rev_is_a_generic_with_a_reversed_map():
  print(lower_text(blocked(rev_kernel, 1), X, stage="canonical"))


def roll_kernel(x_ref, o_ref):
  o_ref[...] = pltpu.roll(x_ref[...], 3, 1)


def dynamic_roll_kernel(x_ref, o_ref):
  o_ref[...] = pltpu.roll(x_ref[...], pl.program_id(0), 1)


# pltpu.roll: out[:, 3:] = x[:, :125] and out[:, :3] = x[:, 125:], two
# copies between windows.
# CHECK-LABEL: TEST: test_roll_is_two_copies
# CHECK: %[[X:.*]] = memref.memory_space_cast %{{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: %[[S0:.*]] = memref.subview %[[X]][0, 0] [8, 125] [1, 1]
# CHECK: %[[D0:.*]] = memref.subview %[[OUT:.*]][0, 3] [8, 125] [1, 1]
# CHECK: linalg.copy {{.*}} ins(%[[S0]] : {{.*}}) outs(%[[D0]] :
# CHECK: %[[S1:.*]] = memref.subview %[[X]][0, 125] [8, 3] [1, 1]
# CHECK: %[[D1:.*]] = memref.subview %[[OUT]][0, 0] [8, 3] [1, 1]
# CHECK: linalg.copy {{.*}} ins(%[[S1]] : {{.*}}) outs(%[[D1]] :
@run_test
def test_roll_is_two_copies():
  print(lower_text(blocked(roll_kernel, 1), X, stage="canonical"))


# A dynamic shift is taken modulo 128 (floor) at run time; the windows get
# dynamic sizes.
# CHECK-LABEL: TEST: test_dynamic_roll
# CHECK: arith.remsi %{{.*}}, %c128_i32 : i32
# CHECK: arith.select
# CHECK: %[[S:.*]] = arith.index_cast %{{.*}} : i32 to index
# CHECK: %[[REST:.*]] = arith.subi %c128, %[[S]] : index
# CHECK: memref.subview {{.*}}[0, 0] [8, %[[REST]]] [1, 1] {{.*}} to memref<8x?xf32
# CHECK: memref.subview {{.*}}[0, %[[S]]] [8, %[[REST]]] [1, 1]
# CHECK: linalg.copy
# CHECK: linalg.copy
@run_test
def test_dynamic_roll():
  print(lower_text(blocked(dynamic_roll_kernel, 1), X, stage="canonical"))


def gather_kernel(x_ref, i_ref, o_ref):
  o_ref[...] = jnp.take_along_axis(x_ref[...], i_ref[...], axis=1,
                                   mode="clip")


# take_along_axis: one generic over the index block writes the output
# block; its body normalizes the index (jnp's negative-index select),
# clamps it (mode="clip") and loads the operand, which is copied into a
# temporary first (the load is lazy and must not see later writes).
# CHECK-LABEL: TEST: test_take_along_axis_is_a_fused_generic
# CHECK: %[[TMP:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x128xf32, "vmem">
# CHECK: linalg.generic {{.*}} outs(%[[TMP]] : memref<8x128xf32, "vmem">)
# CHECK: linalg.generic {{.*}} ins(%{{.*}} : memref<8x128xi32, {{.*}}) outs(%{{.*}} : memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">)
# CHECK-NEXT: ^bb0(%[[IDX:.*]]: i32, %{{.*}}: f32):
# CHECK: arith.select
# CHECK: %[[ROW:.*]] = linalg.index 0 : index
# CHECK: %[[I:.*]] = arith.index_cast %{{.*}} : i32 to index
# CHECK: %[[HI:.*]] = arith.minsi %[[I]], %c127 : index
# CHECK: %[[LO:.*]] = arith.maxsi %[[HI]], %c0 : index
# CHECK: %[[V:.*]] = memref.load %[[TMP]][%[[ROW]], %[[LO]]] : memref<8x128xf32, "vmem">
# CHECK: linalg.yield %[[V]] : f32
@run_test
def test_take_along_axis_is_a_fused_generic():
  print(lower_text(blocked(gather_kernel, 2), X, I, stage="canonical"))


def masked_store_kernel(x_ref, o_ref):
  pltpu.store(o_ref, x_ref[...], mask=x_ref[...] > 0)


# A masked store is one in-place generic: select(mask, new, old).
# CHECK-LABEL: TEST: test_masked_store_selects_in_place
# CHECK: %[[X:.*]] = memref.memory_space_cast %{{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: %[[O:.*]] = memref.memory_space_cast %{{.*}} to memref<8x128xf32, strided<[128, 1], offset: ?>, "vmem">
# CHECK: linalg.generic {{.*}} ins(%[[X]], %[[O]] : {{.*}}) outs(%[[O]] :
# CHECK-NEXT: ^bb0(%[[XV:.*]]: f32, %[[OLD:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[M:.*]] = arith.cmpf ogt, %[[XV]], %{{.*}} : f32
# CHECK-NEXT: %[[R:.*]] = arith.select %[[M]], %[[XV]], %[[OLD]] : f32
# CHECK-NEXT: linalg.yield %[[R]] : f32
# CHECK-NOT: linalg.generic
# CHECK: return
@run_test
def test_masked_store_selects_in_place():
  print(lower_text(blocked(masked_store_kernel, 1), X, stage="canonical"))


def tile_kernel(x_ref, o_ref):
  o_ref[...] = jnp.tile(x_ref[:4, :64], (2, 2))


# tile: one broadcasting generic into a (2, 4, 2, 64) buffer read back as
# (8, 128).
# CHECK-LABEL: TEST: test_tile_is_a_broadcast_and_a_reshape
# CHECK: %[[B:.*]] = memref.alloc() {alignment = 64 : i64} : memref<2x4x2x64xf32, "vmem">
# CHECK: linalg.generic {{.*}} outs(%[[B]] : memref<2x4x2x64xf32, "vmem">)
# CHECK: memref.reinterpret_cast %[[B]] to offset: [0], sizes: [8, 128], strides: [128, 1]
@run_test
def test_tile_is_a_broadcast_and_a_reshape():
  print(lower_text(blocked(tile_kernel, 1), X, stage="canonical"))
