"""The TPU check of masked loads and stores whose window crosses the ref's
end (issue #14 items 7 and 9): interpret mode runs them, a TPU would reach
past the ref.  Only a traced start can cross, so the check is at run time:
tpu_checks="warn" warns once per access site, "error" fails the call,
"off" says nothing -- each still against interpret mode's results."""
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax._src.pallas import primitives as pallas_primitives
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

F32 = jax.ShapeDtypeStruct
X = jnp.asarray(np.random.default_rng(3).standard_normal((16, 128)),
                jnp.float32)
CROSSES = "its window crosses the ref's end"


def _store_kernel(s_ref, x_ref, o_ref):
  """Rows [s, s + 16) of o_ref get 2 * x, masked to the rows inside
  (Mosaic lowers this store: the error mode's message is the run-time
  check's, not the Mosaic lowering's)."""
  s = pl.multiple_of(s_ref[0], 8)
  o_ref[...] = jnp.zeros_like(o_ref)
  m = (s + lax.broadcasted_iota(jnp.int32, (16, 128), 0)) < 16
  pltpu.store(o_ref.at[pl.ds(s, 16)], x_ref[...] * 2, mask=m)


def _store_call(mode, backend="cpu"):
  params = (pallas_cpu.CompilerParams(tpu_checks=mode) if backend == "cpu"
            else None)
  return pallas_cpu.pallas_call(
      _store_kernel, out_shape=F32((16, 128), jnp.float32), backend=backend,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(1,),
          in_specs=[pl.BlockSpec((16, 128), lambda i, s: (0, 0))],
          out_specs=pl.BlockSpec((16, 128), lambda i, s: (0, 0))),
      compiler_params=params)


def _crossing_warnings(record):
  return [w for w in record if issubclass(w.category,
                                          pallas_cpu.TpuCompatibilityWarning)
          and CROSSES in str(w.message)]


def _run_recording(fn, *calls):
  """Runs fn(*args) for each args; (results, the crossing warnings)."""
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    outs = [jax.block_until_ready(fn(*args)) for args in calls]
  return outs, _crossing_warnings(record)


def _s(v):
  return jnp.asarray([v], jnp.int32)


def test_warn_mode_warns_once_per_site_and_keeps_interpret_results():
  f = _store_call("warn")
  ref = _store_call(None, backend="interpret")
  calls = [(_s(8), X), (_s(0), X), (_s(8), X), (_s(8), X)]
  outs, found = _run_recording(f, *calls)
  for out, args in zip(outs, calls):
    assert_same(out, ref(*args))
  assert len(found) == 1, [str(w.message) for w in found]
  msg = str(found[0].message)
  assert msg.startswith("pallas_cpu kernel '_store_kernel': masked store to "
                        "output 0 'o_ref' of shape (16, 128) in iteration "
                        "(0,) at "), msg
  assert "test_crossing_checks.py" in msg   # the kernel's source line
  assert "dimension 0: window [8, 24) is not inside [0, 16)" in msg
  assert "on a TPU this store's window would reach past the ref's end" in msg
  assert "Mosaic does not bounds-check dynamic windows" in msg
  assert "tpu_checks='warn'" in msg
  # The same site in a fresh pallas_call: already reported in this process.
  _, again = _run_recording(_store_call("warn"), (_s(8), X))
  assert again == []


def test_error_mode_fails_the_call_that_crosses():
  f = _store_call("error")
  ref = _store_call(None, backend="interpret")
  assert_same(f(_s(0), X), ref(_s(0), X))   # inside: runs
  with pytest.raises(Exception, match=re.escape(
      "masked store to output 0 'o_ref' of shape (16, 128) in iteration "
      "(0,)") + r".*" + re.escape(
          "dimension 0: window [8, 24) is not inside [0, 16)") + r".*"
      + re.escape("reach past the ref's end") + r".*"
      + re.escape("(tpu_checks='error'")):
    jax.block_until_ready(f(_s(8), X))


def test_off_mode_is_silent_and_the_modes_build_different_kernels():
  outs, found = _run_recording(_store_call("off"), (_s(8), X))
  assert_same(outs[0], _store_call(None, backend="interpret")(_s(8), X))
  assert found == []

  def kernel_id(mode):
    text = jax.jit(_store_call(mode)).lower(_s(8), X).as_text()
    return re.search(r'kernel_id = "([^"]*)"', text).group(1)
  assert len({kernel_id(m) for m in ("warn", "error", "off")}) == 3


def test_environment_knob_selects_the_mode(monkeypatch):
  """PALLAS_CPU_TPU_CHECKS when the kernel's CompilerParams leave
  tpu_checks unset."""
  monkeypatch.setenv("PALLAS_CPU_TPU_CHECKS", "error")
  f = _store_call(None)
  with pytest.raises(Exception, match=re.escape("(tpu_checks='error'")):
    jax.block_until_ready(f(_s(8), X))


def test_masked_load_crossing_warns_with_its_own_site():
  """A 1-D tail walked in windows of 8 (the last one crosses): the load
  and the store each warn once, naming their ref and line."""
  n = 21
  x = jnp.arange(n, dtype=jnp.float32) + 0.5

  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.full_like(o_ref, -1.0)

    @pl.loop(0, 3)
    def _(k):
      s = k * 8
      m = s + jnp.arange(8) < n
      v = pallas_primitives.load(x_ref, (pl.ds(s, 8),), mask=m, other=9.0)
      pallas_primitives.store(o_ref, (pl.ds(s, 8),), v * 2, mask=m)

  def call(backend):
    return pallas_cpu.pallas_call(
        kernel, out_shape=F32((n,), jnp.float32), backend=backend,
        compiler_params=(pallas_cpu.CompilerParams(tpu_checks="warn")
                         if backend == "cpu" else None))
  (out, _), found = _run_recording(call("cpu"), (x,), (x,))
  assert_same(out, call("interpret")(x))
  assert_same(out, x * 2)
  msgs = sorted(str(w.message) for w in found)
  assert len(msgs) == 2, msgs
  assert "masked load of input 0 'x_ref' of shape (21,)" in msgs[0]
  assert "on a TPU this load would read past the ref's end" in msgs[0]
  assert "masked store to output 0 'o_ref' of shape (21,)" in msgs[1]
  for m in msgs:
    assert "window [16, 24) is not inside [0, 21)" in m


def test_masked_windows_that_stay_inside_never_warn():
  """Partial masks on windows inside the ref (one ending at its end): no
  report, interpret mode's results.  (Under "error", Mosaic's lowering
  already refuses masked loads; the store is checked there above.)"""
  x = jnp.arange(40, dtype=jnp.float32)

  def kernel(s_ref, x_ref, o_ref):
    s = s_ref[0]
    m = jnp.arange(8) % 3 != 0
    o_ref[...] = jnp.zeros_like(o_ref)
    v = pallas_primitives.load(x_ref, (pl.ds(s, 8),), mask=m, other=-1.0)
    pallas_primitives.store(o_ref, (pl.ds(s, 8),), v + 1, mask=m)

  def call(backend):
    return pallas_cpu.pallas_call(
        kernel, out_shape=F32((40,), jnp.float32), backend=backend,
        in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM),
                  pl.BlockSpec((40,), lambda: (0,))],
        compiler_params=(pallas_cpu.CompilerParams(tpu_checks="warn")
                         if backend == "cpu" else None))
  calls = [(_s(s), x) for s in (0, 5, 31, 32)]
  outs, found = _run_recording(call("cpu"), *calls)
  assert found == []
  ref = call("interpret")
  for out, args in zip(outs, calls):
    assert_same(out, ref(*args))
