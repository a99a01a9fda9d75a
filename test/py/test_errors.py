"""Bad input gets a clear error: unsupported primitives (all of them, with
source lines), out-of-bounds block indices, invalid options."""
import re
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu

X = jnp.ones((16, 128), jnp.float32)
SPEC = pl.BlockSpec((8, 128), lambda i: (i, 0))


def test_unsupported_primitives_are_all_named_with_source_lines():
  def kernel(x_ref, o_ref):
    a = jnp.sort(x_ref[...], axis=0)
    b = jnp.fft.fft(x_ref[...]).real  # (Mosaic lowers neither)
    o_ref[...] = a + b

  with pytest.raises(NotImplementedError) as e:
    pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                           out_specs=SPEC)(X)
  msg = str(e.value)
  assert "fft" in msg and "sort" in msg and "kernel" in msg
  assert "test_errors.py" in msg  # the user's line, not ours


def test_out_of_bounds_block_index_is_reported_not_a_segfault():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=X, grid=(3,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],  # i=2 is past
      out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)))
  with pytest.raises(Exception, match=r"out of bounds: operand 0, dimension 0"):
    jax.block_until_ready(f(X))


def test_negative_block_index_is_reported():
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]

  f = pallas_cpu.pallas_call(
      kernel, out_shape=X, grid=(2,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (i - 1, 0))],
      out_specs=SPEC)
  with pytest.raises(Exception, match=r"window \[-8, 0\)"):
    jax.block_until_ready(f(X))


def test_bad_backend_and_params():
  with pytest.raises(ValueError, match="backend"):
    pallas_cpu.pallas_call(lambda x, o: None, out_shape=X, backend="gpu")
  with pytest.raises(ValueError, match="uninitialized_memory"):
    pallas_cpu.CompilerParams(uninitialized_memory="garbage")


# A rule that raises NotImplementedError for one of its parameter
# combinations (a non-decrementing semaphore wait, rules/dma.py).
def _unsupported_wait(sem):
  pl.semaphore_wait(sem, 1, decrement=False)  # a wait that does not decrement


SEM_SCRATCH = dict(scratch_shapes=[pltpu.SemaphoreType.REGULAR(())])


def test_error_inside_rule_names_primitive_and_line():
  def kernel(x_ref, o_ref, sem):
    _unsupported_wait(sem)
    o_ref[...] = x_ref[...]

  with pytest.raises(NotImplementedError) as e:
    pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                           out_specs=SPEC, **SEM_SCRATCH)(X)
  assert "test_errors.py" in str(e.value)


def test_error_in_a_nested_jaxpr_is_reported_once():
  """A rule failing two levels down (cond inside jit) is wrapped once, at
  the innermost equation; re-raising it must not chain it to itself (JAX's
  error handling would then loop forever)."""
  @jax.jit
  def helper(ref, sem):
    def wait():
      _unsupported_wait(sem)
      return ref[...]
    return jax.lax.cond(True, wait, lambda: ref[...])

  def kernel(x_ref, o_ref, sem):
    o_ref[...] = helper(x_ref, sem)

  with pytest.raises(NotImplementedError) as e:
    pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                           out_specs=SPEC, **SEM_SCRATCH)(X)
  assert e.value.__cause__ is not e.value
  assert str(e.value).count("while lowering primitive") == 1


def test_a_rule_error_is_a_lowering_error_carrying_the_user_frame():
  """The walker wraps a rule's exception once, keeping its kind (still a
  NotImplementedError), naming the primitive and the user's line, with the
  rule's exception as the cause and the user's traceback attached below."""
  def kernel(x_ref, o_ref, sem):
    _unsupported_wait(sem)
    o_ref[...] = x_ref[...]

  with pytest.raises(pallas_cpu.UnsupportedError) as e:
    pallas_cpu.pallas_call(kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                           out_specs=SPEC, **SEM_SCRATCH)(X)
  err = e.value
  assert isinstance(err, pallas_cpu.LoweringError)
  assert isinstance(err, NotImplementedError)
  assert err.primitive == "semaphore_wait"
  assert "test_errors.py" in err.source_line
  frame = err.user_frame
  assert frame.file_name == __file__ and frame.function_name.endswith(
      "_unsupported_wait")
  assert "a wait that does not decrement" in open(__file__).read().splitlines()[
      frame.start_line - 1]
  # The cause chain: the user's traceback (JAX's marker), then the rule's
  # own exception -- a plain NotImplementedError raised by a rule module.
  chain = []
  c = err.__cause__
  while c is not None:
    chain.append(c)
    c = c.__cause__
  user = [c for c in chain if type(c).__name__ ==
          "JaxStackTraceBeforeTransformation"]
  assert user and any(f.f_code.co_filename == __file__
                      for f, _ in traceback.walk_tb(user[0].__traceback__))
  assert type(chain[-1]) is NotImplementedError
  assert "rules" in chain[-1].__traceback__.tb_next.tb_frame.f_code.co_filename


