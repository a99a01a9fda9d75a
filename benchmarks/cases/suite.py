"""A test suite's worth of small kernels: what a kernel author's pytest run
costs, first calls included.

Fifty small kernels of ten kinds (elementwise, reductions, accumulation over
a grid axis, small matmuls, a manual DMA, loops, conditionals, integer
code, row softmax, a 3-D grid), five shapes each.  Every call of a cell
traces, lowers and compiles all fifty afresh -- new kernel functions, new
names, so no cache of JAX or pallas_cpu serves them (pallas_cpu's disk cache
is off for the call) -- and runs each once: the cost of a test suite, not of
a steady-state call.  The XLA cell jits the fifty jnp references afresh.
"""
from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

from benchmarks.registry import Case, register

VARIANTS = 5
_calls = itertools.count()   # a fresh name for every kernel of every call


def _rows(j):
  return 8 * (j + 1)


def _elementwise(j):
  shape = (_rows(j) * 2, 128 * (1 + j % 2))
  c = 0.5 + j

  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = jnp.tanh(x_ref[...]) * y_ref[...] + c

  spec = pl.BlockSpec((_rows(j), shape[1]), lambda i: (i, 0))
  return dict(kernel=kernel, out=jax.ShapeDtypeStruct(shape, jnp.float32),
              grid=(2,), in_specs=[spec, spec], out_specs=spec,
              shapes=[shape, shape],
              ref=lambda x, y: jnp.tanh(x) * y + c)


def _transcendental(j):
  shape = (_rows(j), 256)

  def kernel(x_ref, o_ref):
    x = x_ref[...]
    o_ref[...] = jnp.where(x > 0, jnp.log1p(x * x), jnp.exp(x)) - j

  spec = pl.BlockSpec(shape, lambda: (0, 0))
  return dict(kernel=kernel, out=jax.ShapeDtypeStruct(shape, jnp.float32),
              grid=(), in_specs=[spec], out_specs=spec, shapes=[shape],
              ref=lambda x: jnp.where(x > 0, jnp.log1p(x * x),
                                      jnp.exp(x)) - j)


