"""Tiled matmul: the standard accumulator kernel, f32 and bf16."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

from benchmarks.cases.common import tpu_params
from benchmarks.registry import Case, Probe, register


def matmul_kernel(x_ref, y_ref, o_ref, acc_ref):
  @pl.when(pl.program_id(2) == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  acc_ref[...] += jnp.dot(x_ref[...], y_ref[...],
                          preferred_element_type=jnp.float32)

  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _matmul_builder(m: int, n: int, k: int, bm: int, bn: int, bk: int):
  def build(backend):
    return pallas_cpu.pallas_call(
        matmul_kernel, out_shape=jax.ShapeDtypeStruct((m, n), jnp.float32),
        grid=(m // bm, n // bn, k // bk),
        in_specs=[pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk)),
                  pl.BlockSpec((bk, bn), lambda i, j, kk: (kk, j))],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
        scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
        compiler_params=tpu_params("parallel", "parallel", "arbitrary"),
        backend=backend)
  return build


def _matmul_inputs(m: int, n: int, k: int, dtype):
  rng = np.random.default_rng(0)
  return (rng.standard_normal((m, k), np.float32).astype(dtype),
          rng.standard_normal((k, n), np.float32).astype(dtype))


def _matmul_case(size: int, block: int, dtype=np.float32, *,
                 targets: dict, quick: bool = False) -> Case:
  dname = "bf16" if dtype == jnp.bfloat16 else "f32"
  steps = (size // block) ** 3
  # Probe: every dimension shrunk by 4 (or 2, or 1) => steps / 64 (8, 1).
  shrink = next(s for s in (4, 2, 1) if size // s >= block)
  p = size // shrink
  if dtype == np.float32:
    reference = lambda x, y: jnp.dot(x, y)
    ref_text = "jnp.dot(x, y)"
  else:
    reference = lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)
    ref_text = "jnp.dot(x, y, preferred_element_type=f32)"
  return Case(
      name=f"matmul_{dname}_{size}_b{block}",
      description=(f"tiled matmul {dname} {size}^3 -> f32, bm=bn=bk={block}, "
                   f"grid {(size // block,) * 3}, VMEM f32 accumulator "
                   f"(parallel, parallel, arbitrary); reference {ref_text}"),
      make_inputs=lambda: _matmul_inputs(size, size, size, dtype),
      build=_matmul_builder(size, size, size, block, block, block),
      reference=reference, grid_steps=steps, targets=targets,
      # f32 sums of `size` products of N(0,1) values (|o| ~ sqrt(size)) in a
      # different order than XLA's; bf16 products are exact in f32.
      rtol=1e-4, atol=2e-3,
      probe=None if shrink == 1 else Probe(
          _matmul_builder(p, p, p, block, block, block),
          lambda: _matmul_inputs(p, p, p, dtype), shrink ** 3),
      quick=quick)


MATMUL_TARGETS = {"cpu/xla": ("<=", 1.5), "tpu-interpret/cpu": (">=", 100.0)}

for _size in (1024, 2048):
  for _block in (128, 512):
    _targets = dict(MATMUL_TARGETS)
    if _block == 128:
      _targets["interpret/cpu"] = (">=", 5.0)
    register(_matmul_case(_size, _block, targets=_targets,
                          quick=(_size, _block) == (1024, 128)))
for _block in (128, 512):
  # 128: 512 products of 128^3 (per-call packing and AMX tile setup count).
  register(_matmul_case(1024, _block, jnp.bfloat16,
                        targets={"cpu/xla": ("<=", 2.0)}))