def test_a_static_index_error_keeps_its_kind():
  def kernel(x_ref, o_ref):
    o_ref[0] = x_ref[9]

  x = jnp.ones((8, 128), jnp.float32)
  with pytest.raises(IndexError) as e:
    pallas_cpu.lower(lambda x: pallas_cpu.pallas_call(
        kernel, out_shape=x, backend="cpu")(x), x)
  assert isinstance(e.value, pallas_cpu.LoweringError)
  assert e.value.primitive == "get"


def test_zero_size_block_operand_is_a_clear_error():
  """(interpret=True itself fails here with a ZeroDivisionError.)"""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1.0
  x = jnp.zeros((16, 0), jnp.float32)
  with pytest.raises(NotImplementedError, match=r"zero-size shape \(16, 0\)"):
    pallas_cpu.pallas_call(kernel, out_shape=x, backend="cpu")(x)


# -- static out-of-bounds ref windows ----------------------------------------------
# A static window that leaves its ref is an IndexError at lowering time naming
# the ref, the window, the shape and the source line (it was a raw MLIR
# verifier dump); JAX itself rejects Python-int slices it can check
# (ValueError), the rest -- constant jnp indices, integer indices, negative
# indices, views of views -- reach us.  Dynamic indices are still reported
# at run time.
def _lower_error(kernel, **kw):
  x = jnp.ones((8, 128), jnp.float32)
  kw.setdefault("out_shape", x)
  with pytest.raises(IndexError) as e:
    pallas_cpu.lower(lambda x: pallas_cpu.pallas_call(
        kernel, backend="cpu", **kw)(x), x)
  return str(e.value)


def _check_message(msg, window, ref, dim_text):
  assert f"static {window} out of bounds" in msg, msg
  assert ref in msg and dim_text in msg, msg
  assert "test_errors.py" in msg, msg  # the kernel's source line
  assert "memref.subview" not in msg and "Verification" not in msg, msg


def test_static_slice_out_of_bounds_on_get():
  def kernel(x_ref, o_ref):
    o_ref[pl.ds(0, 4), :] = x_ref[pl.ds(jnp.int32(6), 4), :]
  _check_message(_lower_error(kernel), "slice",
                 "[pl.ds(6, 4), :] on input 0 'x_ref' of shape (8, 128)",
                 "dimension 0: [6, 10) is not inside [0, 8)")


def test_static_integer_index_out_of_bounds():
  def kernel(x_ref, o_ref):
    o_ref[0] = x_ref[9]
  _check_message(_lower_error(kernel), "index", "[9, :] on input 0 'x_ref'",
                 "[9, 10) is not inside [0, 8)")


def test_negative_static_index_does_not_wrap():
  """interpret=True wraps x_ref[-1] to the last row, Mosaic does not."""
  def kernel(x_ref, o_ref):
    o_ref[0] = x_ref[-1]
  msg = _lower_error(kernel)
  _check_message(msg, "index", "[-1, :] on input 0 'x_ref'",
                 "[-1, 0) is not inside [0, 8)")
  assert "negative indices do not count from the end" in msg


def test_static_strided_slice_past_the_end():
  def kernel(x_ref, o_ref):
    o_ref[pl.ds(0, 4), :] = x_ref[pl.ds(jnp.int32(2), 4, stride=2), :]
  _check_message(_lower_error(kernel), "slice",
                 "[pl.ds(2, 4, stride=2), :] on input 0 'x_ref'",
                 "[2, 9) is not inside [0, 8)")


def test_static_slice_out_of_bounds_on_swap_of_an_output():
  def kernel(x_ref, o_ref):
    o_ref[pl.ds(jnp.int32(6), 4), :] = x_ref[pl.ds(0, 4), :]
  _check_message(_lower_error(kernel), "slice",
                 "[pl.ds(6, 4), :] on output 0 'o_ref' of shape (8, 128)",
                 "[6, 10) is not inside [0, 8)")


