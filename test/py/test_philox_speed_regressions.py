"""Values used more than once stay lazy while small (lowering/jaxpr.py,
``RECOMPUTE_LIMIT``): the shipped philox kernel, whose every round reads
values used two or three times, fuses into a few loops instead of ~150
temporaries per block (issue #16 item 4; its speed is benchmarks/cases/
random.py's ``philox_2048``).  Here: bit-exact numerics against the
kernel's own rounds in jnp and interpret mode, the temporaries it needs,
and the hazards of keeping shared values lazy (a write between definition
and use, deep chains of shared values, a value stored twice)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas.ops.tpu.random import philox

import pallas_cpu
from pallas_cpu import testing
from conftest import assert_same

KEY = jax.random.key_data(jax.random.key(11))


def _philox_reference(key, shape, fuse_output):
  """philox.philox_4x32 in jnp on the counts the kernel hashes (row-major
  element index; hi words zero)."""
  counts = jnp.arange(int(np.prod(shape)), dtype=jnp.uint32).reshape(shape)
  zeros = jnp.zeros_like(counts)
  o1, o2, _, _ = philox.philox_4x32(zeros, counts, zeros, zeros,
                                    key[0], key[1])
  return o1 ^ o2 if fuse_output else jnp.stack([o1, o2])


def _compiled(fn, *args):
  with pallas_cpu.force_cpu_backend():
    return jax.block_until_ready(jax.jit(fn)(*args))


@pytest.mark.parametrize("fuse_output", [True, False])
@pytest.mark.parametrize("shape", [(512, 768), (300, 200)])
def test_philox_count_bit_exact(shape, fuse_output):
  fn = lambda k: philox.philox_4x32_count(k, shape, fuse_output=fuse_output)
  got = _compiled(fn, KEY)
  assert_same(got, jax.jit(_philox_reference, static_argnums=(1, 2))(
      KEY, shape, fuse_output))
  with testing.interpret_mode():
    assert_same(got, jax.jit(fn)(KEY))


def test_philox_block_temporaries():
  """One 256x256 block of philox needs a temporary per round or so, not
  one per multiply half (150 before)."""
  text = pallas_cpu.lower(
      lambda k: philox.philox_4x32_count(k, (256, 256)), KEY).as_text("kernel")
  temps = len(re.findall(r"memref\.alloc\(\).*memref<256x256xi32", text))
  assert temps <= 24, temps


def _call(kernel, out_shape, *args):
  spec = pl.BlockSpec(args[0].shape, lambda: (0,) * args[0].ndim)
  outs = out_shape if isinstance(out_shape, list) else [out_shape]
  return pallas_cpu.pallas_call(
      kernel, out_shape=out_shape, in_specs=[spec] * len(args),
      out_specs=[spec] * len(outs) if isinstance(out_shape, list) else spec,
      backend="cpu")(*args)


def _interpreted(kernel, out_shape, *args):
  spec = pl.BlockSpec(args[0].shape, lambda: (0,) * args[0].ndim)
  outs = out_shape if isinstance(out_shape, list) else [out_shape]
  return pl.pallas_call(
      kernel, out_shape=out_shape, in_specs=[spec] * len(args),
      out_specs=[spec] * len(outs) if isinstance(out_shape, list) else spec,
      interpret=True)(*args)


X = np.random.default_rng(0).integers(0, 2**32, (64, 128), dtype=np.uint32)


def test_shared_value_read_before_a_write_of_its_ref():
  """``y`` reads x_ref and is used twice; x_ref is overwritten before ``y``
  is: the old contents must be used."""
  def kernel(x_ref, o_ref):
    y = x_ref[...] * jnp.uint32(3) + jnp.uint32(1)
    x_ref[...] = jnp.zeros_like(x_ref)
    o_ref[...] = (y ^ (y >> 7)) + x_ref[...]
  out = jax.ShapeDtypeStruct(X.shape, X.dtype)
  assert_same(_call(kernel, out, X), _interpreted(kernel, out, X))
  want = X * np.uint32(3) + np.uint32(1)
  assert_same(_call(kernel, out, X), want ^ (want >> 7))


def test_shared_value_stored_twice_and_reduced():
  def kernel(x_ref, o1_ref, o2_ref):
    y = (x_ref[...] >> 3) * jnp.uint32(0x9E3779B9)
    o1_ref[...] = y
    s = jnp.sum(y.astype(jnp.int32), axis=1, keepdims=True)  # Mosaic: no
    o2_ref[...] = y + s.astype(jnp.uint32)                    # uint sums
  outs = [jax.ShapeDtypeStruct(X.shape, X.dtype)] * 2
  got = _call(kernel, outs, X)
  assert_same(got, _interpreted(kernel, outs, X))


@pytest.mark.parametrize("depth", [40])
def test_deep_chain_of_shared_values(depth):
  """Each value is used twice, so the unrolled expression doubles per step
  (2**40 nodes as a tree): lowering stays fast and the result exact."""
  def kernel(x_ref, o_ref):
    v = x_ref[...]
    for i in range(depth):
      v = (v * v) ^ (v + jnp.uint32(i))
    o_ref[...] = v
  out = jax.ShapeDtypeStruct(X.shape, X.dtype)
  want = X.copy()
  with np.errstate(over="ignore"):
    for i in range(depth):
      want = (want * want) ^ (want + np.uint32(i))
  assert_same(_call(kernel, out, X), want)
