#!/usr/bin/env python
"""Benchmark suite: pallas_cpu's compiled backend vs XLA vs the interpreters.

For every case the same Pallas kernel is built through
``pallas_cpu.pallas_call(..., backend=B)`` for B in "cpu" (compiled),
"interpret" (JAX ``interpret=True``) and "tpu-interpret" (TPU interpret
mode) -- or, for a library kernel such as JAX's flash attention, called
under ``pallas_cpu.force_cpu_backend()`` / the interpret-mode context /
``pltpu.force_tpu_interpret_mode()`` -- next to the plain XLA (jnp)
computation of the same math, all in one process and each under
``jax.jit``.

  1. every backend is called once and checked against the XLA result
     (correctness before timing); the compiled backend's first call is its
     compile time (trace + lowering + MLIR compile + first run), with a
     fresh kernel cache unless --persistent-cache;
  2. each backend is timed ``--repeats`` times, backends interleaved (the
     order rotates every repeat), keeping the minimum;
  3. ratios cpu/XLA, interpret/cpu and tpu-interpret/cpu (and µs per grid
     step) are checked against the case's targets; the run ends with the
     median compile time and "targets met: k/n".

A crash or a wrong result of the compiled backend is recorded in its table
cell (the other backends of that case are still timed); the run goes on.
Interpreter cells whose single call would exceed ``--interp-budget`` seconds
are skipped: the decision comes from a smaller-grid probe of the same kernel
when the case has one (estimate = probe time x step ratio), then from the
first (correctness) call.

Usage::

  python benchmarks/bench.py [--quick] [--repeats N] [--slow-repeats N]
                             [--out DIR] [--cases a,b]
                             [--interp-budget SECONDS] [--persistent-cache]

Writes ``<out>/results.md``, ``<out>/results.json`` and ``<out>/bench.png``
(the plot needs matplotlib).  See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import tempfile
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import jax
import jax.numpy as jnp
from jax._src import config as jax_config
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

PALLAS_BACKENDS = ("cpu", "interpret", "tpu-interpret")
XLA = "xla"
ALL_BACKENDS = ("cpu", XLA, "interpret", "tpu-interpret")
INTERPRETERS = ("interpret", "tpu-interpret")
LABELS = {"cpu": "pallas_cpu", XLA: "XLA", "interpret": "interpret=True",
          "tpu-interpret": "TPU interpret"}
# ratio name -> (numerator backend, denominator backend)
RATIOS = {"cpu/xla": ("cpu", XLA),
          "interpret/cpu": ("interpret", "cpu"),
          "tpu-interpret/cpu": ("tpu-interpret", "cpu")}
# Metrics targets can name: the ratios, and the compiled backend's time per
# grid step (per_step cases).
METRIC_LABELS = {"cpu/xla": "cpu/XLA", "interpret/cpu": "interpret/cpu",
                 "tpu-interpret/cpu": "tpu-interpret/cpu",
                 "cpu_us_per_step": "pallas_cpu µs/step"}
RATIO_LABELS = METRIC_LABELS
SKIPPED = "skipped (> budget)"
COMPILE_TARGET_S = 0.5        # median compile time (first call) target
SLOW_CELL_S = 1.0             # interpreter cells slower than this per call
                              # are timed over --slow-repeats calls
_OPS = {"<=": lambda v, b: v <= b, ">=": lambda v, b: v >= b,
        "<": lambda v, b: v < b, ">": lambda v, b: v > b}


# ---------------------------------------------------------------------------
# Case registry
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Probe:
  """A smaller-grid variant of a case's kernel, used to estimate the
  interpreters' time on the full grid: estimate = probe call time * scale."""
  build: Callable[[str], Callable]   # backend -> un-jitted callable
  make_inputs: Callable[[], tuple]
  scale: float                       # full grid steps / probe grid steps


@dataclasses.dataclass
class Case:
  """One benchmark.

  build(backend) returns the (un-jitted) pallas_cpu.pallas_call for
  backend in PALLAS_BACKENDS; reference(*inputs) is the jnp computation of
  the same math (it runs under jax.jit as the XLA baseline and as the
  correctness reference).  targets maps a metric name ("cpu/xla",
  "interpret/cpu", "tpu-interpret/cpu", or "cpu_us_per_step" for per_step
  cases) to (op, bound), op one of "<=", ">=", "<", ">".  skip maps an
  interpreter backend to the stated reason it is not run.
  """
  name: str
  description: str
  make_inputs: Callable[[], tuple]
  build: Callable[[str], Callable]
  reference: Callable[..., Any]
  grid_steps: int
  targets: dict[str, tuple[str, float]] = dataclasses.field(
      default_factory=dict)
  rtol: float = 1e-6
  atol: float = 1e-6
  per_step: bool = False       # report time / grid_steps (µs per step)
  probe: Optional[Probe] = None
  quick: bool = True           # part of --quick
  skip: dict[str, str] = dataclasses.field(default_factory=dict)


CASES: list[Case] = []


def register(case: Case) -> Case:
  if any(c.name == case.name for c in CASES):
    raise ValueError(f"duplicate case name {case.name!r}")
  CASES.append(case)
  return case


def _random_inputs(shape, n, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(n))


def _tpu_params(*semantics: str):
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
        compiler_params=None if semantics is None else _tpu_params(*semantics))

  return Case(name=name, description=description,
              make_inputs=lambda: _random_inputs(shape, n_inputs, dtype=dtype),
              build=build, reference=reference,
              grid_steps=math.prod(grid), **case_kwargs)


def _add(x, y):
  return x + y


def _fused(x, y):
  return jnp.tanh(x * 2 + y) - jnp.exp(-y)


def _scale_shift(x):
  return x * 3 + 1


# -- 1, 2. Tiled matmul: the standard accumulator kernel --------------------

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
        compiler_params=_tpu_params("parallel", "parallel", "arbitrary"),
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


_MATMUL_TARGETS = {"cpu/xla": ("<=", 1.5), "tpu-interpret/cpu": (">=", 100.0)}
for _size in (1024, 2048):
  for _block in (128, 512):
    _t = dict(_MATMUL_TARGETS)
    if _block == 128:
      _t["interpret/cpu"] = (">=", 5.0)
    register(_matmul_case(_size, _block, targets=_t,
                          quick=(_size, _block) == (1024, 128)))
register(_matmul_case(1024, 512, jnp.bfloat16,
                      targets={"cpu/xla": ("<=", 2.0)}))


# -- 3. The flash attention kernel that ships with JAX ----------------------

@contextlib.contextmanager
def _interpret_true_mode():
  """``interpret=True`` for every pallas_call traced inside (the setting
  behind ``pltpu.force_tpu_interpret_mode``, with the value True)."""
  state = jax_config.pallas_tpu_interpret_mode_context_manager
  prev = state.swap_local(True)
  try:
    yield
  finally:
    state.set_local(prev)


_MODE_CONTEXTS = {"cpu": pallas_cpu.force_cpu_backend,
                  "interpret": _interpret_true_mode,
                  "tpu-interpret": pltpu.force_tpu_interpret_mode}

FLASH_BLOCK = 512


def _flash_builder(seq: int):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  blocks = fa.BlockSizes(block_q=min(FLASH_BLOCK, seq),
                         block_k_major=min(FLASH_BLOCK, seq),
                         block_k=min(FLASH_BLOCK, seq), block_b=1)

  def build(backend):
    def flash(q, k, v):
      # The mode is read while tracing; the harness jits this function, so
      # the context is active whenever the kernel is traced.
      with _MODE_CONTEXTS[backend]():
        return fa.flash_attention(q, k, v, causal=False,
                                  sm_scale=1.0 / math.sqrt(q.shape[-1]),
                                  block_sizes=blocks)
    flash.__name__ = f"flash_attention_{backend.replace('-', '_')}"
    return flash
  return build


