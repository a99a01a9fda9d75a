"""The TPU kernels that ship with JAX (``jax.experimental.pallas.ops.tpu``),
run unmodified under ``pallas_cpu.force_cpu_backend()`` inside ``jax.jit`` and
compared with their references.

Every kernel runs (none is xfailed).  A kernel that could not would be an
``xfail(strict=True)`` naming its blocker, so CI flags the fix; the cut-down
reproducers of former blockers are at the end of the file.

Tolerances: f32 results are compared with an f32 reference computed with
``precision="highest"`` at ``rtol=atol=1e-4`` (observed errors are ~1e-6
relative: only the summation order differs).  bf16 outputs are compared with
the f32 reference of the same bf16-rounded inputs at ``rtol=atol=2e-2`` (one
bf16 rounding of the output, and of intermediates the kernel rounds to bf16).
PRNG bits and the example kernel are bit-exact.
"""
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from pallas_cpu import testing
from conftest import assert_same

from jax.experimental.pallas.ops.tpu import example_kernel
from jax.experimental.pallas.ops.tpu import flash_attention as fa
from jax.experimental.pallas.ops.tpu import matmul as tpu_matmul
from jax.experimental.pallas.ops.tpu.megablox import ops as megablox_ops
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention_kernel as paged
from jax.experimental.pallas.ops.tpu.paged_attention import util as paged_util
from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa
from jax.experimental.pallas.ops.tpu.random import philox, threefry
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

# megablox/__init__.py re-exports ops.gmm under the name of the gmm module.
megablox_gmm = importlib.import_module(
    "jax.experimental.pallas.ops.tpu.megablox.gmm")

F32_TOL = dict(rtol=1e-4, atol=1e-4)
BF16_TOL = dict(rtol=2e-2, atol=2e-2)


def _f32(x):
  return np.asarray(jnp.asarray(x, jnp.float32))


