"""input_output_aliases: what the kernel reads through an aliased input.

On TPU an input block is copied into VMEM when its block index changes, so
the kernel never reads back what it wrote through the aliased output; JAX's
interpreters read the input as it was at entry.  Compared with
``interpret=True``, TPU interpret mode (where they agree) and jnp."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, call

X = jnp.asarray(np.random.default_rng(0).standard_normal((32, 128)),
                jnp.float32)


def _all_backends(kernel, out_shape, *args, tpu_interpret=True, **kw):
  """The compiled result, after checking it against interpret=True (and TPU
  interpret mode unless told otherwise), exactly."""
  got = call(kernel, out_shape, *args, backend="cpu", **kw)
  assert_same(got, call(kernel, out_shape, *args, backend="interpret", **kw))
  if tpu_interpret:
    assert_same(got, call(kernel, out_shape, *args, backend="tpu-interpret",
                          interpret=pltpu.InterpretParams(), **kw))
  return got


def _scale(x_ref, o_ref):
  o_ref[...] = x_ref[...] * 2 + 1


def test_resident_whole_array_block_is_read_once():
  """A whole-array block kept over 4 steps: the body applies once (it
  applied 4 times when the input block was a view of the output)."""
  spec = pl.BlockSpec(X.shape, lambda i: (0, 0))
  got = _all_backends(_scale, jax.ShapeDtypeStruct(X.shape, X.dtype), X,
                      grid=(4,), in_specs=[spec], out_specs=spec,
                      input_output_aliases={0: 0})
  assert_same(got, X * 2 + 1)


def test_resident_block_with_dynamic_grid_and_scalar_prefetch():
  """The same through a traced grid size and scalar prefetch (the alias
  index counts the prefetch operand)."""
  def kernel(s_ref, x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2 + s_ref[0].astype(jnp.float32)

  def f(s, x, n, backend):
    gs = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(n,),
        in_specs=[pl.BlockSpec(X.shape, lambda i, s: (0, 0))],
        out_specs=pl.BlockSpec(X.shape, lambda i, s: (0, 0)))
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype),
        grid_spec=gs, input_output_aliases={1: 0}, backend=backend)(s, x)

  s = jnp.array([3, 0], jnp.int32)
  got = jax.jit(f, static_argnums=3)(s, X, jnp.int32(5), "cpu")
  want = jax.jit(f, static_argnums=3)(s, X, jnp.int32(5), "interpret")
  assert_same(got, want)
  assert_same(got, X * 2 + 3)


def test_kernel_writes_the_output_before_reading_the_input():
  """Within one step the input block still holds the input."""
  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.zeros_like(o_ref)
    o_ref[...] += x_ref[...] + 1

  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  got = _all_backends(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X,
                      grid=(4,), in_specs=[spec], out_specs=spec,
                      input_output_aliases={0: 0})
  assert_same(got, X + 1)


@pytest.mark.parametrize("semantics", [None, ("parallel", "arbitrary")])
def test_same_blocks_in_and_out(semantics):
  """Blocked in and out with one index map: each block read, then written
  (also on threads, and with a reduction axis keeping the block)."""
  acc = X
  y = jnp.asarray(np.random.default_rng(1).standard_normal((3, 32, 128)),
                  jnp.float32)

  def kernel(acc_ref, y_ref, o_ref):
    o_ref[...] = acc_ref[...] * 2 + y_ref[0]

  spec = pl.BlockSpec((8, 128), lambda i, k: (i, 0))
  kw = {}
  if semantics:
    kw["compiler_params"] = pltpu.CompilerParams(dimension_semantics=semantics)
  got = _all_backends(
      kernel, jax.ShapeDtypeStruct(acc.shape, acc.dtype), acc, y, grid=(4, 3),
      in_specs=[spec, pl.BlockSpec((1, 8, 128), lambda i, k: (k, i, 0))],
      out_specs=spec, input_output_aliases={0: 0}, **kw)
  assert_same(got, acc * 2 + y[2])


def test_same_blocks_with_edge_blocks():
  """(TPU interpret mode fails to lower aliased edge blocks.)"""
  x = X[:28]
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  got = _all_backends(_scale, jax.ShapeDtypeStruct(x.shape, x.dtype), x,
                      grid=(4,), in_specs=[spec], out_specs=spec,
                      input_output_aliases={0: 0}, tpu_interpret=False)
  assert_same(got, x * 2 + 1)


@pytest.mark.parametrize("semantics", [None, ("parallel",)])
def test_input_block_another_step_wrote(semantics):
  """Step i reads block i - 1, which step i - 1 wrote: the kernel reads the
  input as it was at entry, as interpret=True does (TPU interpret mode
  refetches the written block; on TPU this is a race between the prefetch
  and the write-back).  A parallel grid dimension runs on one thread."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1

  kw = {}
  if semantics:
    kw["compiler_params"] = pltpu.CompilerParams(dimension_semantics=semantics)
  got = _all_backends(
      kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, grid=(4,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (jnp.maximum(i - 1, 0), 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
      input_output_aliases={0: 0}, tpu_interpret=False, **kw)
  want = jnp.concatenate([X[0:8], X[0:8], X[8:16], X[16:24]]) + 1
  assert_same(got, want)


def test_input_blocks_in_reverse_order():
  """Block 3 - i in, block i out: the second half reads blocks the first
  half wrote."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2

  got = _all_backends(
      kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, grid=(4,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (3 - i, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
      input_output_aliases={0: 0}, tpu_interpret=False)
  assert_same(got, X.reshape(4, 8, 128)[::-1].reshape(X.shape) * 2)


def test_aliased_scalar_prefetch_is_read_as_at_entry():
  """An output aliasing a scalar prefetch operand: the prefetched scalars
  (SMEM, copied at entry on TPU) and the index maps do not see its writes."""
  def kernel(s_ref, x_ref, o_ref, so_ref):
    o_ref[...] = x_ref[...] + s_ref[0].astype(jnp.float32)
    so_ref[0] = s_ref[0] + 1

  gs = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1, grid=(4,),
      in_specs=[pl.BlockSpec((8, 128), lambda i, s: (s[0] + i, 0))],
      out_specs=[pl.BlockSpec((8, 128), lambda i, s: (i, 0)),
                 pl.BlockSpec(memory_space=pltpu.SMEM)])
  s = jnp.array([0, 7], jnp.int32)
  shapes = (jax.ShapeDtypeStruct(X.shape, X.dtype),
            jax.ShapeDtypeStruct(s.shape, s.dtype))
  got = call(kernel, shapes, s, X, grid_spec=gs, input_output_aliases={0: 1})
  want = call(kernel, shapes, s, X, grid_spec=gs, input_output_aliases={0: 1},
              backend="interpret")
  assert_same(got, want)
  assert_same(got, (X, jnp.array([1, 7], jnp.int32)))


def test_unread_aliased_input_keeps_the_rest():
  """The common use: the output aliases an input the kernel never reads, to
  keep the blocks it does not write (no copy is needed)."""
  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = y_ref[...] * 3

  got = _all_backends(
      kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X, X[:8], grid=(1,),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY),
                pl.BlockSpec((8, 128), lambda i: (0, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (2, 0)),
      input_output_aliases={0: 0})
  assert_same(got, X.at[16:24].set(X[:8] * 3))


def test_any_aliased_operands_share_one_buffer():
  """pl.ANY in and out: one buffer, as on TPU; a DMA reads back what an
  earlier one wrote (as in TPU interpret mode)."""
  def kernel(x_hbm, o_hbm, buf, sem):
    pltpu.sync_copy(x_hbm.at[pl.ds(0, 8)], buf)
    buf[...] = buf[...] + 1
    pltpu.sync_copy(buf, o_hbm.at[pl.ds(8, 8)])
    pltpu.async_copy(x_hbm.at[pl.ds(8, 8)], o_hbm.at[pl.ds(16, 8)], sem).wait()

  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  kw = dict(in_specs=[any_spec], out_specs=any_spec,
            scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                            pltpu.SemaphoreType.DMA],
            input_output_aliases={0: 0})
  shape = jax.ShapeDtypeStruct(X.shape, X.dtype)
  got = call(kernel, shape, X, **kw)
  assert_same(got, call(kernel, shape, X, backend="tpu-interpret",
                        interpret=pltpu.InterpretParams(), **kw))
  want = X.at[8:16].set(X[:8] + 1)
  assert_same(got, want.at[16:24].set(want[8:16]))


def test_any_aliased_operands_read_before_written():
  """Reads of the aliased ANY input before any write agree with both
  interpreters."""
  def kernel(x_hbm, o_hbm, buf):
    pltpu.sync_copy(x_hbm.at[pl.ds(8, 8)], buf)
    buf[...] = buf[...] * 2
    pltpu.sync_copy(buf, o_hbm.at[pl.ds(0, 8)])

  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  got = _all_backends(kernel, jax.ShapeDtypeStruct(X.shape, X.dtype), X,
                      in_specs=[any_spec], out_specs=any_spec,
                      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32)],
                      input_output_aliases={0: 0})
  assert_same(got, X.at[0:8].set(X[8:16] * 2))


def test_under_vmap():
  xs = jnp.stack([X, -X, X * 3])
  spec = pl.BlockSpec(X.shape, lambda i: (0, 0))

  def f(x):
    return pallas_cpu.pallas_call(
        _scale, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype), grid=(3,),
        in_specs=[spec], out_specs=spec, input_output_aliases={0: 0})(x)

  assert_same(jax.jit(jax.vmap(f))(xs), xs * 2 + 1)


def _ir(kernel, *args, **kw):
  def f(*a):
    return pallas_cpu.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(X.shape, X.dtype),
        backend="cpu", **kw)(*a)
  return pallas_cpu.lower(f, *args).as_text("kernel")


def _f32_buffers(ir_text):
  """The shapes of the f32 buffers the kernel allocates."""
  return re.findall(r"memref\.alloc\(\) .*: memref<([0-9x]+)xf32", ir_text)


def test_only_aliased_inputs_are_copied():
  """No copy without an alias; a block copy (not the whole array) when the
  blocks are the output's; the whole array once when they differ."""
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  plain = _ir(_scale, X, grid=(4,), in_specs=[spec], out_specs=spec)
  assert _f32_buffers(plain) == [] and "copy" not in plain
  same = _ir(_scale, X, grid=(4,), in_specs=[spec], out_specs=spec,
             input_output_aliases={0: 0})
  assert _f32_buffers(same) == ["8x128"]
  moved = _ir(_scale, X, grid=(4,), in_specs=[
      pl.BlockSpec((8, 128), lambda i: (3 - i, 0))], out_specs=spec,
      input_output_aliases={0: 0})
  assert _f32_buffers(moved) == ["32x128"]