def _flash_inputs(heads: int, seq: int, dim: int = 128):
  return _random_inputs((1, heads, seq, dim), 3)


def _flash_reference(q, k, v):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  return fa.mha_reference(q, k, v, None, causal=False,
                          sm_scale=1.0 / math.sqrt(q.shape[-1]))


def _flash_case(seq: int, heads: int = 4) -> Case:
  blk = min(FLASH_BLOCK, seq)
  steps = heads * (seq // blk) ** 2
  pseq = 1024
  return Case(
      name=f"flash_attention_s{seq}",
      description=(
          f"jax.experimental.pallas.ops.tpu.flash_attention, batch 1, "
          f"{heads} heads, seq {seq}, head dim 128, f32, non-causal, "
          f"sm_scale 1/sqrt(128), block_q=block_k_major=block_k={blk}, grid "
          f"(1, {heads}, {seq // blk}, {seq // blk}); reference mha_reference"),
      make_inputs=lambda: _flash_inputs(heads, seq),
      build=_flash_builder(seq), reference=_flash_reference,
      grid_steps=steps, targets={"cpu/xla": ("<=", 2.0)},
      rtol=1e-4, atol=1e-4,
      # Probe: 1 head, seq 1024: same blocks, fewer steps.
      probe=Probe(_flash_builder(pseq), lambda: _flash_inputs(1, pseq),
                  steps / (pseq // blk) ** 2),
      quick=False)


register(_flash_case(1024))
register(_flash_case(4096))


# -- 3b. More kernels that ship with JAX (the per-kernel targets) ----
#
# Each: cpu/XLA <= 1.5 against its jnp reference, never slower than
# interpret=True, and >= 100x faster than TPU interpret mode (every TPU
# interpret cell here runs within the default budget: 0.1-2 s per call).  Inputs are closed-over constants only where they are
# static metadata (group sizes, kv lengths, page table).

_KERNEL_TARGETS = {"cpu/xla": ("<=", 1.5), "interpret/cpu": (">=", 1.0),
                   "tpu-interpret/cpu": (">=", 100.0)}


def _library_builder(name: str, call: Callable):
  """build(backend) for a library kernel: ``call(*inputs)`` traced under
  the backend's mode context (entered inside the jitted function)."""
  def build(backend):
    def fn(*args):
      with _MODE_CONTEXTS[backend]():
        return call(*args)
    fn.__name__ = f"{name}_{backend.replace('-', '_')}"
    return fn
  return build


# splash attention forward: make_splash_mha_single_device, causal mask.
SPLASH_HEADS, SPLASH_SEQ, SPLASH_DIM, SPLASH_BLOCK = 4, 1024, 128, 512


def _splash_call():
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as splash, splash_attention_mask as smask)
  b = SPLASH_BLOCK
  blocks = splash.BlockSizes(
      block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
      block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  mask = smask.MultiHeadMask(
      [smask.CausalMask((SPLASH_SEQ, SPLASH_SEQ))
       for _ in range(SPLASH_HEADS)])
  kernel = splash.make_splash_mha_single_device(mask, block_sizes=blocks)
  # Batch 1: the single-device kernel on the one batch element.
  return lambda q, k, v: kernel(q[0], k[0], v[0])[None]


def _splash_reference(q, k, v):
  """Causal softmax attention in jnp (splash takes q pre-scaled: no
  sm_scale), as splash's make_masked_mha_reference computes it."""
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k)
  n = q.shape[2]
  causal = jnp.arange(n)[:, None] >= jnp.arange(n)[None, :]
  s = jnp.where(causal, s, -jnp.inf)
  return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)


def _splash_inputs():
  q, k, v = _random_inputs((1, SPLASH_HEADS, SPLASH_SEQ, SPLASH_DIM), 3)
  return q * np.float32(SPLASH_DIM ** -0.5), k, v


register(Case(
    name=f"splash_attention_s{SPLASH_SEQ}",
    description=(
        f"jax.experimental.pallas.ops.tpu.splash_attention "
        f"make_splash_mha_single_device, causal mask, batch 1, "
        f"{SPLASH_HEADS} heads, seq {SPLASH_SEQ}, head dim {SPLASH_DIM}, f32, "
        f"all blocks {SPLASH_BLOCK}; reference jnp causal softmax attention"),
    make_inputs=_splash_inputs,
    build=_library_builder("splash_attention", lambda q, k, v:
                           _splash_call()(q, k, v)),
    reference=_splash_reference,
    grid_steps=SPLASH_HEADS * (SPLASH_SEQ // SPLASH_BLOCK) ** 2,
    targets=dict(_KERNEL_TARGETS), rtol=1e-4, atol=1e-4, quick=False))


# paged attention (decode): batch 4, kv lengths up to 1024.
PAGED_BATCH, PAGED_HEADS, PAGED_KV_HEADS, PAGED_DIM = 4, 4, 4, 128
PAGED_PAGE, PAGED_PAGES_PER_SEQ, PAGED_PAGES_PER_BLOCK = 16, 64, 8
PAGED_TOTAL_PAGES = PAGED_BATCH * PAGED_PAGES_PER_SEQ
PAGED_LENGTHS = (1024, 512, 768, 256)


def _paged_inputs():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((PAGED_BATCH, PAGED_HEADS, PAGED_DIM),
                          dtype=np.float32)
  kv_shape = (PAGED_KV_HEADS, PAGED_TOTAL_PAGES, PAGED_PAGE, PAGED_DIM)
  k_pages = rng.standard_normal(kv_shape, dtype=np.float32)
  v_pages = rng.standard_normal(kv_shape, dtype=np.float32)
  lengths = np.array(PAGED_LENGTHS, np.int32)
  page_indices = rng.permutation(PAGED_TOTAL_PAGES).astype(np.int32).reshape(
      PAGED_BATCH, PAGED_PAGES_PER_SEQ)
  return q, k_pages, v_pages, lengths, page_indices


def _paged_call(q, k_pages, v_pages, lengths, page_indices):
  from jax.experimental.pallas.ops.tpu.paged_attention import (
      paged_attention_kernel as paged)
  return paged.paged_attention(
      q, k_pages, v_pages, lengths, page_indices,
      pages_per_compute_block=PAGED_PAGES_PER_BLOCK)


def _paged_reference(q, k_pages, v_pages, lengths, page_indices):
  """As test_tpu_kernels: gather each sequence's pages into a contiguous
  [B, KVH, T, D] cache (rounded through bf16, the kernel's dequantize step)
  and run paged_attention.util.grouped_query_attention_reference."""
  from jax.experimental.pallas.ops.tpu.paged_attention import util
  def gather(pages):
    x = pages[:, page_indices]  # [KVH, B, pages_per_seq, page_size, D]
    x = x.reshape(PAGED_KV_HEADS, PAGED_BATCH,
                  PAGED_PAGES_PER_SEQ * PAGED_PAGE, PAGED_DIM)
    return x.transpose(1, 0, 2, 3).astype(jnp.bfloat16).astype(jnp.float32)
  return util.grouped_query_attention_reference(
      q, gather(k_pages), gather(v_pages), lengths)


register(Case(
    name="paged_attention_b4_kv1024",
    description=(
        f"jax.experimental.pallas.ops.tpu.paged_attention, batch "
        f"{PAGED_BATCH}, kv lengths {list(PAGED_LENGTHS)}, {PAGED_HEADS} heads "
        f"({PAGED_KV_HEADS} kv heads), head dim {PAGED_DIM}, f32, page size "
        f"{PAGED_PAGE}, {PAGED_PAGES_PER_SEQ} pages per sequence, "
        f"pages_per_compute_block={PAGED_PAGES_PER_BLOCK}; reference gathered "
        f"pages + grouped_query_attention_reference"),
    make_inputs=_paged_inputs,
    build=_library_builder("paged_attention", _paged_call),
    reference=_paged_reference,
    grid_steps=PAGED_BATCH * PAGED_KV_HEADS * (
        PAGED_PAGES_PER_SEQ // PAGED_PAGES_PER_BLOCK),
    targets=dict(_KERNEL_TARGETS), rtol=1e-4, atol=1e-4, quick=False))


# ragged paged attention: a mixed batch of prefill and decode sequences.
RAGGED_Q_HEADS, RAGGED_KV_HEADS, RAGGED_DIM, RAGGED_PAGE = 8, 4, 128, 16
RAGGED_PAGES_PER_SEQ, RAGGED_MAX_SEQS = 64, 8
RAGGED_Q_LENS = (1, 128, 1, 64)          # decode, prefill, decode, prefill
RAGGED_KV_LENS = (1024, 512, 768, 256)
RAGGED_KV_PAGES_PER_BLOCK, RAGGED_Q_PER_BLOCK = 8, 32
RAGGED_TOKENS = 256                      # padded number of query tokens


def _ragged_metadata():
  """(kv_lens, page_indices, cu_q_lens, num_seqs): fixed, so that the
  reference (a Python loop over sequences) sees them as constants."""
  rng = np.random.default_rng(1)
  total_pages = RAGGED_MAX_SEQS * RAGGED_PAGES_PER_SEQ
  n = len(RAGGED_Q_LENS)
  kv_lens = np.zeros(RAGGED_MAX_SEQS, np.int32)
  kv_lens[:n] = RAGGED_KV_LENS
  page_indices = rng.permutation(total_pages).astype(np.int32).reshape(
      RAGGED_MAX_SEQS, RAGGED_PAGES_PER_SEQ)
  cu_q_lens = np.zeros(RAGGED_MAX_SEQS + 1, np.int32)
  cu_q_lens[1:n + 1] = np.cumsum(RAGGED_Q_LENS)
  cu_q_lens[n + 1:] = cu_q_lens[n]
  return kv_lens, page_indices, cu_q_lens, np.array([n], np.int32)


def _ragged_inputs():
  rng = np.random.default_rng(0)
  total_pages = RAGGED_MAX_SEQS * RAGGED_PAGES_PER_SEQ
  q = rng.standard_normal((RAGGED_TOKENS, RAGGED_Q_HEADS, RAGGED_DIM),
                          dtype=np.float32)
  kv_pages = rng.standard_normal(
      (total_pages, RAGGED_PAGE, 2 * RAGGED_KV_HEADS, RAGGED_DIM),
      dtype=np.float32)
  return q, kv_pages


def _ragged_call(q, kv_pages):
  from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa
  meta = [jnp.asarray(m) for m in _ragged_metadata()]
  return rpa.ragged_paged_attention(
      q, kv_pages, *meta, sm_scale=RAGGED_DIM ** -0.5,
      num_kv_pages_per_block=RAGGED_KV_PAGES_PER_BLOCK,
      num_queries_per_block=RAGGED_Q_PER_BLOCK)


def _ragged_reference(q, kv_pages):
  """The reference shipped beside the kernel (per-sequence jnp attention
  over the gathered pages)."""
  from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa
  return rpa.ref_ragged_paged_attention(q, kv_pages, *_ragged_metadata(),
                                        sm_scale=RAGGED_DIM ** -0.5)


def _ragged_valid(out):
  """Rows past the last sequence's queries are padding (the kernel leaves
  them unspecified; the reference has none): zero-padded on both sides."""
  n = sum(RAGGED_Q_LENS)
  out = out[:RAGGED_TOKENS]
  if out.shape[0] < RAGGED_TOKENS:
    out = jnp.pad(out, ((0, RAGGED_TOKENS - out.shape[0]), (0, 0), (0, 0)))
  return jnp.where(jnp.arange(out.shape[0])[:, None, None] < n, out, 0.0)


register(Case(
    name="ragged_paged_attention",
    description=(
        f"jax.experimental.pallas.ops.tpu.ragged_paged_attention, "
        f"{len(RAGGED_Q_LENS)} sequences with q lengths {list(RAGGED_Q_LENS)} "
        f"(decode and prefill) and kv lengths {list(RAGGED_KV_LENS)}, "
        f"{RAGGED_Q_HEADS} q heads, {RAGGED_KV_HEADS} kv heads, head dim "
        f"{RAGGED_DIM}, f32, page size {RAGGED_PAGE}, "
        f"num_kv_pages_per_block={RAGGED_KV_PAGES_PER_BLOCK}, "
        f"num_queries_per_block={RAGGED_Q_PER_BLOCK}; reference "
        f"ref_ragged_paged_attention"),
    make_inputs=_ragged_inputs,
    build=_library_builder("ragged_paged_attention",
                           lambda *a: _ragged_valid(_ragged_call(*a))),
    reference=lambda *a: _ragged_valid(_ragged_reference(*a)),
    grid_steps=RAGGED_TOKENS // RAGGED_Q_PER_BLOCK,
    # Neither JAX interpreter runs this kernel in jax 0.10.2: their cells
    # record the error they raise.
    targets={"cpu/xla": ("<=", 1.5)}, rtol=1e-4, atol=1e-4, quick=False))


# megablox gmm / tgmm: m=1024, k=512, n=512, 8 groups (one empty).
GMM_M, GMM_K, GMM_N = 1024, 512, 512
GMM_GROUP_SIZES = (100, 0, 250, 162, 128, 200, 84, 100)
GMM_TILING = (128, 128, 128)
assert sum(GMM_GROUP_SIZES) == GMM_M


def _gmm_group_bounds():
  starts = np.cumsum((0,) + GMM_GROUP_SIZES)
  return list(zip(starts[:-1], starts[1:]))


def _gmm_call(lhs, rhs):
  from jax.experimental.pallas.ops.tpu.megablox import ops as megablox_ops
  return megablox_ops.gmm(lhs, rhs, jnp.array(GMM_GROUP_SIZES, jnp.int32),
                          jnp.float32, GMM_TILING)


def _gmm_reference(lhs, rhs):
  """Per-group jnp matmul: rows of group g times rhs[g] (static group
  bounds: XLA sees the sizes as constants)."""
  return jnp.concatenate(
      [jnp.dot(lhs[a:b], rhs[g], precision="highest")
       for g, (a, b) in enumerate(_gmm_group_bounds())], axis=0)


def _tgmm_call(lhs_t, dout):
  import importlib
  gmm_mod = importlib.import_module(
      "jax.experimental.pallas.ops.tpu.megablox.gmm")
  return gmm_mod.tgmm(lhs_t, dout, jnp.array(GMM_GROUP_SIZES, jnp.int32),
                      preferred_element_type=jnp.float32, tiling=GMM_TILING)


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


register(Case(
    name="megablox_gmm_m1024",
    description=(
        f"jax.experimental.pallas.ops.tpu.megablox.gmm, m={GMM_M}, "
        f"k={GMM_K}, n={GMM_N}, {len(GMM_GROUP_SIZES)} groups "
        f"{list(GMM_GROUP_SIZES)}, f32, tiling {GMM_TILING}; reference "
        f"per-group jnp matmul"),
    make_inputs=lambda: (*_random_inputs((GMM_M, GMM_K), 1, seed=1),
                         *_random_inputs(
                             (len(GMM_GROUP_SIZES), GMM_K, GMM_N), 1, seed=2)),
    build=_library_builder("megablox_gmm", _gmm_call),
    reference=_gmm_reference, grid_steps=_gmm_steps(GMM_M),
    targets=dict(_KERNEL_TARGETS), rtol=1e-4, atol=1e-3, quick=False))

register(Case(
    name="megablox_tgmm_m1024",
    description=(
        f"jax.experimental.pallas.ops.tpu.megablox.gmm.tgmm (lhs^T is "
        f"{GMM_K}x{GMM_M}, dout {GMM_M}x{GMM_N}), {len(GMM_GROUP_SIZES)} "
        f"groups {list(GMM_GROUP_SIZES)}, f32, tiling {GMM_TILING}; reference "
        f"per-group jnp matmul"),
    make_inputs=lambda: (*_random_inputs((GMM_K, GMM_M), 1, seed=3),
                         *_random_inputs((GMM_M, GMM_N), 1, seed=4)),
    build=_library_builder("megablox_tgmm", _tgmm_call),
    reference=_tgmm_reference, grid_steps=_gmm_steps(GMM_M),
    targets=dict(_KERNEL_TARGETS), rtol=1e-4, atol=1e-3, quick=False))


# flash attention backward: jax.grad through flash_attention's custom VJP
# (its dkv and dq kernels).  The forward (residuals) runs in both columns.
FLASH_BWD_HEADS, FLASH_BWD_SEQ, FLASH_BWD_DIM = 4, 1024, 128


def _flash_bwd_loss(attention):
  w = jnp.cos(jnp.arange(FLASH_BWD_DIM, dtype=jnp.float32))
  loss = lambda q, k, v: jnp.sum(attention(q, k, v) * w)
  # One array (dq, dk, dv stacked) so the harness compares one output.
  return lambda q, k, v: jnp.stack(
      jax.grad(loss, argnums=(0, 1, 2))(q, k, v))


def _flash_bwd_call(q, k, v):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  b = FLASH_BLOCK
  blocks = fa.BlockSizes(
      block_q=b, block_k_major=b, block_k=b, block_b=1,
      block_q_major_dkv=b, block_k_major_dkv=b, block_k_dkv=b,
      block_q_dkv=b, block_k_major_dq=b, block_k_dq=b, block_q_dq=b)
  scale = 1.0 / math.sqrt(FLASH_BWD_DIM)
  return _flash_bwd_loss(lambda q, k, v: fa.flash_attention(
      q, k, v, causal=False, sm_scale=scale, block_sizes=blocks))(q, k, v)


def _flash_bwd_reference(q, k, v):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  scale = 1.0 / math.sqrt(FLASH_BWD_DIM)
  return _flash_bwd_loss(lambda q, k, v: fa.mha_reference_no_custom_vjp(
      q, k, v, causal=False, sm_scale=scale))(q, k, v)


register(Case(
    name=f"flash_attention_bwd_s{FLASH_BWD_SEQ}",
    description=(
        f"jax.grad (q, k, v) of sum(flash_attention(q, k, v) * w), batch 1, "
        f"{FLASH_BWD_HEADS} heads, seq {FLASH_BWD_SEQ}, head dim "
        f"{FLASH_BWD_DIM}, f32, non-causal, every block {FLASH_BLOCK} "
        f"(forward + dkv + dq kernels); reference jax.grad of "
        f"mha_reference_no_custom_vjp"),
    make_inputs=lambda: _flash_inputs(FLASH_BWD_HEADS, FLASH_BWD_SEQ,
                                      FLASH_BWD_DIM),
    build=_library_builder("flash_attention_bwd", _flash_bwd_call),
    reference=_flash_bwd_reference,
    # forward + dkv + dq grids, each (1, heads, seq/b, seq/b)
    grid_steps=3 * FLASH_BWD_HEADS * (FLASH_BWD_SEQ // FLASH_BLOCK) ** 2,
    targets=dict(_KERNEL_TARGETS), rtol=1e-4, atol=1e-3, quick=False))


# -- 4. Row softmax and layer norm ------------------------------------------

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


def _rows_build(kernel, n_vectors: int):
  def build(backend):
    rows, cols = ROWS_SHAPE
    row_spec = pl.BlockSpec(ROWS_BLOCK, lambda i: (i, 0))
    vec_spec = pl.BlockSpec((cols,), lambda i: (0,))
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(ROWS_SHAPE, jnp.float32),
        grid=(rows // ROWS_BLOCK[0],),
        in_specs=[row_spec] + [vec_spec] * n_vectors, out_specs=row_spec,
        compiler_params=_tpu_params("parallel"), backend=backend)
  return build


def _layer_norm_inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(ROWS_SHAPE).astype(np.float32) * 2 + 0.5
  gamma = rng.standard_normal(ROWS_SHAPE[1]).astype(np.float32)
  beta = rng.standard_normal(ROWS_SHAPE[1]).astype(np.float32)
  return x, gamma, beta


register(Case(
    name="softmax_4096_b256",
    description=("row softmax (max, exp, sum, divide), f32 4096x4096, "
                 "(256, 4096) blocks, grid (16,) parallel; reference "
                 "jax.nn.softmax"),
    make_inputs=lambda: _random_inputs(ROWS_SHAPE, 1),
    build=_rows_build(softmax_kernel, 0),
    reference=lambda x: jax.nn.softmax(x, axis=-1),
    grid_steps=16, targets={"cpu/xla": ("<=", 1.3)}, rtol=1e-5, atol=1e-7,
    quick=False))

register(Case(
    name="layernorm_4096_b256",
    description=("layer norm (mean, variance, rsqrt, * gamma + beta with "
                 "(4096,) vectors), f32 4096x4096, (256, 4096) blocks, grid "
                 "(16,) parallel; reference jnp mean/var/rsqrt"),
    make_inputs=_layer_norm_inputs, build=_rows_build(layer_norm_kernel, 2),
    reference=_layer_norm_reference,
    grid_steps=16, targets={"cpu/xla": ("<=", 1.3)}, rtol=1e-4, atol=1e-4,
    quick=False))


# -- 5. Elementwise ----------------------------------------------------------

register(blocked_elementwise(
    "add_2048_b256",
    "o = x + y, f32 2048x2048, 256x256 blocks, grid (8,8) parallel "
    "(the issue-2 target case)",
    _add, _add, 2, (2048, 2048), (256, 256),
    targets={"cpu/xla": ("<=", 2.0), "tpu-interpret/cpu": (">=", 50.0)},
    rtol=0, atol=0))

register(blocked_elementwise(
    "add_4096_b512",
    "o = x + y, f32 4096x4096, 512x512 blocks, grid (8,8) parallel",
    _add, _add, 2, (4096, 4096), (512, 512),
    targets={"cpu/xla": ("<=", 1.3)}, rtol=0, atol=0, quick=False))

register(blocked_elementwise(
    "fused_elementwise_2048",
    "o = tanh(x*2+y) - exp(-y), f32 2048x2048, 256x256 blocks, grid (8,8) "
    "parallel",
    _fused, _fused, 2, (2048, 2048), (256, 256), rtol=2e-5, atol=2e-5,
    quick=False))

register(blocked_elementwise(
    "edge_blocks_2000x1000",
    "o = x*3+1, f32 2000x1000, 256x256 blocks, grid (8,4) parallel: partial "
    "edge blocks on both dims",
    _scale_shift, _scale_shift, 1, (2000, 1000), (256, 256),
    rtol=1e-6, atol=1e-6))


# -- 6. Manual double-buffered DMA --------------------------------------------

DMA_CHUNK = (256, 1024)
DMA_CHUNKS = 64


def double_buffered_sum_kernel(x_hbm, o_ref, buf, sem):
  rows = DMA_CHUNK[0]
  n = x_hbm.shape[0] // rows

  def copy(i, slot):
    return pltpu.make_async_copy(x_hbm.at[pl.ds(i * rows, rows)],
                                 buf.at[slot], sem.at[slot])

  copy(0, 0).start()

  def body(i, acc):
    slot = i % 2

    @pl.when(i + 1 < n)
    def _():
      copy(i + 1, 1 - slot).start()

    copy(i, slot).wait()
    return acc + buf[slot]

  o_ref[...] = jax.lax.fori_loop(0, n, body,
                                 jnp.zeros(DMA_CHUNK, jnp.float32))


def _dma_build(backend):
  return pallas_cpu.pallas_call(
      double_buffered_sum_kernel,
      out_shape=jax.ShapeDtypeStruct(DMA_CHUNK, jnp.float32),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec(DMA_CHUNK, lambda: (0, 0)),
      scratch_shapes=[pltpu.VMEM((2, *DMA_CHUNK), jnp.float32),
                      pltpu.SemaphoreType.DMA((2,))],
      backend=backend)


register(Case(
    name="dma_double_buffer_sum",
    description=(f"manual double buffering: HBM (pl.ANY) f32 "
                 f"({DMA_CHUNK[0] * DMA_CHUNKS}, {DMA_CHUNK[1]}) input, VMEM "
                 f"(2, {DMA_CHUNK[0]}, {DMA_CHUNK[1]}) scratch, 2 DMA "
                 f"semaphores, make_async_copy start/wait in a fori_loop over "
                 f"{DMA_CHUNKS} chunks, summed; reference jnp sum over chunks"),
    make_inputs=lambda: _random_inputs(
        (DMA_CHUNK[0] * DMA_CHUNKS, DMA_CHUNK[1]), 1),
    build=_dma_build,
    reference=lambda x: x.reshape(DMA_CHUNKS, *DMA_CHUNK).sum(0),
    grid_steps=1, rtol=1e-5, atol=1e-4, quick=False))


# -- 7. Per-grid-step overhead -----------------------------------------------

def _empty_grid_case(steps: int, probe_steps: int) -> Case:
  shape = (8, 128)

  def empty_grid_kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  def builder(n):
    def build(backend):
      spec = pl.BlockSpec(shape, lambda i: (0, 0))
      return pallas_cpu.pallas_call(
          empty_grid_kernel, out_shape=jax.ShapeDtypeStruct(shape, jnp.float32),
          grid=(n,), in_specs=[spec], out_specs=spec, backend=backend)
    return build

  make_inputs = lambda: _random_inputs(shape, 1)
  return Case(
      name=f"empty_grid_{steps // 1000}k",
      description=(f"grid=({steps},), one (8,128) f32 block with index map "
                   "i -> (0,0); only step 0 copies input to output: "
                   "per-grid-step overhead"),
      make_inputs=make_inputs, build=builder(steps), reference=jnp.copy,
      grid_steps=steps, rtol=0, atol=0, per_step=True,
      targets={"cpu_us_per_step": ("<", 0.2)},
      probe=Probe(builder(probe_steps), make_inputs, steps / probe_steps))


register(_empty_grid_case(100_000, 2_000))


def _tiny_step_case(steps: int, probe_steps: int) -> Case:
  """Like the empty grid, but every step does a little real work on the
  resident block (1024 adds), so the step loop cannot be reduced to nothing:
  time / steps bounds the per-step overhead of a step that does work."""
  shape = (8, 128)

  def tiny_step_kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)

    o_ref[...] += x_ref[...]

  def builder(n):
    def build(backend):
      spec = pl.BlockSpec(shape, lambda i: (0, 0))
      return pallas_cpu.pallas_call(
          tiny_step_kernel, out_shape=jax.ShapeDtypeStruct(shape, jnp.float32),
          grid=(n,), in_specs=[spec], out_specs=spec,
          compiler_params=_tpu_params("arbitrary"), backend=backend)
    return build

  def make_inputs():
    # Small integers: every partial sum is exact in f32, so the result must
    # equal x * steps bit for bit.
    rng = np.random.default_rng(0)
    return (rng.integers(-4, 5, shape).astype(np.float32),)

  return Case(
      name=f"tiny_step_grid_{steps // 1000}k",
      description=(f"grid=({steps},), one resident (8,128) f32 block, every "
                   "step o += x (1024 adds): per-step cost of a step that "
                   "does work"),
      make_inputs=make_inputs, build=builder(steps),
      reference=lambda x: x * np.float32(steps), grid_steps=steps,
      rtol=0, atol=0, per_step=True,
      probe=Probe(builder(probe_steps), make_inputs, steps / probe_steps),
      quick=False)


register(_tiny_step_case(100_000, 2_000))


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------

def _now() -> float:
  return time.perf_counter()


def _timed_call(fn, args) -> tuple[float, Any]:
  t0 = _now()
  out = jax.block_until_ready(fn(*args))
  return _now() - t0, out


def _check(case: Case, backend: str, out, ref) -> None:
  out, ref = np.asarray(out), np.asarray(ref)
  if out.shape != ref.shape or out.dtype != ref.dtype:
    raise AssertionError(
        f"[{case.name}] backend {backend!r} returned {out.dtype}{out.shape}, "
        f"XLA {ref.dtype}{ref.shape}")
  np.testing.assert_allclose(
      out, ref, rtol=case.rtol, atol=case.atol,
      err_msg=f"[{case.name}] backend {backend!r} disagrees with XLA")


def _cache_keys() -> Optional[set]:
  try:
    from pallas_cpu import compiler
    return set(compiler._cache)
  except Exception:  # the API may move; the flags are informational only
    return None


def _from_disk(keys) -> bool:
  from pallas_cpu import compiler
  return any(compiler._cache[k].from_disk for k in keys)


def _loud(msg: str) -> None:
  bar = "!" * 78
  print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)


def _short_error(e: BaseException) -> str:
  """Type and first line of an error; a first line that only announces
  what follows ("Verification failed:") gets the next one too.  Paths are
  shortened to the part after site-packages/ or the repository root."""
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  text = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])
  text = re.sub(r'"?/[^"\s]*/([^/"\s]+\.py)"?', r"\1", text)
  return f"{type(e).__name__}: {text}"


