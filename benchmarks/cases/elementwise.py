"""Blocked elementwise kernels: add (the issue-2 target case), a fused
transcendental chain, and partial edge blocks."""
from __future__ import annotations

import jax.numpy as jnp

from benchmarks.cases.common import blocked_elementwise
from benchmarks.registry import register


def _add(x, y):
  return x + y


def _fused(x, y):
  return jnp.tanh(x * 2 + y) - jnp.exp(-y)


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