def _close(got, want, **tol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape, (g.shape, w.shape)
    np.testing.assert_allclose(_f32(g), _f32(w), **tol)


def _compiled(fn, *args, params=None):
  """``jax.jit(fn)(*args)`` with every pallas_call on the compiled backend."""
  ctx = (pallas_cpu.force_cpu_backend() if params is None
         else pallas_cpu.force_cpu_backend(params))
  with ctx:
    return jax.block_until_ready(jax.jit(fn)(*args))


def _normal(key, shape, dtype=jnp.float32):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


# -- example_kernel ---------------------------------------------------------

def test_example_double():
  x = _normal(jax.random.key(0), (16, 256))
  assert_same(_compiled(example_kernel.double, x), x * 2)


# -- matmul -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul(dtype):
  k0, k1 = jax.random.split(jax.random.key(1))
  x = _normal(k0, (512, 384), dtype)
  y = _normal(k1, (384, 256), dtype)
  got = _compiled(lambda x, y: tpu_matmul.matmul(
      x, y, block_shape=(128, 128), block_k=128), x, y)
  assert got.dtype == dtype
  want = jnp.dot(_f32(x), _f32(y), precision="highest")
  if dtype == jnp.float32:
    _close(got, want, **F32_TOL)
  else:  # f32 accumulation, one bf16 rounding of the output
    _close(got, want.astype(jnp.bfloat16), rtol=8e-3, atol=1e-2)


# -- flash_attention ----------------------------------------------------------

def _flash_block_sizes(block_q, block_k_major, block_k):
  return fa.BlockSizes(
      block_q=block_q, block_k_major=block_k_major, block_k=block_k, block_b=1,
      block_q_major_dkv=block_q, block_k_major_dkv=block_k_major,
      block_k_dkv=block_k, block_q_dkv=block_q,
      block_k_major_dq=block_k_major, block_k_dq=block_k, block_q_dq=block_q)


def _flash_inputs(seq, head_dim, dtype=jnp.float32, segmented=False):
  kq, kk, kv = jax.random.split(jax.random.key(2), 3)
  shape = (1, 2, seq, head_dim)  # batch 1, heads 2
  q, k, v = (_normal(key, shape, dtype) for key in (kq, kk, kv))
  seg = None
  if segmented:  # two segments, the boundary inside a block
    ids = (jnp.arange(seq) >= seq // 2 - 28).astype(jnp.int32)[None]
    seg = fa.SegmentIds(q=ids, kv=ids)
  return q, k, v, seg


FLASH_CASES = [
    # seq, head_dim, causal, segment ids, (block_q, block_k_major, block_k)
    pytest.param(128, 64, False, False, (128, 128, 128), id="s128-d64"),
    pytest.param(256, 64, True, False, (128, 256, 128), id="s256-d64-causal"),
    pytest.param(256, 128, False, True, (128, 128, 128), id="s256-d128-segments"),
    pytest.param(256, 64, True, True, (128, 128, 128),
                 id="s256-d64-causal-segments"),
]


@pytest.mark.parametrize("seq,head_dim,causal,segmented,blocks", FLASH_CASES)
def test_flash_attention_forward(seq, head_dim, causal, segmented, blocks):
  q, k, v, seg = _flash_inputs(seq, head_dim, segmented=segmented)
  scale = head_dim ** -0.5
  bs = _flash_block_sizes(*blocks)
  got = _compiled(lambda q, k, v: fa.flash_attention(
      q, k, v, segment_ids=seg, causal=causal, sm_scale=scale,
      block_sizes=bs), q, k, v)
  want = fa.mha_reference(q, k, v, None, seg, causal=causal, sm_scale=scale)
  _close(got, want, **F32_TOL)


def test_flash_attention_forward_bf16():
  q, k, v, _ = _flash_inputs(256, 128, jnp.bfloat16)
  scale = 128 ** -0.5
  bs = _flash_block_sizes(128, 256, 128)
  got = _compiled(lambda q, k, v: fa.flash_attention(
      q, k, v, causal=True, sm_scale=scale, block_sizes=bs), q, k, v)
  assert got.dtype == jnp.bfloat16
  want = fa.mha_reference_no_custom_vjp(
      *(x.astype(jnp.float32) for x in (q, k, v)), causal=True, sm_scale=scale)
  _close(got, want, **BF16_TOL)


@pytest.mark.parametrize("seq,head_dim,causal,segmented,blocks", [
    FLASH_CASES[1], FLASH_CASES[2], FLASH_CASES[3]])
def test_flash_attention_backward(seq, head_dim, causal, segmented, blocks):
  """jax.grad through the kernel's custom VJP (its dkv and dq kernels)
  against autodiff of the plain-jnp reference."""
  q, k, v, seg = _flash_inputs(seq, head_dim, segmented=segmented)
  scale = head_dim ** -0.5
  bs = _flash_block_sizes(*blocks)
  w = jnp.cos(jnp.arange(head_dim, dtype=jnp.float32))

  def loss(attention):
    return lambda q, k, v: jnp.sum(attention(q, k, v) * w)

  kernel_loss = loss(lambda q, k, v: fa.flash_attention(
      q, k, v, segment_ids=seg, causal=causal, sm_scale=scale,
      block_sizes=bs))
  ref_loss = loss(lambda q, k, v: fa.mha_reference_no_custom_vjp(
      q, k, v, None, seg, causal=causal, sm_scale=scale))
  got = _compiled(jax.grad(kernel_loss, argnums=(0, 1, 2)), q, k, v)
  want = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2)))(q, k, v)
  _close(got, want, **F32_TOL)


# -- splash_attention -------------------------------------------------------

SPLASH_SEQ, SPLASH_HEAD_DIM = 256, 64
SPLASH_BLOCKS = splash.BlockSizes(
    block_q=128, block_kv=128, block_kv_compute=128,
    block_q_dkv=128, block_kv_dkv=128, block_kv_dkv_compute=128,
    block_q_dq=128, block_kv_dq=128)
