"""megablox grouped matmuls (``gmm``, ``tgmm``): m=1024, k=512, n=512, 8
groups (one empty), the kernels that ship with JAX called unmodified."""
from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np

from benchmarks.cases.common import (KERNEL_TARGETS, library_case,
                                     random_inputs)

GMM_M, GMM_K, GMM_N = 1024, 512, 512
GMM_GROUP_SIZES = (100, 0, 250, 162, 128, 200, 84, 100)
GMM_TILING = (128, 128, 128)
assert sum(GMM_GROUP_SIZES) == GMM_M


def _gmm_group_bounds():
  starts = np.cumsum((0,) + GMM_GROUP_SIZES)
  return list(zip(starts[:-1], starts[1:]))


def _gmm_reference(lhs, rhs):
  """Per-group jnp matmul: rows of group g times rhs[g] (static group
  bounds: XLA sees the sizes as constants)."""
  return jnp.concatenate(
      [jnp.dot(lhs[a:b], rhs[g], precision="highest")
       for g, (a, b) in enumerate(_gmm_group_bounds())], axis=0)


def _tgmm_reference(lhs_t, dout):
  """out[g] = lhs_t[:, rows of g] @ dout[rows of g] (zeros for an empty
  group), per group in jnp."""
  return jnp.stack(
      [jnp.dot(lhs_t[:, a:b], dout[a:b], precision="highest")
       for a, b in _gmm_group_bounds()])


def _gmm_steps(tiles_m_axis: int) -> int:
  tm, tk, tn = GMM_TILING
  # gmm: (n tiles, m tiles + groups - 1, k tiles); tgmm: (n, k, m tiles +
  # groups - 1) -- an upper bound on the visited tiles either way.
  return (GMM_N // tn) * (GMM_K // tk) * (tiles_m_axis // tm +
                                         len(GMM_GROUP_SIZES) - 1)


@library_case(
    name="megablox_gmm_m1024",
    description=(
        f"jax.experimental.pallas.ops.tpu.megablox.gmm, m={GMM_M}, "
        f"k={GMM_K}, n={GMM_N}, {len(GMM_GROUP_SIZES)} groups "
        f"{list(GMM_GROUP_SIZES)}, f32, tiling {GMM_TILING}; reference "
        f"per-group jnp matmul"),
    make_inputs=lambda: (*random_inputs((GMM_M, GMM_K), 1, seed=1),
                         *random_inputs(
                             (len(GMM_GROUP_SIZES), GMM_K, GMM_N), 1, seed=2)),
    reference=_gmm_reference, grid_steps=_gmm_steps(GMM_M),
    targets=dict(KERNEL_TARGETS), rtol=1e-4, atol=1e-3, quick=False)
def _gmm_call(lhs, rhs):
  from jax.experimental.pallas.ops.tpu.megablox import ops as megablox_ops
  return megablox_ops.gmm(lhs, rhs, jnp.array(GMM_GROUP_SIZES, jnp.int32),
                          jnp.float32, GMM_TILING)


@library_case(
    name="megablox_tgmm_m1024",
    description=(
        f"jax.experimental.pallas.ops.tpu.megablox.gmm.tgmm (lhs^T is "
        f"{GMM_K}x{GMM_M}, dout {GMM_M}x{GMM_N}), {len(GMM_GROUP_SIZES)} "
        f"groups {list(GMM_GROUP_SIZES)}, f32, tiling {GMM_TILING}; reference "
        f"per-group jnp matmul"),
    make_inputs=lambda: (*random_inputs((GMM_K, GMM_M), 1, seed=3),
                         *random_inputs((GMM_M, GMM_N), 1, seed=4)),
    reference=_tgmm_reference, grid_steps=_gmm_steps(GMM_M),
    targets=dict(KERNEL_TARGETS), rtol=1e-4, atol=1e-3, quick=False)
def _tgmm_call(lhs_t, dout):
  # megablox/__init__.py re-exports ops.gmm under the name of the gmm module.
  gmm_mod = importlib.import_module(
      "jax.experimental.pallas.ops.tpu.megablox.gmm")
  return gmm_mod.tgmm(lhs_t, dout, jnp.array(GMM_GROUP_SIZES, jnp.int32),
                      preferred_element_type=jnp.float32, tiling=GMM_TILING)