def _new_result(case: Case) -> dict:
  return {
      "name": case.name, "description": case.description,
      "grid_steps": case.grid_steps, "status": "ok", "error": None,
      "cpu_error": None, "first_call_s": {}, "times_ms": {}, "median_ms": {},
      "samples_ms": {}, "skipped": {}, "estimates_s": {}, "compile_s": None,
      "compile_net_s": None, "compile_cached": None, "compile_from_disk": None,
      "ratios": {}, "metrics": {}, "targets": {}, "verdicts": {},
      "per_step_us": {}, "reduced_repeats": {},
  }


def run_case(case: Case, repeats: int, budget: float,
             slow_repeats: int) -> dict:
  print(f"\n== {case.name}: {case.description}", flush=True)
  res = _new_result(case)
  args = tuple(jax.device_put(a) for a in case.make_inputs())

  # 1. Correctness first: reference, then each backend's first call.
  xla_fn = jax.jit(case.reference)
  t, ref = _timed_call(xla_fn, args)
  res["first_call_s"][XLA] = t
  fns = {XLA: xla_fn}

  # The compiled backend: first call = compile time.  A crash or a wrong
  # result is recorded (the cell shows it) and the case goes on with the
  # other backends, so the row still has its XLA and interpreter numbers.
  try:
    before = _cache_keys()
    fn = jax.jit(case.build("cpu"))
    t, out = _timed_call(fn, args)
    after = _cache_keys()
  except Exception as e:
    res.update(status="FAILED", cpu_error=f"CRASH {_short_error(e)}", error=(
        f"backend 'cpu' raised {type(e).__name__}: {e}\n"
        + traceback.format_exc()))
    _loud(f"[{case.name}] COMPILED BACKEND CRASHED -- recorded; timing the "
          f"other backends\n{res['error']}")
  else:
    res["compile_s"] = res["first_call_s"]["cpu"] = t
    if before is not None and after is not None:
      res["compile_cached"] = after <= before
      res["compile_from_disk"] = _from_disk(after - before)
    try:
      _check(case, "cpu", out, ref)
    except AssertionError as e:
      first = [l for l in str(e).splitlines() if "Mismatched" in l
               or "Max absolute" in l]
      res.update(status="FAILED",
                 cpu_error="WRONG RESULT" + (
                     f" ({'; '.join(x.strip() for x in first)})"
                     if first else ""),
                 error=f"wrong result from backend 'cpu':\n{e}")
      _loud(f"[{case.name}] COMPILED BACKEND GAVE A WRONG RESULT -- recorded;"
            f" timing the other backends\n{e}")
    else:
      fns["cpu"] = fn
      print(f"   cpu      first call (compile) {t:8.3f} s   result OK",
            flush=True)

  for backend in INTERPRETERS:
    if backend in case.skip:
      res["skipped"][backend] = f"skipped: {case.skip[backend]}"
      print(f"   {backend:<14} skipped: {case.skip[backend]}", flush=True)
      continue
    # Budget rule, from a smaller-grid probe when the case has one.
    if case.probe is not None:
      try:
        pfn = jax.jit(case.probe.build(backend))
        pargs = tuple(jax.device_put(a) for a in case.probe.make_inputs())
        _timed_call(pfn, pargs)                 # compile
        tp, _ = _timed_call(pfn, pargs)         # steady-state probe call
      except Exception as e:
        res["skipped"][backend] = f"error: {_short_error(e)}"
        _loud(f"[{case.name}] backend {backend!r} probe raised: {e}")
        continue
      est = tp * case.probe.scale
      res["estimates_s"][backend] = est
      if est > budget:
        res["skipped"][backend] = SKIPPED
        print(f"   {backend:<14} {SKIPPED}: estimated {est:.1f} s per call "
              f"from a 1/{case.probe.scale:g}-size grid ({tp * 1e3:.1f} ms)",
              flush=True)
        continue
    try:
      fn = jax.jit(case.build(backend))
      t, out = _timed_call(fn, args)
    except Exception as e:
      res["skipped"][backend] = f"error: {_short_error(e)}"
      _loud(f"[{case.name}] backend {backend!r} raised "
            f"{type(e).__name__}: {e}")
      continue
    res["first_call_s"][backend] = t
    try:
      _check(case, backend, out, ref)
    except AssertionError as e:
      res.update(status="FAILED",
                 error=f"wrong result from backend {backend!r}:\n{e}")
      _loud(f"[{case.name}] backend {backend!r} GAVE A WRONG RESULT -- case "
            f"aborted (kernel or reference is wrong)\n{e}")
      return res
    if t > budget:
      res["skipped"][backend] = SKIPPED
      print(f"   {backend:<14} {SKIPPED}: first call took {t:.1f} s",
            flush=True)
      continue
    fns[backend] = fn
    print(f"   {backend:<14} first call {t:8.3f} s   result OK", flush=True)

  # 2. Timing, backends interleaved; the order rotates every repeat.  Slow
  # interpreter cells (first call > SLOW_CELL_S) take part in only the first
  # slow_repeats rounds: they are far from any bound, and it keeps the full
  # run near ten minutes.
  order = [b for b in ALL_BACKENDS if b in fns]
  n_rep = {b: repeats for b in order}
  for b in INTERPRETERS:
    if b in fns and res["first_call_s"][b] > SLOW_CELL_S:
      n_rep[b] = min(repeats, slow_repeats)
      if n_rep[b] < repeats:
        res["reduced_repeats"][b] = n_rep[b]
  samples: dict[str, list[float]] = {b: [] for b in order}
  for r in range(repeats):
    k = r % len(order)
    for b in order[k:] + order[:k]:
      if r < n_rep[b]:
        t, _ = _timed_call(fns[b], args)
        samples[b].append(t * 1e3)
  for b in order:
    res["samples_ms"][b] = samples[b]
    res["times_ms"][b] = min(samples[b])
    res["median_ms"][b] = statistics.median(samples[b])
  times = res["times_ms"]
  print("   min ms: " + ", ".join(f"{LABELS[b]} {times[b]:.4g}" for b in order),
        flush=True)
  if res["compile_s"] is not None and "cpu" in times:
    res["compile_net_s"] = max(0.0, res["compile_s"] - times["cpu"] / 1e3)

  # 3. Ratios, metrics and targets.
  for name, (num, den) in RATIOS.items():
    if num in times and den in times and times[den] > 0:
      res["ratios"][name] = times[num] / times[den]
  res["metrics"].update(res["ratios"])
  if case.per_step:
    for b in order:
      res["per_step_us"][b] = times[b] * 1e3 / case.grid_steps
    if "cpu" in res["per_step_us"]:
      res["metrics"]["cpu_us_per_step"] = res["per_step_us"]["cpu"]
  _judge(case, res)
  return res


