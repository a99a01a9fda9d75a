"""PRNG primitives (rules/random.py).

Threefry keys inside kernels (``jax.random.key`` / ``wrap_key_data``,
fold_in, split, bits, and the samplers built on them) must agree with
interpret=True bit for bit (``normal`` goes through erf_inv: a few ulps).
The TPU stateful PRNG has no interpret-mode semantics (interpret=True cannot
lower prng_seed; TPU interpret mode returns zeros): it is checked against
the threefry definition documented in rules/random.py, computed with jax.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.random import threefry2x32 as threefry_mod
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, call, check_against_interpret

SMEM = pl.BlockSpec(memory_space=pltpu.SMEM)
SHAPE = (8, 128)
OUT = jax.ShapeDtypeStruct(SHAPE, jnp.uint32)
KEY_DATA = jax.random.key_data(jax.random.key(1234))


def _seeds(*s):
  return jnp.asarray(s, jnp.int32)


# -- keys and bits ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.uint16, jnp.uint32])
def test_seed_fold_in_bits(dtype):
  def kernel(s_ref, o_ref):
    key = jax.random.key(s_ref[0])
    o_ref[...] = jax.random.bits(jax.random.fold_in(key, s_ref[1]), SHAPE,
                                 dtype)
  check_against_interpret(kernel, jax.ShapeDtypeStruct(SHAPE, dtype),
                          _seeds(42, -7), in_specs=[SMEM])


def test_fold_in_program_id_per_block():
  """The common pattern: one key, folded with the grid position."""
  def kernel(k_ref, o_ref):
    key = jax.random.wrap_key_data(k_ref[...])
    key = jax.random.fold_in(jax.random.fold_in(key, pl.program_id(0)),
                             pl.program_id(1))
    o_ref[...] = jax.random.bits(key, (8, 128), jnp.uint32)
  check_against_interpret(
      kernel, jax.ShapeDtypeStruct((16, 256), jnp.uint32), KEY_DATA,
      grid=(2, 2), in_specs=[pl.BlockSpec((2,), lambda i, j: (0,))],
      out_specs=pl.BlockSpec((8, 128), lambda i, j: (i, j)))


def test_legacy_prng_key_and_scalar_bits():
  def kernel(s_ref, o_ref, d_ref):
    key = jax.random.PRNGKey(s_ref[0])          # raw uint32[2] key data
    o_ref[0] = jax.random.bits(jax.random.key(s_ref[1]), (), jnp.uint32)
    d_ref[...] = key
  check_against_interpret(
      kernel, (jax.ShapeDtypeStruct((1,), jnp.uint32),
               jax.ShapeDtypeStruct((2,), jnp.uint32)),
      _seeds(3, 99), in_specs=[SMEM], out_specs=(SMEM, SMEM))


def test_split_and_key_arrays():
  def kernel(k_ref, o_ref, d_ref):
    key = jax.random.wrap_key_data(k_ref[...])
    k1, k2 = jax.random.split(key)
    ks = jax.random.split(k1, (2, 3))
    o_ref[...] = (jax.random.bits(k2, SHAPE, jnp.uint32)
                  ^ jax.random.bits(ks[1, 2], SHAPE, jnp.uint32))
    d_ref[...] = jax.random.key_data(ks.reshape(6)[::-1])
  check_against_interpret(
      kernel, (OUT, jax.ShapeDtypeStruct((6, 2), jnp.uint32)), KEY_DATA)


def test_key_select_and_broadcast():
  def kernel(k_ref, o_ref):
    key = jax.random.wrap_key_data(k_ref[...])
    ks = jax.random.split(key, 4)
    pick = jnp.where(jnp.arange(4) % 2 == 0, ks, ks[::-1])
    both = jnp.broadcast_to(ks[0], (2,))
    o_ref[0:4, :] = jax.random.key_data(pick)
    o_ref[4:6, :] = jax.random.key_data(both)
  check_against_interpret(kernel, jax.ShapeDtypeStruct((6, 2), jnp.uint32),
                          KEY_DATA)


def test_samplers():
  """uniform / bernoulli / randint bit for bit; normal (erf_inv) and a
  scaled uniform (XLA contracts its u * (hi - lo) + lo into an FMA) within
  ulps."""
  def kernel(k_ref, u_ref, b_ref, r_ref):
    key = jax.random.wrap_key_data(k_ref[...])
    u_ref[...] = jax.random.uniform(key, SHAPE)
    b_ref[...] = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3,
                                      SHAPE).astype(jnp.int32)
    r_ref[...] = jax.random.randint(jax.random.fold_in(key, 2), SHAPE,
                                    -5, 1000)
  check_against_interpret(
      kernel, (jax.ShapeDtypeStruct(SHAPE, jnp.float32),
               jax.ShapeDtypeStruct(SHAPE, jnp.int32),
               jax.ShapeDtypeStruct(SHAPE, jnp.int32)), KEY_DATA)

  def inexact_kernel(k_ref, n_ref, u_ref):
    key = jax.random.wrap_key_data(k_ref[...])
    n_ref[...] = jax.random.normal(key, SHAPE)
    u_ref[...] = jax.random.uniform(key, SHAPE, minval=-2.0, maxval=3.0)
  out = (jax.ShapeDtypeStruct(SHAPE, jnp.float32),) * 2
  got = call(inexact_kernel, out, KEY_DATA)
  want = call(inexact_kernel, out, KEY_DATA, backend="interpret")
  np.testing.assert_array_max_ulp(np.asarray(got[0]), np.asarray(want[0]),
                                  maxulp=8)
  np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6)


def test_threefry_not_partitionable():
  """The original (pre-0.5) schemes of random_bits and split."""
  def kernel(k_ref, o_ref, d_ref):
    key = jax.random.wrap_key_data(k_ref[...])
    o_ref[...] = jax.random.bits(key, (7, 129), jnp.uint32)  # odd size
    d_ref[...] = jax.random.key_data(jax.random.split(key, 3))
  with jax.threefry_partitionable(False):
    check_against_interpret(
        kernel, (jax.ShapeDtypeStruct((7, 129), jnp.uint32),
                 jax.ShapeDtypeStruct((3, 2), jnp.uint32)), KEY_DATA)


# -- the primitives JAX's own Pallas PRNG kernels use ----------------------------------
def test_threefry2x32_and_iota_2x32():
  def kernel(k_ref, o1_ref, o2_ref):
    hi, lo = jax._src.random.prng.iota_2x32_shape(SHAPE)
    k1 = jnp.reshape(k_ref[0], (1, 1))
    o1, o2 = threefry_mod.threefry2x32_p.bind(k1, jnp.reshape(k_ref[1], (1, 1)),
                                              hi, lo + 5)
    o1_ref[...] = o1
    o2_ref[...] = o2
  check_against_interpret(kernel, (OUT, OUT), KEY_DATA, in_specs=[SMEM])


def test_pallas_ops_tpu_threefry_kernel():
  from jax.experimental.pallas.ops.tpu.random import threefry
  key = KEY_DATA
  with pallas_cpu.force_cpu_backend():
    got = jax.jit(lambda k: threefry.plthreefry_random_bits(
        k, 32, (512, 256)))(key)
    small = threefry.plthreefry_random_bits(key, 32, (8, 100))
  want = jax.random.bits(jax.random.wrap_key_data(key), (512, 256),
                         jnp.uint32)
  assert_same(got, want)
  assert_same(small, jax.random.bits(jax.random.wrap_key_data(key),
                                     (8, 100), jnp.uint32))


def test_pallas_ops_tpu_philox_kernel():
  from jax.experimental.pallas.ops.tpu.random import philox
  shape = (256, 256)
  with pallas_cpu.force_cpu_backend():
    got = jax.jit(lambda k: philox.philox_4x32_count(k, shape, offset=3))(
        KEY_DATA)
  # the kernel's own hash (pure jnp), applied outside any kernel
  counts = jnp.arange(np.prod(shape), dtype=jnp.uint32).reshape(shape) + 3
  zeros = jnp.zeros_like(counts)
  o1, o2, _, _ = philox.philox_4x32(zeros, counts, zeros, zeros,
                                    KEY_DATA[0], KEY_DATA[1])
  assert_same(got, o1 ^ o2)


# -- the TPU stateful PRNG ------------------------------------------------------------------
def _ref_stateful(seeds, shape, call_index):
  """rules/random.py's definition, with jax: key(s0) folded with s1...;
  call n hashes (n, flat index)."""
  u32 = lambda s: np.uint32(int(s) & 0xFFFFFFFF)
  key = jax.random.key(u32(seeds[0]))
  for s in seeds[1:]:
    key = jax.random.fold_in(key, u32(s))
  k1, k2 = jax.random.key_data(key)
  lo = jnp.arange(np.prod(shape), dtype=jnp.uint32).reshape(shape)
  hi = jnp.full(shape, call_index, jnp.uint32)
  o1, o2 = threefry_mod.threefry2x32_p.bind(k1, k2, hi, lo)
  return jax.lax.bitcast_convert_type(o1 ^ o2, jnp.int32)


def test_prng_seed_and_random_bits():
  def kernel(s_ref, a_ref, b_ref, c_ref):
    pltpu.prng_seed(s_ref[0])
    a_ref[...] = pltpu.prng_random_bits(SHAPE)
    b_ref[...] = pltpu.prng_random_bits(SHAPE)
    pltpu.prng_seed(s_ref[0], s_ref[1], 17)
    c_ref[...] = pltpu.prng_random_bits(SHAPE)
  out = jax.ShapeDtypeStruct(SHAPE, jnp.int32)
  a, b, c = call(kernel, (out, out, out), _seeds(42, -3), in_specs=[SMEM])
  assert_same(a, _ref_stateful([42], SHAPE, 0))
  assert_same(b, _ref_stateful([42], SHAPE, 1))
  assert_same(c, _ref_stateful([42, -3, 17], SHAPE, 0))
  # the first draw after seeding is jax.random.bits of the seed's key
  assert_same(a.view(jnp.uint32), jax.random.bits(jax.random.key(42), SHAPE,
                                                  jnp.uint32))


def test_prng_state_persists_across_grid_steps():
  """Seeded once at the first step, each step draws the next batches; and
  seeding every step with the program id is reproducible."""
  def persist(s_ref, a_ref, b_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      pltpu.prng_seed(s_ref[0])
    a_ref[...] = pltpu.prng_random_bits(SHAPE)
    b_ref[...] = pltpu.prng_random_bits(SHAPE)

  def per_step(s_ref, a_ref):
    pltpu.prng_seed(s_ref[0], pl.program_id(0))
    a_ref[...] = pltpu.prng_random_bits(SHAPE)

  spec = pl.BlockSpec((None, *SHAPE), lambda i: (i, 0, 0))
  out = jax.ShapeDtypeStruct((3, *SHAPE), jnp.int32)
  kw = dict(grid=(3,), in_specs=[SMEM],
            compiler_params=pltpu.CompilerParams(
                dimension_semantics=("arbitrary",)))
  a, b = call(persist, (out, out), _seeds(7), out_specs=(spec, spec), **kw)
  c = call(per_step, out, _seeds(7), out_specs=spec, **kw)
  for i in range(3):
    assert_same(a[i], _ref_stateful([7], SHAPE, 2 * i))
    assert_same(b[i], _ref_stateful([7], SHAPE, 2 * i + 1))
    assert_same(c[i], _ref_stateful([7, i], SHAPE, 0))


def test_stateful_samplers_and_pallas_keys():
  """pltpu.stateful_uniform and keys of the "pallas_tpu" impl lower through
  their impl functions onto prng_seed / prng_random_bits."""
  def kernel(s_ref, u_ref, k_ref):
    pltpu.prng_seed(s_ref[0])
    u_ref[...] = pltpu.stateful_uniform(SHAPE, minval=0.0, maxval=1.0)
    key = jax.random.key(s_ref[0], impl="pallas_tpu")
    k_ref[...] = jax.random.bits(jax.random.fold_in(key, 5), SHAPE,
                                 jnp.uint32)
  u, k = call(kernel, (jax.ShapeDtypeStruct(SHAPE, jnp.float32), OUT),
              _seeds(11), in_specs=[SMEM])
  bits = _ref_stateful([11], SHAPE, 0).view(jnp.uint32)
  want_u = jax.lax.bitcast_convert_type((bits >> 9) | 0x3F800000,
                                        jnp.float32) - 1.0
  assert_same(u, jnp.maximum(0.0, want_u))
  # pallas_tpu keys: seed s -> key data (s, s); fold_in mixes one round
  k0, k1 = np.uint32(11), np.uint32(11) + np.uint32(5)
  k0, k1 = threefry_mod.apply_round([jnp.uint32(k0), jnp.uint32(k1)], 13)
  assert_same(k, _ref_stateful([int(k0), int(k1)], SHAPE, 0).view(jnp.uint32))