# The forward kernel's scratch (m, l, o) is three OUTPUTS whose index map is
# (0, 0) for every head, and its head dimension is "parallel".  On TPU each
# core has its own VMEM copy of an output block; here output blocks are views
# of the one output buffer, so two threads share them.
# One thread: the kernels' numerics, independent of the race above.
ONE_THREAD = pallas_cpu.CompilerParams(num_threads=1)


def _splash_case(kind):
  num_q_heads = 4 if kind == "gqa" else 2
  num_kv_heads = {"mha": 2, "mha_segments": 2, "gqa": 2, "mqa": None}[kind]
  kq, kk, kv = jax.random.split(jax.random.key(3), 3)
  s, d = SPLASH_SEQ, SPLASH_HEAD_DIM
  q = _normal(kq, (num_q_heads, s, d)) * d ** -0.5
  kv_shape = (s, d) if num_kv_heads is None else (num_kv_heads, s, d)
  k, v = _normal(kk, kv_shape), _normal(kv, kv_shape)
  mask = splash_mask.MultiHeadMask(
      [splash_mask.CausalMask((s, s)) for _ in range(num_q_heads)])
  seg = None
  if kind == "mha_segments":
    ids = (jnp.arange(s) >= 100).astype(jnp.int32)
    seg = splash.SegmentIds(q=ids, kv=ids)
  if kind == "mqa":
    kernel = splash.make_splash_mqa_single_device(mask, block_sizes=SPLASH_BLOCKS)
    reference = splash.make_masked_mqa_reference(mask)
  else:
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=SPLASH_BLOCKS)
    reference = splash.make_masked_mha_reference(mask)
  return kernel, reference, (q, k, v), seg


SPLASH_KINDS = ["mha", "mha_segments", "gqa", "mqa"]


@pytest.mark.parametrize("kind", SPLASH_KINDS)
def test_splash_attention_forward_one_thread(kind):
  kernel, reference, (q, k, v), seg = _splash_case(kind)
  got = _compiled(lambda q, k, v: kernel(q, k, v, seg), q, k, v,
                  params=ONE_THREAD)
  _close(got, reference(q, k, v, seg), **F32_TOL)


@pytest.mark.parametrize("kind", SPLASH_KINDS)
def test_splash_attention_backward_one_thread(kind):
  kernel, reference, (q, k, v), seg = _splash_case(kind)
  w = jnp.cos(jnp.arange(SPLASH_HEAD_DIM, dtype=jnp.float32))
  grad = lambda attn: jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v, seg) * w),
                               argnums=(0, 1, 2))
  got = _compiled(grad(kernel), q, k, v, params=ONE_THREAD)
  want = jax.jit(grad(reference))(q, k, v)
  _close(got, want, **F32_TOL)


def test_splash_attention_forward_parallel_heads():
  """The kernel's own dimension semantics (heads "parallel") on two threads,
  20 calls: its accumulators are output blocks shared by the heads, so each
  thread gets a private copy, as each TPU core has its own VMEM."""
  kernel, reference, (q, k, v), seg = _splash_case("mha")
  want = np.asarray(reference(q, k, v, seg))
  with pallas_cpu.force_cpu_backend(pallas_cpu.CompilerParams(num_threads=2)):
    f = jax.jit(lambda q, k, v: kernel(q, k, v, seg))
    for _ in range(20):
      _close(f(q, k, v), want, **F32_TOL)


# -- paged_attention ----------------------------------------------------------