def _judge(case: Case, res: dict) -> None:
  for name, (op, bound) in case.targets.items():
    value = res["metrics"].get(name)
    res["targets"][name] = {"op": op, "bound": bound, "value": value}
    if res["cpu_error"] is not None:
      res["verdicts"][name] = "FAILED"
    elif value is None:
      res["verdicts"][name] = "n/a"
    else:
      res["verdicts"][name] = "PASS" if _OPS[op](value, bound) else "MISS"


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def _fmt_ms(v: Optional[float]) -> str:
  if v is None:
    return "—"
  if v >= 100:
    return f"{v:.0f}"
  if v >= 1:
    return f"{v:.2f}"
  return f"{v:.3g}"


def _fmt_ratio(v: Optional[float]) -> str:
  if v is None:
    return "—"
  if v >= 100:
    return f"{v:.0f}x"
  if v >= 10:
    return f"{v:.1f}x"
  return f"{v:.2f}x"


def _fmt_value(name: str, v: float) -> str:
  return f"{v:.3g}" if name == "cpu_us_per_step" else f"{v:.2f}"


def _md(text: str, limit: int = 160) -> str:
  """One table-safe line."""
  text = " ".join(text.split()).replace("|", "\\|")
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _cell(res: dict, backend: str) -> str:
  if backend == "cpu" and res.get("cpu_error"):
    return "**FAILED**: " + _md(res["cpu_error"], 400)
  if backend in res["times_ms"]:
    s = _fmt_ms(res["times_ms"][backend])
    n = res.get("reduced_repeats", {}).get(backend)
    return s + (f" (min of {n})" if n else "")
  return _md(res["skipped"].get(backend, "—"))


