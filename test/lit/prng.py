# RUN: %PYTHON %s | FileCheck %s
"""What the PRNG rules (rules/random.py) lower to.

Threefry-2x32 is scalar arith: 20 rounds of add / rotate (a shli, shrui,
ori triple) / xor with the rotation amounts 13, 15, 26, 6 and 17, 29, 16,
24, and a key injection (plus the round-group number) after every four.
Keys are their two uint32 words, never a memory object of their own:
wrap_key_data reads the words, fold_in of scalars is scalar code ahead of
the block's generic, random_bits hashes (0, row-major index) inside the
fused generic, key_data writes the words.  The TPU stateful PRNG keeps
(k1, k2, n) in an SMEM buffer.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from lit_helpers import lower_text, run_test

U32 = jnp.uint32
SMEM = pl.BlockSpec(memory_space=pltpu.SMEM)


def threefry_kernel(k1_ref, k2_ref, x1_ref, x2_ref, o_ref):
  o1, o2 = jex_random.threefry2x32_p.bind(k1_ref[...], k2_ref[...],
                                          x1_ref[...], x2_ref[...])
  o_ref[...] = o1 ^ o2


# The threefry2x32 primitive, elementwise: the key schedule
# ks = (k1, k2, k1 ^ k2 ^ 0x1BD11BDA), x = (x1 + k1, x2 + k2), then the
# rounds.  Both outputs come from one hash, packed in an i64 and split
# again.
# CHECK-LABEL: TEST: test_threefry2x32
# CHECK: ^bb0(%[[K1:.*]]: i32, %[[K2:.*]]: i32, %[[X1:.*]]: i32, %[[X2:.*]]: i32, %{{.*}}: i32):
# CHECK-NEXT: %[[K12:.*]] = arith.xori %[[K1]], %[[K2]] : i32
# CHECK-NEXT: %[[PARITY:.*]] = arith.constant 466688986 : i32
# CHECK-NEXT: %[[KS2:.*]] = arith.xori %[[K12]], %[[PARITY]] : i32
# CHECK-NEXT: %[[A0:.*]] = arith.addi %[[X1]], %[[K1]] : i32
# CHECK-NEXT: %[[B0:.*]] = arith.addi %[[X2]], %[[K2]] : i32
#
# Round 1 in full: a += b; b = rotl(b, 13) ^ a.
# CHECK-NEXT: %[[A1:.*]] = arith.addi %[[A0]], %[[B0]] : i32
# CHECK-NEXT: %[[C13:.*]] = arith.constant 13 : i32
# CHECK-NEXT: %[[HI:.*]] = arith.shli %[[B0]], %[[C13]] : i32
# CHECK-NEXT: %[[C19:.*]] = arith.constant 19 : i32
# CHECK-NEXT: %[[LO:.*]] = arith.shrui %[[B0]], %[[C19]] : i32
# CHECK-NEXT: %[[ROT:.*]] = arith.ori %[[HI]], %[[LO]] : i32
# CHECK-NEXT: %[[B1:.*]] = arith.xori %[[A1]], %[[ROT]] : i32
#
# Rounds 2-4, each a rotation by r as shli r / shrui 32 - r.
# CHECK-NEXT: arith.addi %[[A1]], %[[B1]] : i32
# CHECK-NEXT: arith.constant 15 : i32
# CHECK-NEXT: arith.shli %[[B1]]
# CHECK-NEXT: arith.constant 17 : i32
# CHECK-NEXT: arith.shrui %[[B1]]
# CHECK: arith.constant 26 : i32
# CHECK-NEXT: arith.shli
# CHECK-NEXT: arith.constant 6 : i32
# CHECK-NEXT: arith.shrui
# CHECK: arith.constant 6 : i32
# CHECK-NEXT: arith.shli
# CHECK-NEXT: arith.constant 26 : i32
# CHECK-NEXT: arith.shrui
# CHECK-NEXT: arith.ori
# CHECK-NEXT: %[[B4:.*]] = arith.xori %[[A4:.*]], %{{.*}} : i32
#
# Key injection 1: a += ks[1]; b += ks[2] + 1.
# CHECK-NEXT: %[[A5:.*]] = arith.addi %[[A4]], %[[K2]] : i32
# CHECK-NEXT: %[[B5:.*]] = arith.addi %[[B4]], %[[KS2]] : i32
# CHECK-NEXT: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-NEXT: arith.addi %[[B5]], %[[ONE]] : i32
#
# Rounds 5-8 rotate by 17, 29, 16, 24; injection 2 adds ks[2], ks[0] + 2.
# CHECK: arith.constant 17 : i32
# CHECK-NEXT: arith.shli
# CHECK-NEXT: arith.constant 15 : i32
# CHECK: arith.constant 29 : i32
# CHECK-NEXT: arith.shli
# CHECK-NEXT: arith.constant 3 : i32
# CHECK: arith.constant 16 : i32
# CHECK-NEXT: arith.shli
# CHECK-NEXT: arith.constant 16 : i32
# CHECK: arith.constant 24 : i32
# CHECK-NEXT: arith.shli
# CHECK-NEXT: arith.constant 8 : i32
# CHECK: arith.addi %{{.*}}, %[[KS2]] : i32
# CHECK-NEXT: arith.addi %{{.*}}, %[[K1]] : i32
# CHECK-NEXT: arith.constant 2 : i32
#
# Groups 3, 4 and 5 alternate the two rotation sets again; injections add
# (ks[0], ks[1] + 3), (ks[1], ks[2] + 4), (ks[2], ks[0] + 5).
# CHECK: arith.constant 13 : i32
# CHECK: arith.constant 15 : i32
# CHECK: arith.constant 26 : i32
# CHECK: arith.constant 6 : i32
# CHECK: arith.addi %{{.*}}, %[[K1]] : i32
# CHECK-NEXT: arith.addi %{{.*}}, %[[K2]] : i32
# CHECK-NEXT: arith.constant 3 : i32
# CHECK: arith.constant 17 : i32
# CHECK: arith.constant 29 : i32
# CHECK: arith.constant 16 : i32
# CHECK: arith.constant 24 : i32
# CHECK: arith.addi %{{.*}}, %[[K2]] : i32
# CHECK-NEXT: arith.addi %{{.*}}, %[[KS2]] : i32
# CHECK-NEXT: arith.constant 4 : i32
# CHECK: arith.constant 13 : i32
# CHECK: arith.constant 15 : i32
# CHECK: arith.constant 26 : i32
# CHECK: arith.constant 6 : i32
# CHECK: %[[O1:.*]] = arith.addi %{{.*}}, %[[KS2]] : i32
# CHECK-NEXT: %[[B20:.*]] = arith.addi %{{.*}}, %[[K1]] : i32
# CHECK-NEXT: %[[FIVE:.*]] = arith.constant 5 : i32
# CHECK-NEXT: %[[O2:.*]] = arith.addi %[[B20]], %[[FIVE]] : i32
#
# (o1, o2) packed as (o1 << 32) | o2, split, and xor'ed by the kernel.
# CHECK-NEXT: %[[W1:.*]] = arith.extui %[[O1]] : i32 to i64
# CHECK-NEXT: %[[C32:.*]] = arith.constant 32 : i64
# CHECK-NEXT: %[[S1:.*]] = arith.shli %[[W1]], %[[C32]] : i64
# CHECK-NEXT: %[[W2:.*]] = arith.extui %[[O2]] : i32 to i64
# CHECK-NEXT: %[[PAIR:.*]] = arith.ori %[[S1]], %[[W2]] : i64
# CHECK-NEXT: %[[C32B:.*]] = arith.constant 32 : i64
# CHECK-NEXT: %[[H:.*]] = arith.shrui %[[PAIR]], %[[C32B]] : i64
# CHECK-NEXT: %[[GOT1:.*]] = arith.trunci %[[H]] : i64 to i32
# CHECK-NEXT: %[[GOT2:.*]] = arith.trunci %[[PAIR]] : i64 to i32
# CHECK-NEXT: %[[R:.*]] = arith.xori %[[GOT1]], %[[GOT2]] : i32
# CHECK-NEXT: linalg.yield %[[R]] : i32
@run_test
def test_threefry2x32():
  def f(*args):
    return pallas_cpu.pallas_call(
        threefry_kernel, out_shape=jax.ShapeDtypeStruct((8, 128), U32),
        backend="cpu")(*args)
  print(lower_text(f, *[jnp.zeros((8, 128), U32)] * 4, stage="kernel"))


def fold_in_bits_kernel(k_ref, o_ref):
  key = jax.random.wrap_key_data(k_ref[...])
  key = jax.random.fold_in(key, pl.program_id(0))
  o_ref[...] = jax.random.bits(key, (8, 128), U32)


# A key per grid step: random_wrap reads the two words of the key data,
# fold_in(key, i) is threefry(key, (0, i)) on scalars in the grid loop (the
# 0 + k1 folds away), and random_bits hashes (0, row * 128 + col) under the
# new key inside the block's generic, returning o1 ^ o2.
# CHECK-LABEL: TEST: test_fold_in_program_id_then_bits
# CHECK-DAG: %[[PARITY:.*]] = arith.constant 466688986 : i32
# CHECK-DAG: %[[C128:.*]] = arith.constant 128 : i32
# CHECK-DAG: %[[C5:.*]] = arith.constant 5 : i32
# CHECK: scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %{{.*}} {
# CHECK: %[[PID:.*]] = arith.index_cast %[[I]] : index to i32
# CHECK-NEXT: memref.subview %[[KD:.*]][0] [1] [1]
# CHECK-NEXT: %[[K1:.*]] = memref.load
# CHECK-NEXT: memref.subview %[[KD]][1] [1] [1]
# CHECK-NEXT: %[[K2:.*]] = memref.load
# CHECK-NEXT: %[[K12:.*]] = arith.xori %[[K1]], %[[K2]] : i32
# CHECK-NEXT: %[[KS2:.*]] = arith.xori %[[K12]], %[[PARITY]] : i32
# CHECK-NEXT: %[[B0:.*]] = arith.addi %[[PID]], %[[K2]] : i32
# CHECK-NEXT: arith.addi %[[K1]], %[[B0]] : i32
# CHECK-NOT: linalg.generic
# CHECK: %[[PAIR:.*]] = arith.ori %{{.*}}, %{{.*}} : i64
# CHECK-NEXT: %[[HI:.*]] = arith.shrui %[[PAIR]], %{{.*}} : i64
# CHECK-NEXT: %[[NK1:.*]] = arith.trunci %[[HI]] : i64 to i32
# CHECK-NEXT: %[[NK2:.*]] = arith.trunci %[[PAIR]] : i64 to i32
# CHECK-NEXT: linalg.generic {{.*}} outs(%{{.*}} : memref<8x128xi32, {{.*}}>) {
# CHECK-NEXT: ^bb0(%{{.*}}: i32):
# CHECK-NEXT: %[[ROW:.*]] = linalg.index 0 : index
# CHECK-NEXT: %[[ROW32:.*]] = arith.index_cast %[[ROW]] : index to i32
# CHECK-NEXT: %[[COL:.*]] = linalg.index 1 : index
# CHECK-NEXT: %[[COL32:.*]] = arith.index_cast %[[COL]] : index to i32
# CHECK-NEXT: %[[ROWS:.*]] = arith.muli %[[ROW32]], %[[C128]] : i32
# CHECK-NEXT: %[[FLAT:.*]] = arith.addi %[[ROWS]], %[[COL32]] : i32
# CHECK-NEXT: %[[NK12:.*]] = arith.xori %[[NK1]], %[[NK2]] : i32
# CHECK-NEXT: %[[NKS2:.*]] = arith.xori %[[NK12]], %[[PARITY]] : i32
# CHECK-NEXT: %[[Y:.*]] = arith.addi %[[FLAT]], %[[NK2]] : i32
# CHECK-NEXT: arith.addi %[[NK1]], %[[Y]] : i32
# CHECK-COUNT-20: arith.ori
# CHECK-NEXT: %[[LAST:.*]] = arith.xori
# CHECK-NEXT: %[[O1:.*]] = arith.addi %{{.*}}, %[[NKS2]] : i32
# CHECK-NEXT: %[[T:.*]] = arith.addi %[[LAST]], %[[NK1]] : i32
# CHECK-NEXT: %[[O2:.*]] = arith.addi %[[T]], %[[C5]] : i32
# CHECK-NEXT: %[[BITS:.*]] = arith.xori %[[O1]], %[[O2]] : i32
# CHECK-NEXT: linalg.yield %[[BITS]] : i32
# CHECK-NEXT: }
# CHECK-NOT: linalg.generic
# CHECK: return
@run_test
def test_fold_in_program_id_then_bits():
  def f(k):
    return pallas_cpu.pallas_call(
        fold_in_bits_kernel, out_shape=jax.ShapeDtypeStruct((16, 128), U32),
        grid=(2,), in_specs=[pl.BlockSpec((2,), lambda i: (0,))],
        out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
        backend="cpu")(k)
  print(lower_text(f, jnp.zeros((2,), U32), stage="canonical"))


def key_data_kernel(k_ref, s_ref, d_ref):
  key = jax.random.fold_in(jax.random.wrap_key_data(k_ref[...]), s_ref[0])
  d_ref[...] = jax.random.key_data(key)


# random_unwrap: key_data of a key built here is written by a generic that
# puts k1 at index 0 and k2 at index 1; the int32 message of fold_in is
# hashed as its uint32 bits (no conversion op).
# CHECK-LABEL: TEST: test_key_data_of_folded_key
# CHECK-DAG: %[[ZERO:.*]] = arith.constant 0 : i32
# CHECK: %[[MSG:.*]] = memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK: %[[K1:.*]] = memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "vmem">
# CHECK: %[[K2:.*]] = memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "vmem">
# CHECK: arith.addi %[[MSG]], %[[K2]] : i32
# CHECK: %[[NK1:.*]] = arith.trunci %{{.*}} : i64 to i32
# CHECK-NEXT: %[[NK2:.*]] = arith.trunci %{{.*}} : i64 to i32
# CHECK-NEXT: linalg.generic {{.*}} outs(%{{.*}} : memref<2xi32, {{.*}}>) {
# CHECK-NEXT: ^bb0(%{{.*}}: i32):
# CHECK-NEXT: %[[J:.*]] = linalg.index 0 : index
# CHECK-NEXT: %[[J32:.*]] = arith.index_cast %[[J]] : index to i32
# CHECK-NEXT: %[[FIRST:.*]] = arith.cmpi eq, %[[J32]], %[[ZERO]] : i32
# CHECK-NEXT: %[[W:.*]] = arith.select %[[FIRST]], %[[NK1]], %[[NK2]] : i32
# CHECK-NEXT: linalg.yield %[[W]] : i32
@run_test
def test_key_data_of_folded_key():
  def f(k, s):
    return pallas_cpu.pallas_call(
        key_data_kernel, out_shape=jax.ShapeDtypeStruct((2,), U32),
        in_specs=[pl.BlockSpec(), SMEM], backend="cpu")(k, s)
  print(lower_text(f, jnp.zeros((2,), U32), jnp.zeros((1,), jnp.int32),
                   stage="canonical"))


def stateful_kernel(s_ref, o_ref):
  pltpu.prng_seed(s_ref[0], s_ref[1])
  o_ref[...] = (pltpu.prng_random_bits((8, 128))
                + pltpu.prng_random_bits((8, 128)))


# pltpu.prng_seed(s0, s1): key (0, s0) folded with s1 by a scalar threefry
# (k1 = 0 folds away: ks[2] = s0 ^ parity, the last injection adds only 5
# to the second word), stored with n = 0 in the SMEM state.
# Each prng_random_bits loads (k1, k2, n), stores n + 1 and hashes
# (n, row-major index); both draws fuse into one generic.
# CHECK-LABEL: TEST: test_stateful_prng_seed_and_two_draws
# CHECK-DAG: %[[PARITY:.*]] = arith.constant 466688986 : i32
# CHECK-DAG: %[[ZERO:.*]] = arith.constant 0 : i32
# CHECK-DAG: %[[ONE:.*]] = arith.constant 1 : i32
# CHECK-DAG: %[[C5:.*]] = arith.constant 5 : i32
# CHECK: %[[ST:.*]] = memref.alloc() {alignment = 64 : i64} : memref<3xi32, "smem">
# CHECK-COUNT-3: memref.store %[[ZERO]], %[[ST]][%{{.*}}] : memref<3xi32, "smem">
# CHECK: %[[S0:.*]] = memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK: %[[S1:.*]] = memref.load %{{.*}}[] : memref<i32, strided<[], offset: ?>, "smem">
# CHECK-NEXT: %[[KS2:.*]] = arith.xori %[[S0]], %[[PARITY]] : i32
# CHECK-NEXT: %[[X:.*]] = arith.addi %[[S1]], %[[S0]] : i32
# CHECK-NEXT: arith.shli %[[X]], %{{.*}} : i32
# CHECK-NOT: linalg.generic
# CHECK: %[[K2:.*]] = arith.addi %{{.*}}, %[[C5]] : i32
# CHECK-NEXT: memref.store %{{.*}}, %[[ST]][%{{.*}}] : memref<3xi32, "smem">
# CHECK-NEXT: memref.store %[[K2]], %[[ST]][%{{.*}}] : memref<3xi32, "smem">
# CHECK-NEXT: memref.store %[[ZERO]], %[[ST]][%{{.*}}] : memref<3xi32, "smem">
# CHECK-NEXT: %[[A1:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[A2:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[AN:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[AN1:.*]] = arith.addi %[[AN]], %[[ONE]] : i32
# CHECK-NEXT: memref.store %[[AN1]], %[[ST]]
# CHECK-NEXT: %[[B1:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[B2:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[BN:.*]] = memref.load %[[ST]]
# CHECK-NEXT: %[[BN1:.*]] = arith.addi %[[BN]], %[[ONE]] : i32
# CHECK-NEXT: memref.store %[[BN1]], %[[ST]]
# CHECK-NEXT: linalg.generic
# CHECK: %[[FLAT:.*]] = arith.addi %{{.*}}, %{{.*}} : i32
# CHECK-NEXT: arith.xori %[[A1]], %[[A2]] : i32
# CHECK-NEXT: arith.xori
# CHECK-NEXT: %[[AX:.*]] = arith.addi %[[AN]], %[[A1]] : i32
# CHECK-NEXT: %[[AY:.*]] = arith.addi %[[FLAT]], %[[A2]] : i32
# CHECK: %[[AO2:.*]] = arith.addi %{{.*}}, %[[C5]] : i32
# CHECK-NEXT: %[[DRAW1:.*]] = arith.xori %{{.*}}, %[[AO2]] : i32
# CHECK-NEXT: arith.xori %[[B1]], %[[B2]] : i32
# CHECK-NEXT: arith.xori
# CHECK-NEXT: %[[BX:.*]] = arith.addi %[[BN]], %[[B1]] : i32
# CHECK-NEXT: %[[BY:.*]] = arith.addi %[[FLAT]], %[[B2]] : i32
# CHECK: %[[BO2:.*]] = arith.addi %{{.*}}, %[[C5]] : i32
# CHECK-NEXT: %[[DRAW2:.*]] = arith.xori %{{.*}}, %[[BO2]] : i32
# CHECK-NEXT: %[[SUM:.*]] = arith.addi %[[DRAW1]], %[[DRAW2]] : i32
# CHECK-NEXT: linalg.yield %[[SUM]] : i32
@run_test
def test_stateful_prng_seed_and_two_draws():
  def f(s):
    return pallas_cpu.pallas_call(
        stateful_kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.int32),
        in_specs=[SMEM], backend="cpu")(s)
  print(lower_text(f, jnp.zeros((2,), jnp.int32), stage="canonical"))
