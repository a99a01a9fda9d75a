"""Scaling of a parallel grid dimension over the runtime's threads.

The same kernel -- a compute-bound elementwise chain over 16 row blocks,
the grid dimension "parallel" -- with ``CompilerParams(num_threads=n)`` for
n = 1, 2, 4, 8: the case's variants, and the curve t(1) / t(n).  On a
2-CPU machine the useful range is 1-2 (near-linear expected); 4 and 8
threads time-share the two CPUs and should cost little more than 2.  (For
TensorCore meshes -- one thread per core -- see the ``cores`` family.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

from benchmarks.registry import case

ROWS, COLS, BLOCK_ROWS = 4096, 1024, 256   # 16 blocks of 256 x 1024 f32
CHAIN = 48                                # ~5 flops each per element
THREADS = (1, 2, 4, 8)


def _kernel(x_ref, o_ref):
  # ~240 flops per element and no transcendental call: compute bound, and
  # the same code on every thread count.
  v = x_ref[...]
  acc = v
  for k in range(CHAIN):
    acc = acc * (v + float(k)) * 0.5 + 1.0
    acc = jnp.minimum(jnp.maximum(acc, -4.0), 4.0)
  o_ref[...] = acc


def _reference(x):
  acc = x
  for k in range(CHAIN):
    acc = acc * (x + float(k)) * 0.5 + 1.0
    acc = jnp.minimum(jnp.maximum(acc, -4.0), 4.0)
  return acc


def _call(backend: str):
  spec = pl.BlockSpec((BLOCK_ROWS, COLS), lambda i: (i, 0))
  params = pltpu.CompilerParams(dimension_semantics=("parallel",))
  return pallas_cpu.pallas_call(
      _kernel, out_shape=jax.ShapeDtypeStruct((ROWS, COLS), jnp.float32),
      grid=(ROWS // BLOCK_ROWS,), in_specs=[spec], out_specs=spec,
      compiler_params=params, backend=backend)


def _with_threads(n: int):
  spec = pl.BlockSpec((BLOCK_ROWS, COLS), lambda i: (i, 0))
  return pallas_cpu.pallas_call(
      _kernel, out_shape=jax.ShapeDtypeStruct((ROWS, COLS), jnp.float32),
      grid=(ROWS // BLOCK_ROWS,), in_specs=[spec], out_specs=spec,
      compiler_params=pallas_cpu.CompilerParams(
          dimension_semantics=("parallel",), num_threads=n),
      backend="cpu")


def _inputs():
  rng = np.random.default_rng(0)
  return (rng.uniform(-1.0, 1.0, (ROWS, COLS)).astype(np.float32),)


@case(name="scaling_parallel_grid",
      description=(f"a parallel grid of {ROWS // BLOCK_ROWS} row blocks "
                   f"({BLOCK_ROWS}x{COLS} f32), a compute-bound elementwise "
                   "chain ({CHAIN} x mul/add/clamp); the pallas_cpu cell uses the "
                   "default thread count (the machine's cores), variants "
                   "threads{1,2,4,8} set CompilerParams(num_threads=n); "
                   "ratios t(1 thread)/t(n threads); reference: the same "
                   "chain in jnp"),
      make_inputs=_inputs, reference=_reference,
      grid_steps=ROWS // BLOCK_ROWS, rtol=1e-6, atol=1e-6, quick=False,
      variants={f"threads{n}": (lambda n=n: _with_threads(n))
                for n in THREADS},
      variant_ratios={f"threads1/threads{n}": ("threads1", f"threads{n}")
                      for n in THREADS[1:]},
      # 2 CPUs: near-linear from 1 to 2 threads; 4 and 8 threads share the
      # two CPUs and keep (almost all of) the 2-thread speed-up.
      targets={"threads1/threads2": (">=", 1.7),
               "threads1/threads4": (">=", 1.6),
               "threads1/threads8": (">=", 1.5)})
def _build(backend):
  return _call(backend)
