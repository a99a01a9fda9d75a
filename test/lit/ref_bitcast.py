# RUN: %PYTHON %s | FileCheck %s
"""What ``ref.bitcast(dtype)`` lowers to (lowering/bit_views.py,
rules/memory.py): a widening bitcast reads its bit slots from row-strided
subviews and combines them with shifts and ors inside the fused generic; a
store into one bit slot of a narrowed ref is a masked read-modify-write; an
equal-width bitcast is a memref of the new element type."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

import pallas_cpu
from lit_helpers import lower_text, run_test


def lower(kernel, in_shape, in_dtype, out_shape, out_dtype):
  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype),
        backend="cpu")(x)
  return lower_text(f, jnp.zeros(in_shape, in_dtype), stage="canonical")


def widening_kernel(x_ref, o_ref):
  o_ref[...] = x_ref.bitcast(jnp.uint32)[1::2, :]


# bf16[16, 128] -> u32[8, 128]: rows 2q and 2q+1 are the low and high halves
# of word q; the strided index after the bitcast composes with the row
# strides (rows 2 and 3 of every 4).
# CHECK-LABEL: TEST: test_widening_load
# CHECK: %[[LO:.*]] = memref.subview %{{.*}}[0, 0] [8, 128] [2, 1]
# CHECK: %[[HI:.*]] = memref.subview %{{.*}}[1, 0] [8, 128] [2, 1]
# CHECK: %[[LO2:.*]] = memref.subview %[[LO]][1, 0] [4, 128] [2, 1]{{.*}} to memref<4x128xbf16, strided<[512, 1]
# CHECK: %[[HI2:.*]] = memref.subview %[[HI]][1, 0] [4, 128] [2, 1]{{.*}} to memref<4x128xbf16, strided<[512, 1]
# CHECK: linalg.generic {{.*}} ins(%[[LO2]], %[[HI2]] :
# CHECK-NEXT: ^bb0(%[[A:.*]]: bf16, %[[B:.*]]: bf16, %{{.*}}: i32):
# CHECK-NEXT: %[[A16:.*]] = arith.bitcast %[[A]] : bf16 to i16
# CHECK-NEXT: %[[A32:.*]] = arith.extui %[[A16]] : i16 to i32
# CHECK-NEXT: %[[B16:.*]] = arith.bitcast %[[B]] : bf16 to i16
# CHECK-NEXT: %[[B32:.*]] = arith.extui %[[B16]] : i16 to i32
# CHECK-NEXT: %[[BH:.*]] = arith.shli %[[B32]], %{{.*}} : i32
# CHECK-NEXT: %[[W:.*]] = arith.ori %[[A32]], %[[BH]] : i32
# CHECK-NEXT: linalg.yield %[[W]] : i32
# CHECK-NOT: linalg.generic
@run_test
def test_widening_load():
  print(lower(widening_kernel, (16, 128), jnp.bfloat16, (4, 128), jnp.uint32))


def slot_store_kernel(x_ref, o_ref):
  o_ref.bitcast(jnp.bfloat16)[1::2, :] = x_ref[...]


# u32[8, 128] seen as bf16[16, 128]: rows 1::2 are the high halves of the
# words, so the store keeps the low halves (and 0xFFFF) and ors the new
# high half in, in place.
# CHECK-LABEL: TEST: test_bit_slot_store
# CHECK: linalg.generic {{.*}} ins(%[[V:.*]], %[[O:.*]] : {{.*}}) outs(%[[O]] :
# CHECK-NEXT: ^bb0(%[[X:.*]]: bf16, %[[OLD:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: %[[KEEP:.*]] = arith.andi %[[OLD]], %c65535_i32 : i32
# CHECK-NEXT: %[[X16:.*]] = arith.bitcast %[[X]] : bf16 to i16
# CHECK-NEXT: %[[X32:.*]] = arith.extui %[[X16]] : i16 to i32
# CHECK-NEXT: %[[XH:.*]] = arith.shli %[[X32]], %c16_i32 : i32
# CHECK-NEXT: %[[NEW:.*]] = arith.ori %[[KEEP]], %[[XH]] : i32
# CHECK-NEXT: linalg.yield %[[NEW]] : i32
@run_test
def test_bit_slot_store():
  print(lower(slot_store_kernel, (8, 128), jnp.bfloat16, (8, 128),
              jnp.uint32))


def same_width_kernel(x_ref, o_ref):
  o_ref[...] = x_ref.bitcast(jnp.int32)[...] + 1


# CHECK-LABEL: TEST: test_same_width_is_a_memref
# CHECK: %[[I:.*]] = builtin.unrealized_conversion_cast %{{.*}} : memref<8x128xf32, {{.*}}> to memref<8x128xi32,
# CHECK: linalg.generic {{.*}} ins(%[[I]] :
# CHECK-NEXT: ^bb0(%[[X:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: arith.addi %[[X]]
@run_test
def test_same_width_is_a_memref():
  print(lower(same_width_kernel, (8, 128), jnp.float32, (8, 128), jnp.int32))