def _paged_case():
  batch, q_heads, kv_heads, head_dim = 4, 8, 2, 128
  page_size, pages_per_seq, total_pages = 16, 8, 48
  kq, kk, kv, kp = jax.random.split(jax.random.key(4), 4)
  q = _normal(kq, (batch, q_heads, head_dim))
  k_pages = _normal(kk, (kv_heads, total_pages, page_size, head_dim))
  v_pages = _normal(kv, (kv_heads, total_pages, page_size, head_dim))
  lengths = jnp.array([128, 37, 1, 90], jnp.int32)
  page_indices = jax.random.permutation(kp, total_pages)[
      :batch * pages_per_seq].reshape(batch, pages_per_seq).astype(jnp.int32)

  def reference(q, k_pages, v_pages, lengths, page_indices):
    # Gather each sequence's pages into one contiguous [B, KVH, T, D] cache.
    def gather(pages):
      x = pages[:, page_indices]  # [KVH, B, pages_per_seq, page_size, D]
      x = x.reshape(kv_heads, batch, pages_per_seq * page_size, head_dim)
      # The kernel converts K and V pages to bf16 (its dequantize step).
      return x.transpose(1, 0, 2, 3).astype(jnp.bfloat16).astype(jnp.float32)
    return paged_util.grouped_query_attention_reference(
        q, gather(k_pages), gather(v_pages), lengths)

  args = (q, k_pages, v_pages, lengths, page_indices)
  return args, reference(*args)


@pytest.mark.parametrize("inline_seq_dim,megacore_mode", [
    (True, None), (False, None), (True, "batch"), (True, "kv_head"),
    (False, "batch")])
def test_paged_attention(inline_seq_dim, megacore_mode):
  args, want = _paged_case()
  with pallas_cpu.force_cpu_backend():
    f = jax.jit(lambda *a: paged.paged_attention(
        *a, pages_per_compute_block=2, megacore_mode=megacore_mode,
        inline_seq_dim=inline_seq_dim))
    for _ in range(2):  # a second call must not see the first one's writes
      _close(f(*args), want, **F32_TOL)


def test_paged_attention_megacore_under_race_detection():
  """The race-detecting build splits a parallel dimension over
  CompilerParams(num_cores) cores, as TPU interpret mode does (default 1).
  A megacore kernel on one core waits for a prefetch its other core would
  have started: the deadlock error says so; on two cores it runs race-free
  (TPU interpret mode hangs on one core)."""
  args, want = _paged_case()
  call = lambda *a: paged.paged_attention(  # noqa: E731
      *a, pages_per_compute_block=2, megacore_mode="batch")
  pallas_cpu.reset_races()
  with pallas_cpu.force_cpu_backend(pallas_cpu.CompilerParams(
      detect_races=True, num_cores=2)):
    _close(jax.jit(call)(*args), want, **F32_TOL)
  assert not pallas_cpu.races_found()
  with pallas_cpu.force_cpu_backend(pallas_cpu.CompilerParams(
      detect_races=True)):
    with pytest.raises(Exception, match=r"deadlock.*megacore needs "
                       r"num_cores=2"):
      jax.block_until_ready(jax.jit(call)(*args))


# -- ragged_paged_attention -------------------------------------------------

def _ragged_case(dtype):
  q_heads, kv_heads, head_dim = 4, 2, 128
  page_size, pages_per_seq, total_pages, max_num_seqs = 16, 4, 32, 4
  q_lens, kv_lens = [5, 1, 10], [40, 17, 64]
  kq, kk, kp = jax.random.split(jax.random.key(5), 3)
  q = _normal(kq, (16, q_heads, head_dim), dtype)
  kv_pages = _normal(kk, (total_pages, page_size, 2 * kv_heads, head_dim), dtype)
  page_indices = jax.random.permutation(kp, total_pages)[
      :max_num_seqs * pages_per_seq].reshape(max_num_seqs, pages_per_seq)
  return (q, kv_pages, jnp.array(kv_lens + [0], jnp.int32),
          page_indices.astype(jnp.int32),
          jnp.array(np.cumsum([0, *q_lens, 0]), jnp.int32),
          jnp.array([len(q_lens)], jnp.int32))


@pytest.mark.parametrize("dtype", [
    pytest.param(jnp.float32, id="f32"),
    pytest.param(jnp.bfloat16, id="bf16"),
])
def test_ragged_paged_attention(dtype):
  args = _ragged_case(dtype)
  scale = 128 ** -0.5
  want = rpa.ref_ragged_paged_attention(*args, sm_scale=scale)
  tol = F32_TOL if dtype == jnp.float32 else BF16_TOL
  with pallas_cpu.force_cpu_backend():
    f = jax.jit(lambda *a: rpa.ragged_paged_attention(
        *a, sm_scale=scale, num_kv_pages_per_block=2, num_queries_per_block=8))
    for _ in range(2):
      _close(f(*args)[:want.shape[0]], want, **tol)


