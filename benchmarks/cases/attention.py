"""The attention kernels that ship with JAX (``jax.experimental.pallas.ops.
tpu``): flash attention forward and backward, splash, paged and ragged paged
attention, each called unmodified under the backend's mode.  Inputs are
closed-over constants only where they are static metadata (kv lengths, page
tables).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.cases.common import (KERNEL_TARGETS, RACE_RATIOS,
                                     RACE_TARGETS, library_builder,
                                     library_case, race_variants,
                                     random_inputs)
from benchmarks.registry import Case, Probe, register


# -- flash attention forward ------------------------------------------------

FLASH_BLOCK = 512


def _flash_call(q, k, v, *, seq: int):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  blk = min(FLASH_BLOCK, seq)
  blocks = fa.BlockSizes(block_q=blk, block_k_major=blk, block_k=blk,
                         block_b=1)
  return fa.flash_attention(q, k, v, causal=False,
                            sm_scale=1.0 / math.sqrt(q.shape[-1]),
                            block_sizes=blocks)


def _flash_builder(seq: int):
  return library_builder("flash_attention",
                         functools.partial(_flash_call, seq=seq))


def _flash_inputs(heads: int, seq: int, dim: int = 128):
  return random_inputs((1, heads, seq, dim), 3)


def _flash_reference(q, k, v):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  return fa.mha_reference(q, k, v, None, causal=False,
                          sm_scale=1.0 / math.sqrt(q.shape[-1]))


def _flash_case(seq: int, heads: int = 4, races: bool = False) -> Case:
  """``races``: also the race-detection variants (race_variants)."""
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
      grid_steps=steps,
      targets={"cpu/xla": ("<=", 2.0), **(RACE_TARGETS if races else {})},
      variants=(race_variants(functools.partial(_flash_call, seq=seq))
                if races else {}),
      variant_ratios=RACE_RATIOS if races else {},
      rtol=1e-4, atol=1e-4,
      # Probe: 1 head, seq 1024: same blocks, fewer steps.
      probe=Probe(_flash_builder(pseq), lambda: _flash_inputs(1, pseq),
                  steps / (pseq // blk) ** 2),
      quick=False)


register(_flash_case(1024, races=True))
register(_flash_case(4096))


# -- splash attention forward: make_splash_mha_single_device, causal mask ---

SPLASH_HEADS, SPLASH_SEQ, SPLASH_DIM, SPLASH_BLOCK = 4, 1024, 128, 512


def _splash_reference(q, k, v):
  """Causal softmax attention in jnp (splash takes q pre-scaled: no
  sm_scale), as splash's make_masked_mha_reference computes it."""
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k)
  n = q.shape[2]
  causal = jnp.arange(n)[:, None] >= jnp.arange(n)[None, :]
  s = jnp.where(causal, s, -jnp.inf)
  return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)


def _splash_inputs():
  q, k, v = random_inputs((1, SPLASH_HEADS, SPLASH_SEQ, SPLASH_DIM), 3)
  return q * np.float32(SPLASH_DIM ** -0.5), k, v


