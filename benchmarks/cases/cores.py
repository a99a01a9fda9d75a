"""TensorCore meshes: multi-core scaling of a ``pl.kernel`` over
``pltpu.create_tensorcore_mesh`` (one runtime thread per core).

The same total work -- a compute-bound matmul whose rows are divided among
the cores -- on a 1-, 2- and 4-core mesh: the case's variants of the
compiled backend, and their ratios t(1 core) / t(2 cores) (the speed-up)
and t(4 cores) / t(2 cores) (oversubscription: 4 threads on 2 CPUs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_cpu import testing

from benchmarks.registry import case

# x (M, K) @ y (K, N), f32: ~110 ms on one core of this machine, so that
# thread start-up and each core's copy of y are noise.
M, K, N = 2048, 1024, 1024
BM = 256                  # rows of x per DMA'd block
CORE_COUNTS = (1, 2, 4)   # M / (cores * BM) blocks per core


def mesh_matmul(cores: int):
  """``x @ y`` on a ``cores``-core TensorCore mesh: each core copies y
  into its VMEM once, then for each BM-row block of its M / cores rows of x
  DMAs the block in, multiplies it and DMAs the product out."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=cores)
  rows = M // cores
  assert rows % BM == 0, (cores, rows, BM)

  def matmul(x, y):
    @pl.kernel(out_type=jax.ShapeDtypeStruct((M, N), jnp.float32), mesh=mesh,
               scratch_types=[pltpu.VMEM((BM, K), jnp.float32),
                              pltpu.VMEM((K, N), jnp.float32),
                              pltpu.VMEM((BM, N), jnp.float32)])
    def kernel(x_hbm, y_hbm, o_hbm, x_buf, y_buf, o_buf):
      c = jax.lax.axis_index("core")
      pltpu.sync_copy(y_hbm, y_buf)

      def block(i, carry):
        r = pl.ds(c * rows + i * BM, BM)
        pltpu.sync_copy(x_hbm.at[r], x_buf)
        o_buf[...] = jnp.dot(x_buf[...], y_buf[...],
                             preferred_element_type=jnp.float32)
        pltpu.sync_copy(o_buf, o_hbm.at[r])
        return carry

      jax.lax.fori_loop(0, rows // BM, block, 0)
    return kernel(x, y)

  matmul.__name__ = f"mesh_matmul_cores{cores}"
  return matmul


def _inputs():
  rng = np.random.default_rng(0)
  return (rng.standard_normal((M, K), np.float32),
          rng.standard_normal((K, N), np.float32))


# JAX's interpret=True has no TensorCore mesh: the core axis is unbound
# ("NameError: Found an unbound axis name: core"); TPU interpret mode runs
# it (~0.8 s per call).
_NO_MESH = "interpret=True runs no TensorCore mesh (unbound axis name core)"


@case(name="cores_matmul_2048",
      description=(f"pl.kernel on a TensorCore mesh: x ({M}, {K}) @ y ({K}, "
                   f"{N}) f32, the rows of x divided among the cores, each "
                   f"core DMAs y into VMEM once and its rows in {BM}-row "
                   f"blocks (sync_copy in, jnp.dot, sync_copy out); the "
                   f"pallas_cpu cell is the 2-core mesh, variants cores"
                   f"{{1,2,4}} the same total work on 1, 2, 4 cores; "
                   f"reference jnp.dot"),
      make_inputs=_inputs, reference=lambda x, y: jnp.dot(x, y),
      grid_steps=1, rtol=1e-4, atol=2e-3, quick=False,
      skip={"interpret": _NO_MESH},
      variants={f"cores{n}": (lambda n=n: testing.on_backend(
          mesh_matmul(n), "cpu")) for n in CORE_COUNTS},
      variant_ratios={"cores1/cores2": ("cores1", "cores2"),
                      "cores4/cores2": ("cores4", "cores2")},
      # 2 CPUs: near-linear 2-core scaling; 4 threads time-share them and
      # should cost little more than 2.
      targets={"cores1/cores2": (">=", 1.7), "cores4/cores2": ("<=", 1.1)})
def _mesh_matmul(backend):
  return testing.on_backend(mesh_matmul(2), backend)