# -- megablox gmm / tgmm ----------------------------------------------------

GMM_M, GMM_K, GMM_N = 512, 256, 256
GMM_SIZES = jnp.array([100, 0, 250, 162], jnp.int32)  # one empty group
TILING = (128, 128, 128)


def _group_ids():
  return jnp.repeat(jnp.arange(GMM_SIZES.shape[0]), GMM_SIZES,
                    total_repeat_length=GMM_M)


def _gmm_reference(lhs, rhs):
  """out[i] = lhs[i] @ rhs[group of row i]."""
  return jnp.einsum("mk,mkn->mn", lhs, rhs[_group_ids()], precision="highest")


def _tgmm_reference(lhs_t, rhs):
  """out[g] = lhs_t[:, rows of g] @ rhs[rows of g]."""
  onehot = (_group_ids()[None] == jnp.arange(GMM_SIZES.shape[0])[:, None])
  return jnp.einsum("gm,km,mn->gkn", onehot.astype(jnp.float32), lhs_t, rhs,
                    precision="highest")


def _gmm_operands():
  k0, k1, k2 = jax.random.split(jax.random.key(6), 3)
  lhs = _normal(k0, (GMM_M, GMM_K))
  rhs = _normal(k1, (GMM_SIZES.shape[0], GMM_K, GMM_N))
  dout = _normal(k2, (GMM_M, GMM_N))
  return lhs, rhs, dout


def test_megablox_gmm():
  lhs, rhs, _ = _gmm_operands()
  got = _compiled(lambda a, b: megablox_ops.gmm(
      a, b, GMM_SIZES, jnp.float32, TILING), lhs, rhs)
  _close(got, _gmm_reference(lhs, rhs), **F32_TOL)


def test_megablox_tgmm():
  lhs, _, dout = _gmm_operands()
  got = _compiled(lambda a, b: megablox_gmm.tgmm(
      a, b, GMM_SIZES, preferred_element_type=jnp.float32, tiling=TILING),
      lhs.T, dout)
  _close(got, _tgmm_reference(lhs.T, dout), **F32_TOL)


def test_megablox_gmm_grad():
  """ops.gmm's custom VJP: gmm with the transposed rhs, and tgmm."""
  lhs, rhs, dout = _gmm_operands()
  grad = lambda f: jax.grad(lambda a, b: jnp.sum(f(a, b) * dout),
                            argnums=(0, 1))
  got = _compiled(grad(lambda a, b: megablox_ops.gmm(
      a, b, GMM_SIZES, jnp.float32, TILING)), lhs, rhs)
  _close(got, jax.jit(grad(_gmm_reference))(lhs, rhs), **F32_TOL)


# -- random -------------------------------------------------------------------

RANDOM_SHAPE = (512, 384)  # padded to 512x512 inside: 2x2 blocks of 256x256


def test_threefry_random_bits_match_jax_random():
  """The kernel fuses iota + threefry2x32 of jax.random's (partitionable)
  threefry; its bits are jax.random.bits' bit for bit."""
  assert jax.config.jax_threefry_partitionable
  key = jax.random.key(42)
  got = _compiled(lambda k: threefry.plthreefry_random_bits(k, 32, RANDOM_SHAPE),
                  jax.random.key_data(key))
  assert_same(got, jax.random.bits(key, RANDOM_SHAPE, jnp.uint32))


def test_threefry_prng_impl_through_jax_random():
  key_data = jax.random.key_data(jax.random.key(7))
  got = _compiled(lambda k: jax.random.bits(
      jax.random.wrap_key_data(k, impl="pallas_threefry2x32"), RANDOM_SHAPE),
      key_data)
  assert_same(got, jax.random.bits(jax.random.wrap_key_data(key_data),
                                    RANDOM_SHAPE, jnp.uint32))


