"""The compile worker (native.py, llvm_worker.py): opt's and llc's work in
one long-lived process.  Its code computes what the tools' code computes,
a worker that dies is replaced and the build goes on, and the stage dumps
it writes are the ones the tools wrote."""
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

import pallas_cpu
from pallas_cpu import compiler, native

from conftest import assert_same


def _fresh_kernel(c: float, rows: int = 16):
  """A kernel no cache has seen (its constant is new), and its reference."""
  def kernel(x_ref, o_ref):
    o_ref[...] = jnp.tanh(x_ref[...]) * c + x_ref[...]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((rows, 128)),
                  jnp.float32)
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  f = pallas_cpu.pallas_call(kernel, out_shape=x, grid=(rows // 8,),
                             in_specs=[spec], out_specs=spec)
  return f, x, jnp.tanh(x) * c + x


@pytest.fixture
def no_disk_cache(monkeypatch):
  monkeypatch.setenv("PALLAS_CPU_CACHE_DIR", "off")


def test_worker_and_tools_compute_the_same(no_disk_cache, monkeypatch):
  f, x, want = _fresh_kernel(1.2345)
  by_worker = jax.block_until_ready(f(x))
  assert native.worker._proc is not None  # the worker built it
  # The same kernel with the worker unavailable: the tools build it.
  monkeypatch.setattr(native, "worker", native.CompileWorker(
      script=os.devnull))
  monkeypatch.setattr(native.worker, "_broken", "disabled by the test")
  f2, _, _ = _fresh_kernel(1.2345, rows=24)  # other shapes: a new kernel
  by_tools = jax.block_until_ready(f2(jnp.concatenate([x, x[:8]])))
  np.testing.assert_allclose(by_worker, want, rtol=2e-6, atol=2e-6)
  assert_same(by_tools[:16], by_worker)


def test_a_killed_worker_is_replaced(no_disk_cache):
  f, x, want = _fresh_kernel(2.5)
  jax.block_until_ready(f(x))
  old = native.worker._proc
  old.kill()
  old.wait()
  f, x, want = _fresh_kernel(3.5)
  np.testing.assert_allclose(jax.block_until_ready(f(x)), want, rtol=2e-6,
                             atol=2e-6)
  assert native.worker._proc is not old and native.worker._proc.poll() is None


def test_a_worker_dying_on_a_kernel_does_not_take_the_process(
    no_disk_cache, monkeypatch, tmp_path):
  """An LLVM assertion aborts the worker mid-request (simulated: this
  worker aborts on its first request): the build goes on with the next
  -mcpu in a new worker and the kernel runs."""
  marker = tmp_path / "aborted-once"
  script = tmp_path / "dying_worker.py"
  real = os.path.join(os.path.dirname(native.__file__), "llvm_worker.py")
  script.write_text(textwrap.dedent(f"""
      import os, runpy, sys
      if not os.path.exists({str(marker)!r}):
        print('{{"ok": true, "ready": true}}', flush=True)
        sys.stdin.readline()
        open({str(marker)!r}, "w").close()
        os.abort()
      sys.argv = [{real!r}] + sys.argv[1:]
      runpy.run_path({real!r}, run_name="__main__")
  """))
  monkeypatch.setattr(native, "worker", native.CompileWorker(
      script=str(script)))
  f, x, want = _fresh_kernel(4.5)
  np.testing.assert_allclose(jax.block_until_ready(f(x)), want, rtol=2e-6,
                             atol=2e-6)
  assert marker.exists()
  native.worker.close()


def test_dumped_native_stages_come_from_the_worker(no_disk_cache, monkeypatch,
                                                   tmp_path):
  monkeypatch.setenv("PALLAS_CPU_DUMP_DIR", str(tmp_path))
  f, x, want = _fresh_kernel(5.5)
  np.testing.assert_allclose(jax.block_until_ready(f(x)), want, rtol=2e-6,
                             atol=2e-6)
  (d,) = tmp_path.iterdir()
  opt = (d / "6-opt.ll").read_text()
  asm = (d / "7-asm.s").read_text()
  assert "define" in opt and "pallas_cpu_entry" in opt
  assert "pallas_cpu_entry" in asm and ".text" in asm


def test_kernels_built_on_xla_threads_by_the_compile_hook(no_disk_cache,
                                                          monkeypatch):
  """With no background build, the first execution asks the runtime's
  compile hook, on an XLA thread Python did not start: the build runs
  there (its MLIR context must not outlive the call: it crashed once)."""
  from pallas_cpu import background
  monkeypatch.setattr(background, "submit", lambda fn: None)
  for c in (6.5, 7.5, 8.5):
    f, x, want = _fresh_kernel(c)
    np.testing.assert_allclose(jax.block_until_ready(f(x)), want, rtol=2e-6,
                               atol=2e-6)


def test_mlir_context_on_a_thread_python_did_not_start():
  """The compile hook runs on XLA's threads when XLA executes a program
  asynchronously: a C thread whose Python state lives only for the call.
  A context kept in a thread-local there was freed in that state's
  teardown and crashed the process (flash attention's backward pass)."""
  import ctypes
  from mlir import ir
  from pallas_cpu import mlir_context
  results = []

  @ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
  def body(_):
    for _ in range(3):
      with mlir_context.kernel_context():
        module = ir.Module.parse("func.func @f() { return }")
        results.append(str(module).count("func.func"))
    return None

  libc = ctypes.CDLL(None)
  tid = ctypes.c_ulong()
  assert libc.pthread_create(ctypes.byref(tid), None, body, None) == 0
  assert libc.pthread_join(tid, None) == 0
  assert results == [1, 1, 1]