def _target_cell(res: dict) -> str:
  if not res["targets"]:
    return "**FAILED**" if res["status"] != "ok" else "—"
  parts = []
  for name, tgt in res["targets"].items():
    verdict = res["verdicts"][name]
    value = tgt["value"]
    shown = "n/a" if value is None else _fmt_value(name, value)
    parts.append(f"{verdict} ({METRIC_LABELS[name]} {shown} "
                 f"{tgt['op']} {tgt['bound']:g})")
  return "; ".join(parts)


def _compile_cell(res: dict) -> tuple[str, str]:
  cs, net = res["compile_s"], res.get("compile_net_s")
  first = "—" if cs is None else f"{cs:.3f}"
  if res["compile_cached"]:
    first += " (cached)"
  elif res.get("compile_from_disk"):
    first += " (disk cache)"
  return first, "—" if net is None else f"{net:.3f}"


def markdown_table(results: list[dict]) -> str:
  head = ["case", "pallas_cpu ms", "XLA ms", "interpret=True ms",
          "TPU interpret ms", "compile s (1st call)", "compile s (net)",
          "cpu/XLA", "interpret/cpu", "tpu-interpret/cpu", "target met?"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
  for res in results:
    row = [res["name"], _cell(res, "cpu"), _cell(res, XLA),
           _cell(res, "interpret"), _cell(res, "tpu-interpret"),
           *_compile_cell(res),
           *(_fmt_ratio(res["ratios"].get(r)) for r in RATIOS),
           _target_cell(res)]
    lines.append("| " + " | ".join(row) + " |")
  extra = []
  for res in results:
    if res["per_step_us"] and "cpu" in res["per_step_us"]:
      cpu = res["per_step_us"]["cpu"]
      others = ", ".join(
          f"{LABELS[b]} {v:.4g} µs"
          for b, v in res["per_step_us"].items() if b != "cpu")
      extra.append(f"- {res['name']}: per-step overhead: {cpu:.4g} µs "
                   f"(= {cpu * 1e3:.3g} ns; pallas_cpu time / "
                   f"{res['grid_steps']} steps)"
                   + (f"; for comparison {others}" if others else ""))
    for b, est in res.get("estimates_s", {}).items():
      if res["skipped"].get(b) == SKIPPED:
        extra.append(f"- {res['name']}: {LABELS[b]} {SKIPPED}: estimated "
                     f"{est:.1f} s per call from a smaller grid")
    for b, why in res["skipped"].items():
      if why.startswith("error:") or why.startswith("skipped:"):
        extra.append(f"- {res['name']}: {LABELS[b]} {_md(why, 400)}")
    if res["status"] != "ok":
      first = (res["error"] or "").strip().splitlines()
      extra.append(f"- {res['name']}: FAILED: "
                   + _md(first[0] if first else "unknown error", 400))
  slow = [f"{r['name']} {LABELS[b]}" for r in results
          for b in r.get("reduced_repeats", {})]
  if slow:
    extra.append(f"- (min of N): interpreter cells slower than "
                 f"{SLOW_CELL_S:g} s per call, timed over fewer calls: "
                 + ", ".join(slow))
  return "\n".join(lines) + ("\n\n" + "\n".join(extra) if extra else "")


def summary(results: list[dict]) -> dict:
  """Median compile time and the count of targets met (every case's targets,
  plus the median-compile-time target; a failed case misses its targets)."""
  firsts = [r["compile_s"] for r in results if r["compile_s"] is not None]
  nets = [r["compile_net_s"] for r in results
          if r.get("compile_net_s") is not None]
  median = statistics.median(firsts) if firsts else None
  verdicts = [v for r in results for v in r["verdicts"].values()]
  # Targets of cases that died in the harness have no verdicts: count them.
  for r in results:
    if not r["verdicts"] and r.get("case_targets"):
      verdicts += ["FAILED"] * len(r["case_targets"])
  compile_ok = median is not None and median <= COMPILE_TARGET_S
  verdicts.append("PASS" if compile_ok else "MISS")
  return {
      "median_compile_s": median,
      "median_compile_net_s": statistics.median(nets) if nets else None,
      "compile_cases": len(firsts),
      "compile_verdict": "PASS" if compile_ok else "MISS",
      "targets_met": sum(v == "PASS" for v in verdicts),
      "targets_total": len(verdicts),
  }


def summary_lines(s: dict) -> list[str]:
  med = s["median_compile_s"]
  net = s["median_compile_net_s"]
  return [
      (f"median compile time: {'n/a' if med is None else f'{med:.3f}'} s "
       f"(first call of the compiled backend, {s['compile_cases']} cases; "
       f"target <= {COMPILE_TARGET_S:g} s: {s['compile_verdict']})"
       + ("" if net is None else
          f"; median net of one steady-state run: {net:.3f} s")),
      (f"targets met: {s['targets_met']}/{s['targets_total']} "
       "(per-case targets plus the median compile time)"),
  ]


def verdict_lines(results: list[dict]) -> list[str]:
  out = []
  for res in results:
    if not res["targets"]:
      out.append(f"{res['name']}: "
                 + ("FAILED (see above / results.json)"
                    if res["status"] != "ok" else "no targets"))
      continue
    for name, tgt in res["targets"].items():
      v = tgt["value"]
      if res["verdicts"][name] == "FAILED":
        shown = "n/a (compiled backend failed: " + _md(
            res["cpu_error"] or "", 120) + ")"
      else:
        shown = ("n/a (a backend was skipped)" if v is None
                 else _fmt_value(name, v))
      out.append(f"{res['name']}: {res['verdicts'][name]}  "
                 f"{METRIC_LABELS[name]} = {shown} (target {tgt['op']} "
                 f"{tgt['bound']:g})")
  return out


def plot(results: list[dict], path: Path) -> bool:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("note: matplotlib is not installed; skipping the plot "
          f"({path.name}). `pip install matplotlib` to get it.")
    return False
  shown = [r for r in results if r["times_ms"]]
  if not shown:
    return False
  fig, ax = plt.subplots(figsize=(max(10, 1.15 * len(shown) + 3), 7))
  width = 0.8 / len(ALL_BACKENDS)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for k, b in enumerate(ALL_BACKENDS):
    xs, ys = [], []
    for i, r in enumerate(shown):
      if b in r["times_ms"]:
        xs.append(i + (k - (len(ALL_BACKENDS) - 1) / 2) * width)
        ys.append(r["times_ms"][b])
    ax.bar(xs, ys, width, label=LABELS[b], color=colors[k % len(colors)])
    for x, y in zip(xs, ys):
      ax.text(x, y, _fmt_ms(y), ha="center", va="bottom", fontsize=6,
              rotation=90)
    # mark cells with no time: skipped by budget, failed, errors
    for i, r in enumerate(shown):
      if b in r["times_ms"]:
        continue
      x = i + (k - (len(ALL_BACKENDS) - 1) / 2) * width
      if b == "cpu" and r.get("cpu_error"):
        label = "FAILED"
      elif r["skipped"].get(b) == SKIPPED:
        label = "skipped"
      elif b in r["skipped"]:
        label = "n/a"
      else:
        continue
      ax.text(x, 0.01, label, ha="center", va="bottom", fontsize=6,
              rotation=90, color=colors[k % len(colors)],
              transform=ax.get_xaxis_transform())
  ax.set_yscale("log")
  top = max(v for r in shown for v in r["times_ms"].values())
  ax.set_ylim(top=top * 10)   # room for the value labels
  ax.set_xticks(range(len(shown)))
  ax.set_xticklabels([r["name"] for r in shown], rotation=30, ha="right",
                     fontsize=8)
  ax.set_ylabel("time per call, ms (min over repeats, log scale)")
  ax.set_title("pallas_cpu vs XLA vs interpreters")
  ax.legend(fontsize=8)
  ax.grid(axis="y", which="major", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def _warm_up() -> None:
  """Pays one-time process costs (JAX backend start, MLIR context, runtime
  library load) before any measured compile, with a kernel no case uses."""
  def warm_up_kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] - 1.0
  x = jnp.zeros((8, 128), jnp.float32)
  for backend in PALLAS_BACKENDS:
    fn = jax.jit(pallas_cpu.pallas_call(
        warm_up_kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=(1,), in_specs=[pl.BlockSpec(x.shape, lambda i: (0, 0))],
        out_specs=pl.BlockSpec(x.shape, lambda i: (0, 0)), backend=backend))
    jax.block_until_ready(fn(x))
  jax.block_until_ready(jax.jit(lambda a: a * 2)(x))


def _loadavg() -> Optional[list[float]]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _fmt_load(v) -> str:
  return "n/a" if v is None else "/".join(f"{x:g}" for x in v)


def _git_state() -> Optional[str]:
  """HEAD of the pallas_cpu checkout, and the files changed against it (the
  compiled backend measured is the working tree, not HEAD)."""
  import subprocess
  root = Path(__file__).resolve().parent.parent
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                          capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pallas_cpu"],
                           cwd=root, capture_output=True, text=True,
                           check=True).stdout.split("\n")
  except Exception:
    return None
  changed = [l[3:] for l in dirty if l.strip()]
  return head.strip() + (f" + uncommitted changes in {', '.join(changed)}"
                         if changed else "")