def _row_sum(j):
  shape = (_rows(j) * 2, 128 * (j + 1))

  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.sum(x_ref[...], axis=1, keepdims=True) * 0.5

  return dict(kernel=kernel,
              out=jax.ShapeDtypeStruct((shape[0], 1), jnp.float32),
              grid=(2,),
              in_specs=[pl.BlockSpec((shape[0] // 2, shape[1]),
                                     lambda i: (i, 0))],
              out_specs=pl.BlockSpec((shape[0] // 2, 1), lambda i: (i, 0)),
              shapes=[shape],
              ref=lambda x: jnp.sum(x, axis=1, keepdims=True) * 0.5)


def _accumulate(j):
  steps = j + 2
  shape = (8 * steps, 128)

  def kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = jnp.full(o_ref.shape, -jnp.inf, o_ref.dtype)
    o_ref[...] = jnp.maximum(o_ref[...], x_ref[...])

  return dict(kernel=kernel, out=jax.ShapeDtypeStruct((8, 128), jnp.float32),
              grid=(steps,),
              in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
              out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)),
              shapes=[shape],
              ref=lambda x: jnp.max(x.reshape(steps, 8, 128), axis=0))


def _matmul(j):
  m, k, n = 8 * (j + 1), 128, 128 * (1 + j % 2)

  def kernel(a_ref, b_ref, o_ref):
    o_ref[...] = jnp.dot(a_ref[...], b_ref[...],
                         preferred_element_type=jnp.float32)

  return dict(kernel=kernel, out=jax.ShapeDtypeStruct((m, n), jnp.float32),
              grid=(), in_specs=[pl.BlockSpec((m, k), lambda: (0, 0)),
                                 pl.BlockSpec((k, n), lambda: (0, 0))],
              out_specs=pl.BlockSpec((m, n), lambda: (0, 0)),
              shapes=[(m, k), (k, n)],
              ref=lambda a, b: jnp.dot(a, b, precision="highest"),
              tol=1e-4)


def _matmul_k_loop(j):
  ksteps = j + 2
  m, k, n = 16, 128 * ksteps, 128

  def kernel(a_ref, b_ref, o_ref, acc_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)
    acc_ref[...] += jnp.dot(a_ref[...], b_ref[...],
                            preferred_element_type=jnp.float32)

    @pl.when(pl.program_id(0) == ksteps - 1)
    def _():
      o_ref[...] = acc_ref[...]

  return dict(kernel=kernel, out=jax.ShapeDtypeStruct((m, n), jnp.float32),
              grid=(ksteps,),
              in_specs=[pl.BlockSpec((m, 128), lambda s: (0, s)),
                        pl.BlockSpec((128, n), lambda s: (s, 0))],
              out_specs=pl.BlockSpec((m, n), lambda s: (0, 0)),
              scratch=[pltpu.VMEM((m, n), jnp.float32)],
              shapes=[(m, k), (k, n)],
              ref=lambda a, b: jnp.dot(a, b, precision="highest"),
              tol=1e-4)


def _dma(j):
  shape = (_rows(j), 128)

  def kernel(x_hbm, o_ref, buf, sem):
    copy = pltpu.make_async_copy(x_hbm, buf, sem)
    copy.start()
    copy.wait()
    o_ref[...] = buf[...] * 2.0 + j

  return dict(kernel=kernel, out=jax.ShapeDtypeStruct(shape, jnp.float32),
              grid=(), in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
              out_specs=pl.BlockSpec(shape, lambda: (0, 0)),
              scratch=[pltpu.VMEM(shape, jnp.float32),
                       pltpu.SemaphoreType.DMA(())],
              shapes=[shape], ref=lambda x: x * 2.0 + j)


def _fori(j):
  shape = (8, 128 * (j + 1))
  trips = 3 + j

  def kernel(x_ref, o_ref):
    def body(i, acc):
      return acc * 0.5 + x_ref[...] * i.astype(jnp.float32)
    o_ref[...] = jax.lax.fori_loop(0, trips, body, jnp.zeros(shape))

  def ref(x):
    acc = jnp.zeros(shape)
    for i in range(trips):
      acc = acc * 0.5 + x * i
    return acc

  spec = pl.BlockSpec(shape, lambda: (0, 0))
  return dict(kernel=kernel, out=jax.ShapeDtypeStruct(shape, jnp.float32),
              grid=(), in_specs=[spec], out_specs=spec, shapes=[shape],
              ref=ref, tol=1e-5)


def _conditional(j):
  steps = 4
  shape = (8 * steps, 128)

  def kernel(x_ref, o_ref):
    i = pl.program_id(0)
    o_ref[...] = jax.lax.cond(i % 2 == j % 2, lambda v: v * 3.0,
                              lambda v: -v, x_ref[...])

  def ref(x):
    parts = x.reshape(steps, 8, 128)
    even = (jnp.arange(steps) % 2 == j % 2)[:, None, None]
    return jnp.where(even, parts * 3.0, -parts).reshape(shape)

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  return dict(kernel=kernel, out=jax.ShapeDtypeStruct(shape, jnp.float32),
              grid=(steps,), in_specs=[spec], out_specs=spec,
              shapes=[shape], ref=ref)


def _integer(j):
  shape = (_rows(j), 128)

  def kernel(x_ref, o_ref):
    v = (x_ref[...] * 1000).astype(jnp.int32)
    o_ref[...] = ((v ^ (v >> 3)) & 0xFFF).astype(jnp.float32) + j

  def ref(x):
    v = (x * 1000).astype(jnp.int32)
    return ((v ^ (v >> 3)) & 0xFFF).astype(jnp.float32) + j

  spec = pl.BlockSpec(shape, lambda: (0, 0))
  return dict(kernel=kernel, out=jax.ShapeDtypeStruct(shape, jnp.float32),
              grid=(), in_specs=[spec], out_specs=spec, shapes=[shape],
              ref=ref)


FAMILIES = (_elementwise, _transcendental, _row_sum, _accumulate, _matmul,
            _matmul_k_loop, _dma, _fori, _conditional, _integer)
KERNELS = [(fam, j) for j in range(VARIANTS) for fam in FAMILIES]


def _tanh_steps(j):
  """Issue #16 item 1's measurement: ``tanh(x) * y + c`` over 1-10 grid
  steps of (8, 128) blocks."""
  steps = j + 1
  shape = (8 * steps, 128)
  c = 0.25 * j

  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = jnp.tanh(x_ref[...]) * y_ref[...] + c

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  return dict(kernel=kernel, out=jax.ShapeDtypeStruct(shape, jnp.float32),
              grid=(steps,), in_specs=[spec, spec], out_specs=spec,
              shapes=[shape, shape], ref=lambda x, y: jnp.tanh(x) * y + c)


TANH_KERNELS = [(_tanh_steps, j) for j in range(10)]


def _make_inputs(kernels):
  def make():
    rng = np.random.default_rng(0)
    out = []
    for fam, j in kernels:
      shapes = fam(j)["shapes"]
      out.append(tuple(rng.standard_normal(s).astype(np.float32)
                       for s in shapes))
    return tuple(out)
  return make


@contextlib.contextmanager
def _disk_cache_off():
  old = os.environ.get("PALLAS_CPU_CACHE_DIR")
  os.environ["PALLAS_CPU_CACHE_DIR"] = "off"
  try:
    yield
  finally:
    if old is None:
      del os.environ["PALLAS_CPU_CACHE_DIR"]
    else:
      os.environ["PALLAS_CPU_CACHE_DIR"] = old


def _builder(kernels):
  def build(backend):
    def run(*inputs):
      outs = []
      with _disk_cache_off():
        for (fam, j), args in zip(kernels, inputs):
          spec = fam(j)  # fresh kernel functions: a new trace every call
          call = pallas_cpu.pallas_call(
              spec["kernel"], out_shape=spec["out"], grid=spec["grid"],
              in_specs=spec["in_specs"], out_specs=spec["out_specs"],
              scratch_shapes=spec.get("scratch", ()),
              name=f"suite_{fam.__name__[1:]}_{j}_{next(_calls)}",
              backend=backend)
          outs.append(jax.block_until_ready(jax.jit(call)(*args)))
      return tuple(outs)
    return run
  return build


def _reference(kernels):
  def reference(*inputs):
    outs = []
    for (fam, j), args in zip(kernels, inputs):
      ref = fam(j)["ref"]
      outs.append(jax.block_until_ready(
          jax.jit(lambda *a: ref(*a))(*args)))
    return tuple(outs)
  return reference


register(Case(
    name="test_suite_50",
    description=(f"{len(KERNELS)} small kernels (10 kinds x {VARIANTS} "
                 "shapes) traced, compiled and run once each, every call "
                 "afresh: a test suite's first calls"),
    make_inputs=_make_inputs(KERNELS), build=_builder(KERNELS),
    reference=_reference(KERNELS),
    grid_steps=len(KERNELS), rtol=1e-4, atol=1e-4, jit=False,
    targets={"interpret/cpu": (">=", 2.0)}))

register(Case(
    name="fresh_tanh_10",
    description=("ten fresh tanh(x)*y+c kernels, 1-10 grid steps of (8, 128) "
                 "f32 blocks, traced, compiled and run once each (the "
                 "compile-latency measurement of issue #16: first call at "
                 "most 0.6x interpret=True's)"),
    make_inputs=_make_inputs(TANH_KERNELS), build=_builder(TANH_KERNELS),
    reference=_reference(TANH_KERNELS),
    grid_steps=len(TANH_KERNELS), rtol=1e-5, atol=1e-5, jit=False,
    targets={"interpret/cpu": (">=", 1 / 0.6)}))