@library_case(
    name=f"splash_attention_s{SPLASH_SEQ}",
    description=(
        f"jax.experimental.pallas.ops.tpu.splash_attention "
        f"make_splash_mha_single_device, causal mask, batch 1, "
        f"{SPLASH_HEADS} heads, seq {SPLASH_SEQ}, head dim {SPLASH_DIM}, f32, "
        f"all blocks {SPLASH_BLOCK}; reference jnp causal softmax attention"),
    make_inputs=_splash_inputs, reference=_splash_reference,
    grid_steps=SPLASH_HEADS * (SPLASH_SEQ // SPLASH_BLOCK) ** 2,
    targets=dict(KERNEL_TARGETS), rtol=1e-4, atol=1e-4, quick=False)
def _splash_call(q, k, v):
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
  return kernel(q[0], k[0], v[0])[None]


# -- paged attention (decode): batch 4, kv lengths up to 1024 ---------------

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


@library_case(
    name="paged_attention_b4_kv1024",
    description=(
        f"jax.experimental.pallas.ops.tpu.paged_attention, batch "
        f"{PAGED_BATCH}, kv lengths {list(PAGED_LENGTHS)}, {PAGED_HEADS} heads "
        f"({PAGED_KV_HEADS} kv heads), head dim {PAGED_DIM}, f32, page size "
        f"{PAGED_PAGE}, {PAGED_PAGES_PER_SEQ} pages per sequence, "
        f"pages_per_compute_block={PAGED_PAGES_PER_BLOCK}; reference gathered "
        f"pages + grouped_query_attention_reference"),
    make_inputs=_paged_inputs, reference=_paged_reference,
    grid_steps=PAGED_BATCH * PAGED_KV_HEADS * (
        PAGED_PAGES_PER_SEQ // PAGED_PAGES_PER_BLOCK),
    targets={**KERNEL_TARGETS, **RACE_TARGETS},
    variants=race_variants(lambda *a: _paged_call(*a)),
    variant_ratios=RACE_RATIOS, rtol=1e-4, atol=1e-4, quick=False)
def _paged_call(q, k_pages, v_pages, lengths, page_indices):
  from jax.experimental.pallas.ops.tpu.paged_attention import (
      paged_attention_kernel as paged)
  return paged.paged_attention(
      q, k_pages, v_pages, lengths, page_indices,
      pages_per_compute_block=PAGED_PAGES_PER_BLOCK)


# -- ragged paged attention: a mixed batch of prefill and decode sequences --

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


def _ragged_reference(q, kv_pages):
  """The reference shipped beside the kernel (per-sequence jnp attention
  over the gathered pages), padding rows zeroed."""
  from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa
  return _ragged_valid(rpa.ref_ragged_paged_attention(
      q, kv_pages, *_ragged_metadata(), sm_scale=RAGGED_DIM ** -0.5))


def _ragged_valid(out):
  """Rows past the last sequence's queries are padding (the kernel leaves
  them unspecified; the reference has none): zero-padded on both sides."""
  n = sum(RAGGED_Q_LENS)
  out = out[:RAGGED_TOKENS]
  if out.shape[0] < RAGGED_TOKENS:
    out = jnp.pad(out, ((0, RAGGED_TOKENS - out.shape[0]), (0, 0), (0, 0)))
  return jnp.where(jnp.arange(out.shape[0])[:, None, None] < n, out, 0.0)


@library_case(
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
    make_inputs=_ragged_inputs, reference=_ragged_reference,
    grid_steps=RAGGED_TOKENS // RAGGED_Q_PER_BLOCK,
    # Neither JAX interpreter runs this kernel in jax 0.10.2: their cells
    # record the error they raise.
    targets={"cpu/xla": ("<=", 1.5)}, rtol=1e-4, atol=1e-4, quick=False)
def _ragged_call(q, kv_pages):
  from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa
  meta = [jnp.asarray(m) for m in _ragged_metadata()]
  return _ragged_valid(rpa.ragged_paged_attention(
      q, kv_pages, *meta, sm_scale=RAGGED_DIM ** -0.5,
      num_kv_pages_per_block=RAGGED_KV_PAGES_PER_BLOCK,
      num_queries_per_block=RAGGED_Q_PER_BLOCK))


# -- flash attention backward: jax.grad through flash_attention's custom VJP
# (its dkv and dq kernels).  The forward (residuals) runs in both columns.

FLASH_BWD_HEADS, FLASH_BWD_SEQ, FLASH_BWD_DIM = 4, 1024, 128


def _flash_bwd_loss(attention):
  w = jnp.cos(jnp.arange(FLASH_BWD_DIM, dtype=jnp.float32))
  loss = lambda q, k, v: jnp.sum(attention(q, k, v) * w)
  # One array (dq, dk, dv stacked) so the harness compares one output.
  return lambda q, k, v: jnp.stack(
      jax.grad(loss, argnums=(0, 1, 2))(q, k, v))


def _flash_bwd_reference(q, k, v):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa
  scale = 1.0 / math.sqrt(FLASH_BWD_DIM)
  return _flash_bwd_loss(lambda q, k, v: fa.mha_reference_no_custom_vjp(
      q, k, v, causal=False, sm_scale=scale))(q, k, v)


@library_case(
    name=f"flash_attention_bwd_s{FLASH_BWD_SEQ}",
    description=(
        f"jax.grad (q, k, v) of sum(flash_attention(q, k, v) * w), batch 1, "
        f"{FLASH_BWD_HEADS} heads, seq {FLASH_BWD_SEQ}, head dim "
        f"{FLASH_BWD_DIM}, f32, non-causal, every block {FLASH_BLOCK} "
        f"(forward + dkv + dq kernels); reference jax.grad of "
        f"mha_reference_no_custom_vjp"),
    make_inputs=lambda: _flash_inputs(FLASH_BWD_HEADS, FLASH_BWD_SEQ,
                                      FLASH_BWD_DIM),
    reference=_flash_bwd_reference,
    # forward + dkv + dq grids, each (1, heads, seq/b, seq/b)
    grid_steps=3 * FLASH_BWD_HEADS * (FLASH_BWD_SEQ // FLASH_BLOCK) ** 2,
    targets=dict(KERNEL_TARGETS), rtol=1e-4, atol=1e-3, quick=False)
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
