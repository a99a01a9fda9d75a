"""What case modules share: inputs, TPU compiler params, and the builders
of the two common shapes of case (a 2-D blocked elementwise kernel, a
library kernel called under a backend's mode)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from pallas_cpu import testing

from benchmarks.registry import Case, register

# The targets for the kernels that ship with JAX: cpu/XLA <= 1.5
# against the jnp reference, never slower than interpret=True, and >= 100x
# faster than TPU interpret mode (every TPU interpret cell of these runs
# within the default budget: 0.1-2 s per call).
KERNEL_TARGETS = {"cpu/xla": ("<=", 1.5), "interpret/cpu": (">=", 1.0),
                  "tpu-interpret/cpu": (">=", 100.0)}


def random_inputs(shape, n, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(n))


def tpu_params(*semantics: str):
  """What a TPU author writes: ``pltpu.CompilerParams(dimension_semantics=…)``
  (pallas_cpu honours it; the interpreters accept it)."""
  return pltpu.CompilerParams(dimension_semantics=tuple(semantics))


def blocked_elementwise(name: str, description: str, body: Callable,
                        reference: Callable, n_inputs: int,
                        shape: tuple[int, int], block: tuple[int, int],
                        dtype=np.float32, semantics=("parallel", "parallel"),
                        **case_kwargs) -> Case:
  """A 2-D grid over ``shape`` in ``block`` tiles; every input and the
  output use the same (i, j) -> (i, j) BlockSpec.  ``body`` maps the input
  block values to the output block value.  Both grid dimensions are
  "parallel" unless ``semantics`` says otherwise (None: no compiler_params)."""
  grid = tuple(pl.cdiv(s, b) for s, b in zip(shape, block))

  def kernel(*refs):
    *in_refs, o_ref = refs
    o_ref[...] = body(*(r[...] for r in in_refs))

  kernel.__name__ = name.replace("-", "_")

  def build(backend):
    spec = pl.BlockSpec(block, lambda i, j: (i, j))
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(shape, dtype), grid=grid,
        in_specs=[spec] * n_inputs, out_specs=spec, backend=backend,
        compiler_params=None if semantics is None else tpu_params(*semantics))

  return Case(name=name, description=description,
              make_inputs=lambda: random_inputs(shape, n_inputs, dtype=dtype),
              build=build, reference=reference,
              grid_steps=math.prod(grid), **case_kwargs)


def library_builder(name: str, call: Callable):
  """build(backend) for a library kernel (one that takes no ``interpret=``):
  ``call(*inputs)`` traced under the backend's mode, entered inside the
  jitted function (``pallas_cpu.testing.on_backend``)."""
  def build(backend):
    fn = testing.on_backend(call, backend)
    fn.__name__ = f"{name}_{backend.replace('-', '_')}"
    return fn
  return build


def library_case(**fields) -> Callable[[Callable], Callable]:
  """Registers the decorated library call ``call(*inputs)`` as a case with
  ``fields`` (every field of ``Case`` but ``build``); the jitted functions
  are named after the case."""
  def decorate(call: Callable) -> Callable:
    register(Case(build=library_builder(fields["name"], call), **fields))
    return call
  return decorate


# Race detection's cost (issue #12): the same library call compiled plain
# and instrumented, and under TPU interpret mode's race detector.
RACE_RATIOS = {"races/plain": ("races", "plain"),
               "tpu_races/races": ("tpu_races", "races")}
RACE_TARGETS = {"races/plain": ("<=", 5.0), "tpu_races/races": (">=", 50.0)}


def race_variants(call: Callable) -> dict:
  """Variants of a case: ``call`` compiled (plain), compiled with
  ``CompilerParams(detect_races=True)`` (races), and in TPU interpret mode
  with ``InterpretParams(detect_races=True)`` (tpu_races)."""
  def under(mode):
    def fn(*args):
      with mode():
        return call(*args)
    return fn
  return {
      "plain": lambda: under(pallas_cpu.force_cpu_backend),
      "races": lambda: under(lambda: pallas_cpu.force_cpu_backend(
          pallas_cpu.CompilerParams(detect_races=True))),
      "tpu_races": lambda: under(lambda: pltpu.force_tpu_interpret_mode(
          pltpu.InterpretParams(detect_races=True))),
  }
