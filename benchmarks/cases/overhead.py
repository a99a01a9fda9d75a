"""Per-grid-step overhead: 100k-step grids over one resident (8, 128) block,
with empty steps and with steps that do a little work."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

import pallas_cpu

from benchmarks.cases.common import random_inputs, tpu_params
from benchmarks.registry import Case, Probe, register

SHAPE = (8, 128)


def _resident_block_builder(kernel, steps: int, compiler_params=None):
  """build(backend) for ``kernel`` over grid (steps,), every step seeing
  the one (8, 128) block of the input and of the output."""
  def build(backend):
    spec = pl.BlockSpec(SHAPE, lambda i: (0, 0))
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(SHAPE, jnp.float32),
        grid=(steps,), in_specs=[spec], out_specs=spec,
        compiler_params=compiler_params, backend=backend)
  return build


def empty_grid_kernel(x_ref, o_ref):
  @pl.when(pl.program_id(0) == 0)
  def _():
    o_ref[...] = x_ref[...]


def _empty_grid_case(steps: int, probe_steps: int) -> Case:
  make_inputs = lambda: random_inputs(SHAPE, 1)
  return Case(
      name=f"empty_grid_{steps // 1000}k",
      description=(f"grid=({steps},), one (8,128) f32 block with index map "
                   "i -> (0,0); only step 0 copies input to output: "
                   "per-grid-step overhead"),
      make_inputs=make_inputs,
      build=_resident_block_builder(empty_grid_kernel, steps),
      reference=jnp.copy, grid_steps=steps, rtol=0, atol=0, per_step=True,
      targets={"cpu_us_per_step": ("<", 0.2)},
      probe=Probe(_resident_block_builder(empty_grid_kernel, probe_steps),
                  make_inputs, steps / probe_steps))


def tiny_step_kernel(x_ref, o_ref):
  @pl.when(pl.program_id(0) == 0)
  def _():
    o_ref[...] = jnp.zeros_like(o_ref)

  o_ref[...] += x_ref[...]


def _tiny_step_inputs():
  # Small integers: every partial sum is exact in f32, so the result must
  # equal x * steps bit for bit.
  rng = np.random.default_rng(0)
  return (rng.integers(-4, 5, SHAPE).astype(np.float32),)


def _tiny_step_case(steps: int, probe_steps: int) -> Case:
  """Like the empty grid, but every step does a little real work on the
  resident block (1024 adds), so the step loop cannot be reduced to nothing:
  time / steps bounds the per-step overhead of a step that does work."""
  params = tpu_params("arbitrary")
  return Case(
      name=f"tiny_step_grid_{steps // 1000}k",
      description=(f"grid=({steps},), one resident (8,128) f32 block, every "
                   "step o += x (1024 adds): per-step cost of a step that "
                   "does work"),
      make_inputs=_tiny_step_inputs,
      build=_resident_block_builder(tiny_step_kernel, steps, params),
      reference=lambda x: x * np.float32(steps), grid_steps=steps,
      rtol=0, atol=0, per_step=True,
      probe=Probe(_resident_block_builder(tiny_step_kernel, probe_steps,
                                          params),
                  _tiny_step_inputs, steps / probe_steps),
      quick=False)


register(_empty_grid_case(100_000, 2_000))
register(_tiny_step_case(100_000, 2_000))