def test_static_slice_out_of_bounds_through_an_at_chain():
  def kernel(x_ref, o_ref):
    o_ref[0] = x_ref.at[pl.ds(4, 4)][jnp.int32(5), :]
  _check_message(_lower_error(kernel), "index",
                 "[5, :] on a view of shape (4, 128) of input 0 'x_ref' of "
                 "shape (8, 128)", "[5, 6) is not inside [0, 4)")


def test_static_dma_window_out_of_bounds():
  from jax.experimental.pallas import tpu as pltpu

  def kernel(x_ref, o_ref):
    def body(sem):
      pltpu.async_copy(x_ref.at[pl.ds(jnp.int32(6), 4)],
                       o_ref.at[pl.ds(0, 4)], sem).wait()
    pl.run_scoped(body, pltpu.SemaphoreType.DMA)
  msg = _lower_error(kernel)
  _check_message(msg, "slice", "on input 0 'x_ref'", "[6, 10)")
  assert "dma_start" in msg


def test_static_masked_store_out_of_bounds():
  from jax.experimental.pallas import tpu as pltpu

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...]
    pltpu.store(o_ref.at[pl.ds(jnp.int32(6), 4)], x_ref[pl.ds(0, 4)],
                mask=jnp.ones((4, 128), bool))
  _check_message(_lower_error(kernel), "slice", "on output 0 'o_ref'",
                 "[6, 10) is not inside [0, 8)")


def test_static_index_out_of_bounds_on_scratch_and_semaphores():
  from jax.experimental.pallas import tpu as pltpu

  def kernel(x_ref, o_ref, acc_ref, sems):
    acc_ref[...] = x_ref[...]
    o_ref[0] = acc_ref[jnp.int32(8)]
  _check_message(_lower_error(kernel, scratch_shapes=[
      pltpu.VMEM((8, 128), jnp.float32), pltpu.SemaphoreType.REGULAR((2,))]),
      "index", "on scratch operand 0 'acc_ref'", "[8, 9)")

  def kernel(x_ref, o_ref, acc_ref, sems):
    pl.semaphore_signal(sems.at[jnp.int32(2)], 1)
    o_ref[...] = x_ref[...]
  _check_message(_lower_error(kernel, scratch_shapes=[
      pltpu.VMEM((8, 128), jnp.float32), pltpu.SemaphoreType.REGULAR((2,))]),
      "index", "[2] on scratch operand 1 'sems' of shape (2,)", "[2, 3)")


def test_static_index_out_of_bounds_in_a_branch_and_a_bitcast():
  def kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[0] = x_ref.bitcast(jnp.int32)[9].astype(jnp.float32)
  _check_message(_lower_error(kernel, grid=(1,)), "index",
                 "on a view of shape (8, 128) of input 0 'x_ref'", "[9, 10)")

  def kernel(x_ref, o_ref):
    o_ref[0, :64] = x_ref.bitcast(jnp.bfloat16)[17, :64].astype(jnp.float32)
  _check_message(_lower_error(kernel), "index",
                 "on a view of shape (16, 128) of input 0 'x_ref'",
                 "[17, 18) is not inside [0, 16)")


def test_dynamic_index_out_of_bounds_is_still_a_run_time_error():
  def kernel(x_ref, o_ref):
    o_ref[pl.ds(0, 4), :] = x_ref[pl.ds(pl.program_id(0) + 6, 4), :]
  x = jnp.ones((8, 128), jnp.float32)
  f = pallas_cpu.pallas_call(kernel, out_shape=x, grid=(1,), backend="cpu")
  with pytest.raises(Exception, match=r"ref index out of bounds"):
    jax.block_until_ready(f(x))