def _environment(args) -> dict:
  import jaxlib
  return {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
      "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "numpy": np.__version__,
      "jax_devices": [str(d) for d in jax.devices()],
      "platform": platform.platform(), "machine": platform.machine(),
      "processor": platform.processor(), "cpu_count": os.cpu_count(),
      "repeats": args.repeats, "slow_repeats": args.slow_repeats,
      "interp_budget_s": args.interp_budget, "quick": args.quick,
      "pallas_cpu_git": _git_state(),
      "loadavg_start": _loadavg(),
      "pallas_cpu_cache_dir": os.environ.get("PALLAS_CPU_CACHE_DIR"),
      "pallas_cpu_num_threads": os.environ.get("PALLAS_CPU_NUM_THREADS"),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="fast subset of cases (those marked quick); also "
                      "defaults --repeats to 3 and --interp-budget to 5")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed calls per backend, minimum kept (default 10, "
                      "at least 3)")
  p.add_argument("--slow-repeats", type=int, default=2,
                 help=f"timed calls of an interpreter cell slower than "
                      f"{SLOW_CELL_S:g} s per call (default 2, at least 1)")
  p.add_argument("--out", default=str(Path(__file__).resolve().parent
                                      / "results"),
                 help="output directory (default benchmarks/results)")
  p.add_argument("--cases", default=None,
                 help="comma-separated case names (default: all)")
  p.add_argument("--interp-budget", type=float, default=None,
                 help="skip an interpreter cell whose single call would "
                      "take longer than this many seconds (default 20)")
  p.add_argument("--persistent-cache", action="store_true",
                 help="use pallas_cpu's persistent kernel cache as "
                      "configured (PALLAS_CPU_CACHE_DIR or ~/.cache/"
                      "pallas_cpu); by default the run gets a fresh empty "
                      "cache so compile times are cold compiles")
  p.add_argument("--list", action="store_true", help="list cases and exit")
  args = p.parse_args(argv)
  if args.repeats is None:
    args.repeats = 3 if args.quick else 10
  if args.interp_budget is None:
    args.interp_budget = 5.0 if args.quick else 20.0
  if args.repeats < 3:
    p.error("--repeats must be at least 3")
  if args.slow_repeats < 1:
    p.error("--slow-repeats must be at least 1")

  if args.list:
    for c in CASES:
      print(f"{c.name:<26} {'quick ' if c.quick else '      '}"
            f"{c.description}")
    return 0

  cases = CASES
  if args.cases:
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    known = {c.name: c for c in CASES}
    unknown = [n for n in names if n not in known]
    if unknown:
      p.error(f"unknown case(s) {unknown}; known: {sorted(known)}")
    cases = [known[n] for n in names]
  elif args.quick:
    cases = [c for c in CASES if c.quick]

  if not args.persistent_cache:
    # Kernels are read at compile time (pallas_cpu.knobs), so this takes
    # effect for every kernel of this run: each compile is a cold one.
    os.environ["PALLAS_CPU_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="pallas_cpu-bench-cache-")

  out_dir = Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  env = _environment(args)
  print(f"pallas_cpu benchmarks: {len(cases)} case(s), repeats={args.repeats},"
        f" interp budget={args.interp_budget:g} s, jax {env['jax']}, "
        f"{env['cpu_count']} CPU(s)")
  t0 = _now()
  _warm_up()
  print(f"warm-up {(_now() - t0):.2f} s")

  results = []
  for case in cases:
    try:
      results.append(run_case(case, args.repeats, args.interp_budget,
                              args.slow_repeats))
    except Exception as e:  # a bug in the harness or the case definition
      _loud(f"[{case.name}] unexpected error -- case aborted\n"
            + traceback.format_exc())
      res = _new_result(case)
      res.update(status="FAILED", case_targets=dict(case.targets),
                 error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
      results.append(res)

  env["loadavg_end"] = _loadavg()
  env["total_s"] = round(_now() - t0, 1)
  table = markdown_table(results)
  summ = summary(results)
  summ_text = "\n".join(summary_lines(summ))
  md = ("# pallas_cpu benchmark results\n\n"
        f"`{env['command']}` — {env['date']}, jax {env['jax']}, "
        f"{env['cpu_count']} CPU(s), {env['machine']}, load average "
        f"{_fmt_load(env['loadavg_start'])} at the start, "
        f"{_fmt_load(env['loadavg_end'])} at the end; pallas_cpu "
        f"{env['pallas_cpu_git']}; total {env['total_s']:g} s; "
        f"min of {args.repeats} interleaved calls (interpreter cells slower "
        f"than {SLOW_CELL_S:g} s: min of {args.slow_repeats}); interpreter "
        f"budget {args.interp_budget:g} s; "
        + ("persistent kernel cache" if args.persistent_cache
           else "fresh kernel cache (cold compiles)") + ".\n\n"
        "Times are ms per call (jit'd, block_until_ready). compile s (1st "
        "call) = wall time of the compiled backend's first call (trace + "
        "lowering + MLIR compile + first run); compile s (net) = that minus "
        "one steady-state call. Ratios: cpu/XLA = pallas_cpu / XLA, "
        "interpret/cpu = interpret=True / pallas_cpu, tpu-interpret/cpu = "
        "TPU interpret / pallas_cpu.\n\n" + table + "\n\n"
        + "\n\n".join(f"**{l}**" for l in summary_lines(summ)) + "\n")
  print("\n" + table + "\n")
  (out_dir / "results.md").write_text(md)
  (out_dir / "results.json").write_text(json.dumps(
      {"environment": env, "summary": summ, "results": results}, indent=2,
      default=str))
  plotted = plot(results, out_dir / "bench.png")

  print("Target verdicts:")
  for line in verdict_lines(results):
    print("  " + line)
  print("\n" + summ_text)
  print(f"\nwrote {out_dir / 'results.md'}, {out_dir / 'results.json'}"
        + (f", {out_dir / 'bench.png'}" if plotted else ""))
  print(f"total {(_now() - t0):.1f} s")
  return 1 if any(r["status"] != "ok" for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
