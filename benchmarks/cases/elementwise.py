"""Blocked elementwise kernels: add (the issue-2 target case), the README
demo, a fused transcendental chain, partial edge blocks, and the memory-
bandwidth cases of issue #16: one whole-array step and grids without a
parallel dimension (their blocks run in row bands on threads, grid.RowSplit),
2-D tiles against row tiles of the same size; a small kernel's tier-up from
-O0 to -O3."""
from __future__ import annotations

import jax
import jax.numpy as jnp

import pallas_cpu
from pallas_cpu import background, compiler

from benchmarks.cases.common import blocked_elementwise, random_inputs
from benchmarks.registry import XLA, Case, register


def _add(x, y):
  return x + y


def _fused(x, y):
  return jnp.tanh(x * 2 + y) - jnp.exp(-y)


def _scaled_add(x, y):
  return x * 2.0 + y


def _scale_shift(x):
  return x * 3 + 1


register(blocked_elementwise(
    "add_2048_b256",
    "o = x + y, f32 2048x2048, 256x256 blocks, grid (8,8) parallel "
    "(the issue-2 target case)",
    _add, _add, 2, (2048, 2048), (256, 256),
    targets={"cpu/xla": ("<=", 2.0), "tpu-interpret/cpu": (">=", 50.0)},
    rtol=0, atol=0))

register(blocked_elementwise(
    "add_4096_b512",
    "o = x + y, f32 4096x4096, 512x512 blocks, grid (8,8) parallel",
    _add, _add, 2, (4096, 4096), (512, 512),
    targets={"cpu/xla": ("<=", 1.3)}, rtol=0, atol=0, quick=False))

register(blocked_elementwise(
    "fused_elementwise_2048",
    "o = tanh(x*2+y) - exp(-y), f32 2048x2048, 256x256 blocks, grid (8,8) "
    "parallel",
    _fused, _fused, 2, (2048, 2048), (256, 256), rtol=2e-5, atol=2e-5,
    quick=False))

register(blocked_elementwise(
    "edge_blocks_2000x1000",
    "o = x*3+1, f32 2000x1000, 256x256 blocks, grid (8,4) parallel: partial "
    "edge blocks on both dims",
    _scale_shift, _scale_shift, 1, (2000, 1000), (256, 256),
    rtol=1e-6, atol=1e-6))

register(blocked_elementwise(
    "demo_2048_b256",
    "the README demo (pallas_cpu/demo.py): o = x*2+y, f32 2048x2048, 256x256 "
    "blocks, grid (8,8) parallel",
    _scaled_add, _scaled_add, 2, (2048, 2048), (256, 256),
    targets={"cpu/xla": ("<=", 1.0)}, rtol=1e-6, atol=1e-6))

register(blocked_elementwise(
    "scaled_add_2048_one_block",
    "o = x*2+y, f32 2048x2048 as one (2048, 2048) block, grid (1,): one "
    "large step (its rows split over the threads)",
    _scaled_add, _scaled_add, 2, (2048, 2048), (2048, 2048), semantics=None,
    targets={"cpu/xla": ("<=", 1.1)}, rtol=1e-6, atol=1e-6))

register(blocked_elementwise(
    "scaled_add_2048_b256_arbitrary",
    "o = x*2+y, f32 2048x2048, 256x256 blocks, grid (8,8) with no parallel "
    "dimension ('arbitrary', 'arbitrary')",
    _scaled_add, _scaled_add, 2, (2048, 2048), (256, 256),
    semantics=("arbitrary", "arbitrary"),
    targets={"cpu/xla": ("<=", 1.1)}, rtol=1e-6, atol=1e-6))


def _compiled(block: tuple[int, int]):
  """A variant: x*2+y over f32 2048x2048 in ``block`` tiles, parallel."""
  return lambda: blocked_elementwise(
      "_", "", _scaled_add, _scaled_add, 2, (2048, 2048), block).build("cpu")


register(blocked_elementwise(
    "tiles_vs_rows_2048",
    "o = x*2+y, f32 2048x2048, 256x256 tiles, grid (8,8) parallel; variants "
    "'tiles' (256x256) and 'rows' (32x2048): blocks of the same size, 2-D "
    "against whole rows",
    _scaled_add, _scaled_add, 2, (2048, 2048), (256, 256),
    variants={"tiles": _compiled((256, 256)), "rows": _compiled((32, 2048))},
    variant_ratios={"tiles/rows": ("tiles", "rows")},
    targets={"tiles/rows": ("<=", 1.1), "cpu/xla": ("<=", 1.1)},
    rtol=1e-6, atol=1e-6, quick=False))


def _small(name: str, **params):
  """x*2+y over one f32 (256, 256) block: 65k elements, built at -O0 by the
  cost model (lowering/cost.py) unless ``params`` choose a level."""
  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = x_ref[...] * 2.0 + y_ref[...]

  kernel.__name__ = name
  return pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((256, 256), jnp.float32),
      compiler_params=pallas_cpu.CompilerParams(**params))


def _tiered_up():
  """The same kernel, called until it tiered up (PALLAS_CPU_TIER_UP_MS of
  -O0 calls, then its -O3 build on the background thread)."""
  f = jax.jit(_small("small_block_hot"))
  args = random_inputs((256, 256), 2)
  for i in range(1000):
    jax.block_until_ready(f(*args))
    if i % 100 == 99:  # its -O3 build, if asked for, is then in place
      background.wait()
      if any(e.tiered and e.name == "small_block_hot"
             for e in compiler.cache_entries()):
        break
  return f


register(Case(
    name="small_block_tier_up_256",
    description="o = x*2+y, f32 256x256 as one block (65k elements: built "
                "at -O0 for a fast first call); the pallas_cpu cell is the "
                "default build, variants 'o0' (CompilerParams(opt_level=0): "
                "never tiers up) and 'tiered' (called until its -O3 build, "
                "made in the background, replaced it)",
    make_inputs=lambda: random_inputs((256, 256), 2),
    build=lambda backend: _small("small_block_hot")
    if backend == "cpu" else blocked_elementwise(
        "small_block_hot", "", _scaled_add, _scaled_add, 2, (256, 256),
        (256, 256), semantics=None).build(backend),
    reference=_scaled_add, grid_steps=1,
    variants={"o0": lambda: _small("small_block_o0", opt_level=0),
              "tiered": _tiered_up},
    variant_ratios={"tiered/xla": ("tiered", XLA), "o0/tiered": ("o0",
                                                                 "tiered")},
    targets={"tiered/xla": ("<=", 1.1)}, rtol=1e-6, atol=1e-6))
