"""Race detection: what the instrumented build costs.

The issue's yardstick: a 512^3 tiled matmul (128 blocks, 64 grid steps),
where TPU interpret mode takes ~2x longer with ``detect_races=True`` than
without.  Variants of the case: the plain compiled kernel, the race-detecting
build, and TPU interpret mode with race detection; the ratios say what
detection costs over the plain build, and how much faster it is than
interpret mode's detector.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_cpu import testing

from benchmarks.cases.common import (RACE_RATIOS, RACE_TARGETS, race_variants,
                                     tpu_params)
from benchmarks.cases.matmul import matmul_kernel
from benchmarks.registry import case

SIZE, BLOCK = 512, 128


def _matmul(x, y):
  """What a kernel author writes: no interpret=, the mode comes from the
  context (pallas_cpu.force_cpu_backend or TPU interpret mode)."""
  g = SIZE // BLOCK
  return pl.pallas_call(
      matmul_kernel, out_shape=jax.ShapeDtypeStruct((SIZE, SIZE), jnp.float32),
      grid=(g, g, g),
      in_specs=[pl.BlockSpec((BLOCK, BLOCK), lambda i, j, k: (i, k)),
                pl.BlockSpec((BLOCK, BLOCK), lambda i, j, k: (k, j))],
      out_specs=pl.BlockSpec((BLOCK, BLOCK), lambda i, j, k: (i, j)),
      scratch_shapes=[pltpu.VMEM((BLOCK, BLOCK), jnp.float32)],
      compiler_params=tpu_params("parallel", "parallel", "arbitrary"))(x, y)


def _inputs():
  rng = np.random.default_rng(0)
  return (rng.standard_normal((SIZE, SIZE), np.float32),
          rng.standard_normal((SIZE, SIZE), np.float32))


@case(name="races_matmul_512",
      description=(f"tiled matmul f32 {SIZE}^3, {BLOCK} blocks, grid "
                   f"{(SIZE // BLOCK,) * 3} (the matmul case's kernel); "
                   "variants: plain = the compiled kernel, races = "
                   "CompilerParams(detect_races=True), tpu_races = TPU "
                   "interpret mode with InterpretParams(detect_races=True); "
                   "reference jnp.dot"),
      make_inputs=_inputs, reference=lambda x, y: jnp.dot(x, y),
      grid_steps=(SIZE // BLOCK) ** 3, rtol=1e-4, atol=2e-3, quick=False,
      variants=race_variants(_matmul), variant_ratios=RACE_RATIOS,
      # The budget for the instrumented build (ThreadSanitizer's
      # own is 5-15x); interpret mode's detector scans every access's
      # history in Python.
      targets=RACE_TARGETS)
def _races_matmul(backend):
  return testing.on_backend(_matmul, backend)
