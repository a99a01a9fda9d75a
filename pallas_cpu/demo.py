"""The demo: a tiled Pallas TPU kernel compiled to native code, checked
against jnp, and timed next to interpret=True, TPU interpret mode and XLA."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

N, BLOCK = 2048, 256


def scaled_add(x_ref, y_ref, o_ref):
  o_ref[...] = x_ref[...] * 2.0 + y_ref[...]


def _kernel_call(backend):
  spec = pl.BlockSpec((BLOCK, BLOCK), lambda i, j: (i, j))
  # Written as for a TPU: both grid dimensions are parallel (megacore there,
  # the runtime's thread pool here).
  return jax.jit(pallas_cpu.pallas_call(
      scaled_add, out_shape=jax.ShapeDtypeStruct((N, N), jnp.float32),
      grid=(N // BLOCK, N // BLOCK), in_specs=[spec, spec], out_specs=spec,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel")),
      backend=backend))


def _best_of(fn, args, repeats):
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def main(repeats: int = 5) -> int:
  x = jax.random.normal(jax.random.key(0), (N, N), jnp.float32)
  y = jax.random.normal(jax.random.key(1), (N, N), jnp.float32)
  want = x * 2.0 + y
  fns = {
      "pallas_cpu (compiled)": _kernel_call("cpu"),
      "XLA (jnp)": jax.jit(lambda x, y: x * 2.0 + y),
      "interpret=True": _kernel_call("interpret"),
      "TPU interpret mode": _kernel_call("tpu-interpret"),
  }
  print(f"kernel: o = x * 2 + y, f32 {N}x{N}, {BLOCK}x{BLOCK} blocks, "
        f"grid {(N // BLOCK, N // BLOCK)}")
  t = time.perf_counter()
  got = jax.block_until_ready(fns["pallas_cpu (compiled)"](x, y))
  print(f"first call (trace + lower + compile + run): "
        f"{time.perf_counter() - t:.3f} s")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6,
                             atol=1e-6)
  print("result matches jnp: OK")
  # The compiled kernel and XLA first, interleaved, then the interpreters:
  # an interpreter's call leaves the next calls of any backend slower for a
  # while (caches, fresh pages), which would be measured, not the kernels.
  fast = ("pallas_cpu (compiled)", "XLA (jnp)")
  times = {name: float("inf") for name in fns}
  for name in fast:
    jax.block_until_ready(fns[name](x, y))  # warm up
  # (many rounds: a 1 ms memory-bound kernel's best of a few calls is noise)
  for _ in range(20 * repeats):
    for name in fast:
      times[name] = min(times[name], _best_of(fns[name], (x, y), 1))
  for name, fn in fns.items():
    if name not in fast:
      jax.block_until_ready(fn(x, y))  # compile / warm up
      times[name] = _best_of(fn, (x, y), repeats if "TPU" not in name else 3)
  ours = times["pallas_cpu (compiled)"]
  print(f"\n{'backend':<24}{'time (ms, best)':>16}{'vs pallas_cpu':>16}")
  for name, t in times.items():
    print(f"{name:<24}{t * 1e3:>16.3f}{t / ours:>15.1f}x")
  return 0