def test_constant_block_index_of_an_edge_block():
  """A constant index map selecting the partial last block (or one past
  the array) is a padded copy (a run-time report), not a static window past
  the end."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] + 1

  x = jnp.ones((20, 128), jnp.float32)
  out = jax.ShapeDtypeStruct((8, 128), jnp.float32)
  kw = dict(grid=(1,), out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)))
  got = pallas_cpu.pallas_call(
      kernel, out_shape=out, backend="cpu",
      in_specs=[pl.BlockSpec((8, 128), lambda i: (2, 0))], **kw)(x)
  assert (got[:4] == 2).all()
  f = pallas_cpu.pallas_call(
      kernel, out_shape=out, backend="cpu",
      in_specs=[pl.BlockSpec((8, 128), lambda i: (5, 0))], **kw)
  with pytest.raises(Exception, match=r"window \[40, 48\)"):
    jax.block_until_ready(f(x))


# -- interpret mode's wording -----------------------------------------------------
# Errors interpret mode also raises start with its own words, so a test suite
# matching on them (pytest.raises(match=...)) passes compiled too; our detail
# follows.  The messages come from TPU interpret mode
# (jax/_src/pallas/mosaic/interpret/interpret_pallas_call.py): interpret=True
# raises none of these -- it clamps out-of-bounds block indices and dynamic
# ref indices (dynamic_slice) and writes revisited blocks again silently --
# so the kernels below run without error there (checked by
# test_interpret_true_raises_none_of_them).
def _raises_like_tpu_interpret(kernel, out_shape, *args, match, **kw):
  """The kernel fails with a message matching ``match`` under TPU interpret
  mode and compiled; returns the compiled message."""
  messages = {}
  for backend in ("tpu-interpret", "cpu"):
    f = pallas_cpu.pallas_call(kernel, out_shape=out_shape, backend=backend,
                               **kw)
    with pytest.raises(Exception, match=match) as e:
      jax.block_until_ready(jax.jit(f)(*args))
    messages[backend] = str(e.value)
  return messages["cpu"]


def _copy(x_ref, o_ref):
  o_ref[...] = x_ref[...]


def _plus_step(x_ref, o_ref):
  o_ref[...] = x_ref[...] + pl.program_id(0).astype(jnp.float32)


WORDING_CASES = {
    # name: (kernel, out_shape, kwargs, interpret mode's regex, our detail)
    "input_block_index": (
        _copy, X, dict(grid=(3,), in_specs=[SPEC],
                       out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0))),
        r'Out-of-bounds block index \(2, 0\) for input "x_ref" in iteration '
        r'\(2,\)',
        r"operand 0, dimension 0: window \[16, 24\) does not start inside "
        r"\[0, 16\) \(input 0, at grid point \(2\)\)"),
    "negative_input_block_index": (
        _copy, X, dict(grid=(2,),
                       in_specs=[pl.BlockSpec((8, 128), lambda i: (i - 1, 0))],
                       out_specs=SPEC),
        r'Out-of-bounds block index \(-1, 0\) for input "x_ref" in iteration '
        r'\(0,\)', r"window \[-8, 0\)"),
    "output_block_index": (
        _copy, X, dict(grid=(3,),
                       in_specs=[pl.BlockSpec((8, 128), lambda i: (0, 0))],
                       out_specs=SPEC),
        r'Out-of-bounds block index \(2, 0\) for output "o_ref" in iteration '
        r'\(2,\)', r"\(output 0, at grid point \(2\)\)"),
    "revisited_output_block": (
        _plus_step, X, dict(grid=(3,),
                            in_specs=[pl.BlockSpec((8, 128), lambda i: (0, 0))],
                            out_specs=pl.BlockSpec((8, 128),
                                                   lambda i: (i % 2, 0))),
        r"Revisited block \(slice\(0, 8, 1\), slice\(0, 128, 1\)\) of output 0 "
        r"in iteration \(2,\)",
        r"first visited at grid point \(0\) and left in between"),
    "revisited_output_block_2d_grid": (
        _plus_step, X, dict(grid=(2, 2),
                            in_specs=[pl.BlockSpec((8, 128),
                                                   lambda i, j: (0, 0))],
                            out_specs=pl.BlockSpec((8, 128),
                                                   lambda i, j: (j, 0))),
        r"Revisited block \(slice\(0, 8, 1\), slice\(0, 128, 1\)\) of output 0 "
        r"in iteration \(1, 0\)", r"at grid point \(1, 0\)"),
}


@pytest.mark.parametrize("case", list(WORDING_CASES))
def test_grid_errors_keep_tpu_interpret_modes_words(case):
  kernel, out_shape, kw, match, detail = WORDING_CASES[case]
  msg = _raises_like_tpu_interpret(kernel, out_shape, X, match=match, **kw)
  assert re.search(detail, msg), msg


def _read_past_the_end(x_ref, o_ref):
  o_ref[...] = x_ref[pl.ds(pl.program_id(0) + 6, 4), :]


def _dma_read_past_the_end(x_hbm, o_ref, buf, sem):
  pltpu.async_copy(x_hbm.at[pl.ds(pl.program_id(0) * 60, 8)], buf, sem).wait()
  o_ref[...] = buf[...]


def _dma_write_past_the_end(x_ref, o_hbm, sem):
  pltpu.async_copy(x_ref, o_hbm.at[pl.ds(pl.program_id(0) * 60, 8)],
                   sem).wait()


def test_out_of_bounds_ref_read_keeps_tpu_interpret_modes_words():
  msg = _raises_like_tpu_interpret(
      _read_past_the_end, jax.ShapeDtypeStruct((4, 128), jnp.float32),
      X[:8], grid=(1,), match=r"Out-of-bounds read of")
  assert ("Out-of-bounds read of input 0 'x_ref' of shape (8, 128) in "
          "iteration (0,) at ") in msg, msg
  assert "test_errors.py" in msg, msg
  assert re.search(r"dimension 0: slice \[6, 10\) is not inside \[0, 8\)", msg)


def test_out_of_bounds_dma_windows_keep_tpu_interpret_modes_words():
  msg = _raises_like_tpu_interpret(
      _dma_read_past_the_end, jax.ShapeDtypeStruct((8, 128), jnp.float32),
      jnp.ones((64, 128), jnp.float32), grid=(2,),
      in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)),
      scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32),
                      pltpu.SemaphoreType.DMA],
      match=r"Out-of-bounds read of")
  assert "Out-of-bounds read of input 0 'x_hbm' of shape (64, 128)" in msg
  assert re.search(r"iteration \(1,\) .*slice \[60, 68\) is not inside "
                   r"\[0, 64\)", msg), msg
  msg = _raises_like_tpu_interpret(
      _dma_write_past_the_end, jax.ShapeDtypeStruct((64, 128), jnp.float32),
      jnp.ones((8, 128), jnp.float32), grid=(2,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (0, 0))],
      out_specs=pl.BlockSpec(memory_space=pl.ANY),
      scratch_shapes=[pltpu.SemaphoreType.DMA],
      match=r"Out-of-bounds write of")
  assert "Out-of-bounds write of output 0 'o_hbm' of shape (64, 128)" in msg


def test_out_of_bounds_ref_store_follows_tpu_interpret_modes_source():
  """A store past the end: TPU interpret mode means to raise 'Out-of-bounds
  swap of ...' (interpret_pallas_call.swap) but fails an assertion first in
  jax 0.10.2 (shared_memory.swap_buffer_content); we use the words it
  means."""
  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.zeros_like(o_ref)
    o_ref[pl.ds(pl.program_id(0) + 6, 4), :] = x_ref[...]
  out = jax.ShapeDtypeStruct((8, 128), jnp.float32)
  x = jnp.ones((4, 128), jnp.float32)
  with pytest.raises(Exception):
    jax.block_until_ready(pallas_cpu.pallas_call(
        kernel, out_shape=out, grid=(1,), backend="tpu-interpret")(x))
  with pytest.raises(Exception, match=r"Out-of-bounds swap of output 0 'o_ref'"
                     r" of shape \(8, 128\) in iteration \(0,\)"):
    jax.block_until_ready(pallas_cpu.pallas_call(
        kernel, out_shape=out, grid=(1,), backend="cpu")(x))


def test_interpret_true_raises_none_of_them():
  """interpret=True clamps block and ref indices and rewrites revisited
  blocks without a word: the same kernels run there (its results are its
  clamped ones, compared with a clamped numpy reference)."""
  x = jnp.arange(16 * 128, dtype=jnp.float32).reshape(16, 128)
  kernel, out_shape, kw, _, _ = WORDING_CASES["input_block_index"]
  got = pallas_cpu.pallas_call(kernel, out_shape=out_shape,
                               backend="interpret", **kw)(x)
  # Steps 0..2 write block 0 from input blocks 0, 1 and (clamped) 1.
  np.testing.assert_array_equal(got[:8], x[8:])
  kernel, out_shape, kw, _, _ = WORDING_CASES["revisited_output_block"]
  got = pallas_cpu.pallas_call(kernel, out_shape=out_shape,
                               backend="interpret", **kw)(x)
  np.testing.assert_array_equal(got[:8], x[:8] + 2)
  np.testing.assert_array_equal(got[8:], x[:8] + 1)
  got = pallas_cpu.pallas_call(
      _read_past_the_end, out_shape=jax.ShapeDtypeStruct((4, 128),
                                                         jnp.float32),
      grid=(1,), backend="interpret")(x[:8])
  np.testing.assert_array_equal(got, x[4:8])  # the start clamped to 4
