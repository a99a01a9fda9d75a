"""PRNG kernels that ship with JAX: ``philox_4x32_count`` (issue #16 item
4), the one shipped kernel that was slower compiled than interpreted."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.cases.common import library_case

PHILOX_SHAPE = (2048, 2048)
PHILOX_BLOCK = (256, 256)   # philox.BLOCK_SIZE


def _philox_key():
  return (jax.random.key_data(jax.random.key(11)),)


def _philox_reference(key):
  """The kernel's math in jnp on the same counts: element (i, j) hashes the
  count i * 2048 + j (hi words zero) with ``philox.philox_4x32``, the
  kernel's own round function, and fuses the two output words."""
  from jax.experimental.pallas.ops.tpu.random import philox
  counts = jnp.arange(PHILOX_SHAPE[0] * PHILOX_SHAPE[1],
                      dtype=jnp.uint32).reshape(PHILOX_SHAPE)
  zeros = jnp.zeros_like(counts)
  o1, o2, _, _ = philox.philox_4x32(zeros, counts, zeros, zeros,
                                    key[0], key[1])
  return o1 ^ o2


@library_case(
    name="philox_2048",
    description=(
        "jax.experimental.pallas.ops.tpu.random.philox.philox_4x32_count("
        f"key, {PHILOX_SHAPE}, fuse_output=True): 10 Philox-4x32 rounds "
        "(32-bit multiplies split in 16-bit halves, as the kernel writes "
        f"them) per element, {PHILOX_BLOCK} blocks, grid (8, 8); reference "
        "the same rounds in jnp on the same counts, bit-exact"),
    make_inputs=_philox_key, reference=_philox_reference,
    grid_steps=(PHILOX_SHAPE[0] // PHILOX_BLOCK[0])
    * (PHILOX_SHAPE[1] // PHILOX_BLOCK[1]),
    targets={"cpu/xla": ("<=", 1.5), "interpret/cpu": (">=", 1.0)},
    rtol=0, atol=0, quick=False)
def _philox_call(key):
  from jax.experimental.pallas.ops.tpu.random import philox
  return philox.philox_4x32_count(key, PHILOX_SHAPE, fuse_output=True)