@pytest.mark.parametrize("what", ["random_bits", "split", "fold_in"])
def test_philox_matches_interpret(what):
  """Philox has no jax.random counterpart: bit-exact against interpret=True."""
  fn = {"random_bits": lambda k: philox.philox_random_bits(k, 32, RANDOM_SHAPE),
        "split": lambda k: philox.philox_split(k, (3,)),
        "fold_in": lambda k: philox.philox_fold_in(k, jnp.uint32(5))}[what]
  key_data = jax.random.key_data(jax.random.key(11))
  got = _compiled(fn, key_data)
  with testing.interpret_mode():
    want = jax.jit(fn)(key_data)
  assert_same(got, want)


# -- the blockers above, cut down -------------------------------------------
# Each reproduces one former failure of a kernel above in a few lines.

def test_blocker_block_larger_than_array():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0
  x = jnp.arange(8, dtype=jnp.float32).reshape(8, 1)
  spec = pl.BlockSpec((8, 128), lambda i: (0, 0))
  got = _compiled(lambda x: pl.pallas_call(
      kernel, out_shape=x, grid=(1,), in_specs=[spec], out_specs=spec)(x), x)
  assert_same(got, x + 1.0)


def test_blocker_edge_block_padding_persists_across_revisits():
  def kernel(o_ref):
    @pl.when(pl.program_id(1) == 0)
    def _():
      o_ref[...] = jnp.ones_like(o_ref)

    @pl.when(pl.program_id(1) > 0)
    def _():
      o_ref[...] = o_ref[...] + jnp.max(o_ref[...], axis=1, keepdims=True)

  got = _compiled(lambda: pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 129), jnp.float32),
      grid=(2, 3), out_specs=pl.BlockSpec((8, 128), lambda j, k: (0, j)))())
  assert_same(got, jnp.full((8, 129), 4.0, jnp.float32))


def test_blocker_scalar_prefetch_writes_stay_in_the_kernel():
  def kernel(flag_ref, x_ref, o_ref):
    flag = flag_ref[0]
    flag_ref[0] = 0
    o_ref[...] = x_ref[...] + flag.astype(jnp.float32)

  def f(flag, x):
    spec = pl.BlockSpec((8, 128), lambda i, *_: (0, 0))
    return pl.pallas_call(kernel, out_shape=x, grid_spec=pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(1,), in_specs=[spec], out_specs=spec))(flag, x)

  flag, x = jnp.ones((1,), jnp.int32), jnp.zeros((8, 128), jnp.float32)
  assert_same(_compiled(f, flag, x), x + 1.0)
  assert_same(flag, jnp.ones((1,), jnp.int32))  # the caller's array is unchanged


def test_blocker_input_block_writes_stay_in_the_kernel():
  def kernel(x_ref, o_ref):
    x_ref[...] = x_ref[...] * 2.0
    o_ref[...] = x_ref[...]
  x = jnp.ones((8, 128), jnp.float32)
  assert_same(_compiled(lambda x: pl.pallas_call(kernel, out_shape=x)(x), x),
              x * 2.0)
  assert_same(x, jnp.ones((8, 128), jnp.float32))


def test_blocker_reshaped_ref():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref.reshape(16, 128)[0::2, :]
  x = jnp.arange(2 * 8 * 128, dtype=jnp.float32).reshape(2, 8, 128)
  got = _compiled(lambda x: pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32))(x), x)
  assert_same(got, x.reshape(16, 128)[0::2])


def test_blocker_dynamic_grid():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2.0

  def f(x, n):
    spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
    return pl.pallas_call(kernel, out_shape=x, grid=(n,), in_specs=[spec],
                          out_specs=spec)(x)

  x = jnp.ones((32, 128), jnp.float32)
  got = _compiled(f, x, jnp.int32(2))
  assert_same(got[:16], x[:16] * 2.0)  # the rest is never written
