"""Row reductions over whole rows: softmax and layer norm, f32 4096x4096 in
(256, 4096) blocks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

import pallas_cpu

from benchmarks.cases.common import random_inputs, tpu_params
from benchmarks.registry import case

ROWS_SHAPE = (4096, 4096)
ROWS_BLOCK = (256, 4096)
LN_EPS = 1e-5


def softmax_kernel(x_ref, o_ref):
  x = x_ref[...]
  m = jnp.max(x, axis=1, keepdims=True)
  e = jnp.exp(x - m)
  s = jnp.sum(e, axis=1, keepdims=True)
  o_ref[...] = e / s


def layer_norm_kernel(x_ref, g_ref, b_ref, o_ref):
  x = x_ref[...]
  mean = jnp.mean(x, axis=1, keepdims=True)
  xc = x - mean
  var = jnp.mean(xc * xc, axis=1, keepdims=True)
  o_ref[...] = xc * jax.lax.rsqrt(var + LN_EPS) * g_ref[...] + b_ref[...]


def _layer_norm_reference(x, gamma, beta):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.var(x, axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * gamma + beta


def _rows_call(kernel, n_vectors: int, backend: str):
  """A grid over row blocks; the ``n_vectors`` inputs after the first are
  whole (cols,) vectors."""
  rows, cols = ROWS_SHAPE
  row_spec = pl.BlockSpec(ROWS_BLOCK, lambda i: (i, 0))
  vec_spec = pl.BlockSpec((cols,), lambda i: (0,))
  return pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(ROWS_SHAPE, jnp.float32),
      grid=(rows // ROWS_BLOCK[0],),
      in_specs=[row_spec] + [vec_spec] * n_vectors, out_specs=row_spec,
      compiler_params=tpu_params("parallel"), backend=backend)


def _layer_norm_inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(ROWS_SHAPE).astype(np.float32) * 2 + 0.5
  gamma = rng.standard_normal(ROWS_SHAPE[1]).astype(np.float32)
  beta = rng.standard_normal(ROWS_SHAPE[1]).astype(np.float32)
  return x, gamma, beta


@case(name="softmax_4096_b256",
      description=("row softmax (max, exp, sum, divide), f32 4096x4096, "
                   "(256, 4096) blocks, grid (16,) parallel; reference "
                   "jax.nn.softmax"),
      make_inputs=lambda: random_inputs(ROWS_SHAPE, 1),
      reference=lambda x: jax.nn.softmax(x, axis=-1),
      grid_steps=16, targets={"cpu/xla": ("<=", 1.3)}, rtol=1e-5, atol=1e-7,
      quick=False)
def _softmax(backend):
  return _rows_call(softmax_kernel, 0, backend)


@case(name="layernorm_4096_b256",
      description=("layer norm (mean, variance, rsqrt, * gamma + beta with "
                   "(4096,) vectors), f32 4096x4096, (256, 4096) blocks, grid "
                   "(16,) parallel; reference jnp mean/var/rsqrt"),
      make_inputs=_layer_norm_inputs, reference=_layer_norm_reference,
      grid_steps=16, targets={"cpu/xla": ("<=", 1.3)}, rtol=1e-4, atol=1e-4,
      quick=False)
def _layer_norm(backend):
  return _rows_call(layer_norm_kernel, 2, backend)


def row_sum_kernel(x_ref, o_ref):
  o_ref[...] = jnp.sum(x_ref[...], axis=1, keepdims=True)


@case(name="row_sum_4096_b256",
      description=("row sums, f32 4096x4096 -> (4096, 1), (256, 4096) "
                   "blocks, grid (16,) parallel; reference jnp.sum: a pure "
                   "reduction, bound by reading x"),
      make_inputs=lambda: random_inputs(ROWS_SHAPE, 1),
      reference=lambda x: jnp.sum(x, axis=1, keepdims=True),
      grid_steps=16, targets={"cpu/xla": ("<=", 1.1)}, rtol=1e-4, atol=1e-3,
      quick=False)
def _row_sum(backend):
  rows, cols = ROWS_SHAPE
  return pallas_cpu.pallas_call(
      row_sum_kernel, out_shape=jax.ShapeDtypeStruct((rows, 1), jnp.float32),
      grid=(rows // ROWS_BLOCK[0],),
      in_specs=[pl.BlockSpec(ROWS_BLOCK, lambda i: (i, 0))],
      out_specs=pl.BlockSpec((ROWS_BLOCK[0], 1), lambda i: (i, 0)),
      compiler_params=tpu_params("parallel"), backend=backend)
