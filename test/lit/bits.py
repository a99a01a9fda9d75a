# RUN: %PYTHON %s | FileCheck %s
"""What the bit-level and PRNG primitives lower to (rules/bits.py,
rules/random.py): scalar arith inside the fused elementwise generic, strided
subviews for packing bitcasts, and an SMEM state buffer for the TPU PRNG."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test

SMEM = pl.BlockSpec(memory_space=pltpu.SMEM)


def lower(kernel, in_shape, in_dtype, out_shape, out_dtype, stage="canonical",
          **kwargs):
  def f(x):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype),
        backend="cpu", **kwargs)(x)
  return lower_text(f, jnp.zeros(in_shape, in_dtype), stage=stage)


def count_kernel(x_ref, o_ref):
  o_ref[...] = jax.lax.population_count(x_ref[...]) + jax.lax.clz(x_ref[...])


# population_count and clz are the LLVM intrinsics (math.ctpop / math.ctlz
# do not survive the pipeline's convert-math-to-libm), fused with the add.
# CHECK-LABEL: TEST: test_population_count_and_clz
# CHECK: linalg.generic
# CHECK-NEXT: ^bb0(%[[X:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: %[[P:.*]] = llvm.intr.ctpop(%[[X]]) : (i32) -> i32
# CHECK-NEXT: %[[C:.*]] = "llvm.intr.ctlz"(%[[X]]) <{is_zero_poison = false}> : (i32) -> i32
# CHECK-NEXT: %[[S:.*]] = arith.addi %[[P]], %[[C]] : i32
# CHECK-NEXT: linalg.yield %[[S]] : i32
# CHECK-NOT: linalg.generic
@run_test
def test_population_count_and_clz():
  print(lower(count_kernel, (8, 128), jnp.int32, (8, 128), jnp.int32))


def same_width_kernel(x_ref, o_ref):
  o_ref[...] = jax.lax.bitcast_convert_type(x_ref[...] * 2.0, jnp.int32) ^ 1


# A same-width bitcast is one arith.bitcast inside the fused expression.
# CHECK-LABEL: TEST: test_same_width_bitcast_fuses
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: i32):
# CHECK-NEXT: %[[M:.*]] = arith.mulf %[[X]], %{{.*}} : f32
# CHECK-NEXT: %[[B:.*]] = arith.bitcast %[[M]] : f32 to i32
# CHECK-NEXT: %[[R:.*]] = arith.xori %[[B]], %{{.*}} : i32
# CHECK-NEXT: linalg.yield %[[R]] : i32
@run_test
def test_same_width_bitcast_fuses():
  print(lower(same_width_kernel, (8, 128), jnp.float32, (8, 128), jnp.int32))


def pack_kernel(x_ref, o_ref):
  o_ref[...] = pltpu.bitcast(x_ref[...], jnp.int32)


# pltpu.bitcast int8[32, 128] -> int32[8, 128]: rows k::4 of the input block
# are four strided subviews of it (no copy), byte k of each output word.
# CHECK-LABEL: TEST: test_tpu_bitcast_packs_strided_rows
# CHECK: %[[IN:.*]] = memref.memory_space_cast {{.*}} to memref<32x128xi8, strided<[128, 1], offset: ?>, "vmem">
# CHECK-NOT: memref.alloc
# CHECK: %[[R0:.*]] = memref.subview %[[IN]][0, 0] [8, 128] [4, 1]
# CHECK-NEXT: %[[R1:.*]] = memref.subview %[[IN]][1, 0] [8, 128] [4, 1]
# CHECK-NEXT: %[[R2:.*]] = memref.subview %[[IN]][2, 0] [8, 128] [4, 1]
# CHECK-NEXT: %[[R3:.*]] = memref.subview %[[IN]][3, 0] [8, 128] [4, 1]
# CHECK-NEXT: linalg.generic {{.*}} ins(%[[R0]], %[[R1]], %[[R2]], %[[R3]] : {{.*}})
# CHECK-NEXT: ^bb0(%[[B0:.*]]: i8, %[[B1:.*]]: i8, %[[B2:.*]]: i8, %[[B3:.*]]: i8, %{{.*}}: i32):
# CHECK-NEXT: %[[W0:.*]] = arith.extui %[[B0]] : i8 to i32
# CHECK-NEXT: %[[W1:.*]] = arith.extui %[[B1]] : i8 to i32
# CHECK-NEXT: %[[S1:.*]] = arith.shli %[[W1]], %{{.*}} : i32
# CHECK-NEXT: %[[O1:.*]] = arith.ori %[[W0]], %[[S1]] : i32
# CHECK: arith.shli
# CHECK: arith.shli
# CHECK: %[[O3:.*]] = arith.ori
# CHECK-NEXT: linalg.yield %[[O3]] : i32
@run_test
def test_tpu_bitcast_packs_strided_rows():
  print(lower(pack_kernel, (32, 128), jnp.int8, (8, 128), jnp.int32))


def unpack_kernel(x_ref, o_ref):
  o_ref[...] = pltpu.bitcast(x_ref[...], jnp.int8)


# int32[8, 128] -> int8[32, 128]: byte k of row i goes to row 4*i + k,
# computed as [8, 4, 128] (byte index = linalg.index 1) and reinterpreted.
# CHECK-LABEL: TEST: test_tpu_bitcast_unpacks_rows
# CHECK: %[[TMP:.*]] = memref.alloc() {alignment = 64 : i64} : memref<8x4x128xi8, "vmem">
# CHECK: linalg.generic {{.*}} outs(%[[TMP]] : memref<8x4x128xi8, "vmem">)
# CHECK-NEXT: ^bb0(%[[W:.*]]: i32, %{{.*}}: i8):
# CHECK-NEXT: %[[K:.*]] = linalg.index 1 : index
# CHECK-NEXT: %[[K32:.*]] = arith.index_cast %[[K]] : index to i32
# CHECK-NEXT: %[[SH:.*]] = arith.muli %[[K32]], %{{.*}} : i32
# CHECK-NEXT: %[[V:.*]] = arith.shrui %[[W]], %[[SH]] : i32
# CHECK-NEXT: %[[B:.*]] = arith.trunci %[[V]] : i32 to i8
# CHECK-NEXT: linalg.yield %[[B]] : i8
# CHECK: memref.reinterpret_cast %[[TMP]] to offset: [0], sizes: [32, 128], strides: [128, 1]
@run_test
def test_tpu_bitcast_unpacks_rows():
  print(lower(unpack_kernel, (8, 128), jnp.int32, (32, 128), jnp.int8))


def erf_inv_kernel(x_ref, o_ref):
  o_ref[...] = jax.lax.erf_inv(x_ref[...])


# erf_inv: XLA's polynomial in w = -log1p(-x*x), two coefficient sets.
# CHECK-LABEL: TEST: test_erf_inv
# CHECK: ^bb0(%[[X:.*]]: f32, %{{.*}}: f32):
# CHECK-NEXT: %[[NX:.*]] = arith.negf %[[X]] : f32
# CHECK-NEXT: %[[XX:.*]] = arith.mulf %[[X]], %[[NX]] : f32
# CHECK-NEXT: %[[L:.*]] = math.log1p %[[XX]] : f32
# CHECK-NEXT: %[[W:.*]] = arith.negf %[[L]] : f32
# CHECK-NEXT: %[[LT5:.*]] = arith.cmpf olt, %[[W]], %{{.*}} : f32
# CHECK: math.sqrt %[[W]] : f32
# CHECK-COUNT-8: arith.addf
# CHECK: arith.cmpf oeq
# CHECK: linalg.yield
@run_test
def test_erf_inv():
  print(lower(erf_inv_kernel, (8, 128), jnp.float32, (8, 128), jnp.float32))


def random_bits_kernel(s_ref, o_ref):
  key = jax.random.key(s_ref[0])
  o_ref[...] = jax.random.bits(key, (8, 128), jnp.uint32)


# jax.random.bits of a key made in the kernel: one generic computing
# Threefry-2x32 of (0, row-major index) per element, key parts as scalars
# (k1 = 0 folds away), 20 rotations as shift pairs, 5 key injections, and
# the two output words xor'ed.
# CHECK-LABEL: TEST: test_threefry_random_bits
# CHECK: %[[SEED:.*]] = memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK: linalg.generic
# CHECK-NEXT: ^bb0(%{{.*}}: i32):
# CHECK: %[[FLAT:.*]] = arith.addi %{{.*}}, %{{.*}} : i32
# CHECK-NEXT: %[[KS2:.*]] = arith.xori %[[SEED]], %c466688986_i32 : i32
# CHECK-NEXT: %[[X1:.*]] = arith.addi %[[FLAT]], %[[SEED]] : i32
# CHECK-NEXT: arith.shli %[[X1]], %c13_i32 : i32
# CHECK-NEXT: arith.shrui %[[X1]], %c19_i32 : i32
# CHECK-COUNT-20: arith.ori
# CHECK-NOT: arith.ori
# CHECK: %[[R:.*]] = arith.xori
# CHECK-NEXT: %[[A:.*]] = arith.addi %{{.*}}, %[[KS2]] : i32
# CHECK-NEXT: %[[B:.*]] = arith.addi %[[R]], %c5_i32 : i32
# CHECK-NEXT: %[[O:.*]] = arith.xori %[[A]], %[[B]] : i32
# CHECK-NEXT: linalg.yield %[[O]] : i32
# CHECK-NOT: linalg.generic
@run_test
def test_threefry_random_bits():
  print(lower(random_bits_kernel, (1,), jnp.int32, (8, 128), jnp.uint32,
              stage="canonical", in_specs=[SMEM]))


def stateful_kernel(s_ref, o_ref):
  pltpu.prng_seed(s_ref[0])
  o_ref[...] = pltpu.prng_random_bits((8, 128))


# The TPU PRNG state (k1, k2, n) is an SMEM buffer zeroed at entry;
# prng_seed stores key(seed) = (0, seed) and n = 0; prng_random_bits reads
# it, bumps n and hashes (n, index).
# CHECK-LABEL: TEST: test_stateful_prng
# CHECK: %[[ST:.*]] = memref.alloc() {alignment = 64 : i64} : memref<3xi32, "smem">
# CHECK: scf.if
# CHECK: memref.store %[[Z:.*]], %[[ST]][%{{.*}}] : memref<3xi32, "smem">
# CHECK-NEXT: memref.store %[[Z]], %[[ST]]
# CHECK-NEXT: memref.store %[[Z]], %[[ST]]
# CHECK: %[[SEED:.*]] = memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK-NEXT: memref.store %{{.*}}, %[[ST]]
# CHECK-NEXT: memref.store %[[SEED]], %[[ST]]
# CHECK-NEXT: memref.store %{{.*}}, %[[ST]]
# CHECK-NEXT: %[[K1:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[K2:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[N:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[N1:.*]] = arith.addi %[[N]], %{{.*}} : i32
# CHECK-NEXT: memref.store %[[N1]], %[[ST]]
# CHECK: linalg.generic
# CHECK: arith.xori %[[K1]], %[[K2]] : i32
# CHECK: arith.addi %[[N]], %[[K1]] : i32
# CHECK: linalg.yield
@run_test
def test_stateful_prng():
  print(lower(stateful_kernel, (1,), jnp.int32, (8, 128), jnp.int32,
              stage="canonical", in_specs=[SMEM]))
