"""force_cpu_backend, PALLAS_CPU_FORCE, backends, staged IR, caching."""
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from pallas_cpu import compiler
from conftest import assert_same

X = jnp.asarray(np.random.default_rng(0).standard_normal((16, 128)),
                jnp.float32)
SPEC = pl.BlockSpec((8, 128), lambda i: (i, 0))


def _kernel(x_ref, o_ref):
  o_ref[...] = jnp.exp(x_ref[...]) * 2


def _tpu_style(x, interpret=False):
  """An unmodified pl.pallas_call, as TPU code writes it."""
  return pl.pallas_call(_kernel, out_shape=jax.ShapeDtypeStruct(x.shape,
                                                                x.dtype),
                        grid=(2,), in_specs=[SPEC], out_specs=SPEC,
                        interpret=interpret)(x)


def _hlo(fn, *args):
  return jax.jit(fn).lower(*args).as_text()


def test_force_cpu_backend_routes_unmodified_calls():
  with pallas_cpu.force_cpu_backend():
    hlo = _hlo(_tpu_style, X)
    out = jax.jit(_tpu_style)(X)
  assert "pallas_cpu_call" in hlo
  assert_same(out, jnp.exp(X) * 2, exact=False, rtol=4e-6)
  # Outside the context the same function runs JAX's interpreter again.
  assert "pallas_cpu_call" not in _hlo(lambda x: _tpu_style(x, True), X)


def test_force_cpu_backend_overrides_interpret_argument():
  with pallas_cpu.force_cpu_backend():
    assert "pallas_cpu_call" in _hlo(lambda x: _tpu_style(x, True), X)


def test_env_knob_forces_backend():
  code = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from jax.experimental import pallas as pl
    import pallas_cpu
    def k(x_ref, o_ref):
      o_ref[...] = x_ref[...] + 1
    f = pl.pallas_call(k, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
                       interpret=True)
    x = jnp.ones((8, 128), jnp.float32)
    print("pallas_cpu_call" in jax.jit(f).lower(x).as_text(), float(f(x).sum()))
  """)
  env = dict(os.environ, PALLAS_CPU_FORCE="1", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out == ["True", "2048.0"]


@pytest.mark.parametrize("backend", ["interpret", "tpu-interpret"])
def test_reference_backends(backend):
  f = pallas_cpu.pallas_call(_kernel, out_shape=X, grid=(2,), in_specs=[SPEC],
                             out_specs=SPEC, backend=backend)
  assert "pallas_cpu_call" not in _hlo(f, X)
  assert_same(f(X), jnp.exp(X) * 2, exact=False, rtol=4e-6)


@pytest.mark.parametrize("backend", ["interpret", "tpu-interpret"])
def test_reference_backends_hold_inside_force_cpu_backend(backend):
  """A backend the call names itself is not overridden by the context."""
  with pallas_cpu.force_cpu_backend():
    f = pallas_cpu.pallas_call(_kernel, out_shape=X, grid=(2,),
                               in_specs=[SPEC], out_specs=SPEC,
                               backend=backend)
    assert "pallas_cpu_call" not in _hlo(f, X)
    assert "pallas_cpu_call" in _hlo(_tpu_style, X)


def test_explicit_compiler_params_hold_inside_force_cpu_backend():
  """The call's own CompilerParams win over force_cpu_backend's; a call
  without them takes the context's."""
  def read_scratch(x_ref, o_ref, scratch):
    del x_ref
    o_ref[...] = scratch[...]

  def make(**kw):
    return pallas_cpu.pallas_call(
        read_scratch, out_shape=X, in_specs=[SPEC], out_specs=SPEC,
        grid=(2,), scratch_shapes=[pltpu.VMEM((8, 128), jnp.float32)], **kw)
  zero = pallas_cpu.CompilerParams(uninitialized_memory="zero")
  with pallas_cpu.force_cpu_backend():
    assert_same(make(compiler_params=zero)(X), jnp.zeros_like(X))
    assert np.isnan(np.asarray(make()(X))).all()
  with pallas_cpu.force_cpu_backend(zero):
    assert_same(make()(X), jnp.zeros_like(X))


def _call(x):
  return pallas_cpu.pallas_call(_kernel, out_shape=x, grid=(2,),
                                in_specs=[SPEC], out_specs=SPEC)(x)


def test_every_stage_prints_and_no_raw_pointer_in_hlo():
  lowered = pallas_cpu.lower(_call, X)
  for stage in compiler.STAGE_NAMES[:-1]:
    assert "pallas_cpu_entry" in lowered.as_text(stage), stage
  assert '"vmem"' in lowered.as_text("kernel")
  assert '"vmem"' not in lowered.as_text("flat")
  assert "linalg." not in lowered.as_text("loops")
  assert "llvm.func" in lowered.as_text("llvm")
  hlo = _hlo(_call, X)
  assert "kernel_id" in hlo and "kernel_ir" in hlo
  # No host addresses anywhere (user-space pointers look like 0x7fxxxxxxxxxx;
  # NaN constants such as 0x7FC00000 are fine).
  assert not re.search(r"0x7f[0-9a-f]{10}", hlo.lower())


def test_dump_dir_knob_writes_every_stage(tmp_path, monkeypatch):
  monkeypatch.setenv("PALLAS_CPU_DUMP_DIR", str(tmp_path))

  def kernel(x_ref, o_ref):  # a kernel no other test compiles
    o_ref[...] = x_ref[...] * 17.0

  pallas_cpu.pallas_call(kernel, out_shape=X)(X)
  (kdir,) = [d for d in tmp_path.iterdir() if d.name.startswith("kernel-")]
  names = sorted(p.name for p in kdir.iterdir())
  assert names == ["0-kernel.mlir", "1-canonical.mlir", "2-loops.mlir",
                   "3-flat.mlir", "4-llvm.mlir", "5-llvm-ir.ll", "6-opt.ll",
                   "7-asm.s"]


def test_retracing_and_rejitting_do_not_recompile():
  _ = jax.jit(_call)(X)
  before = compiler.cache_size()
  for _ in range(3):
    jax.jit(lambda x: _call(x))(X).block_until_ready()  # new jit each time
  assert compiler.cache_size() == before


@pytest.mark.parametrize("with_source", [False, True])
def test_failing_pipeline_reports_diagnostics_and_reproducer(with_source):
  """With the module's source text (as builds pass it), the failing stage's
  input is rebuilt from it instead of printed before every stage: the
  reproducer must be the same."""
  from mlir import ir
  src = """
  module attributes {pallas_cpu.kernel_name = "bad", pallas_cpu.opt_level = 3 : i32} {
    func.func @pallas_cpu_entry(%x: i32) -> i32 {
      %y = math.ipowi %x, %x : i32
      return %y : i32
    }
  }"""
  with ir.Context(), ir.Location.unknown():
    module = ir.Module.parse(src)
    with pytest.raises(compiler.CompilationError) as e:
      compiler.run_stages(module, name="bad",
                          source=src if with_source else None)
  msg = str(e.value)
  assert "stage 'llvm' failed for kernel 'bad'" in msg
  assert "math.ipowi" in msg  # the diagnostics
  repro = msg.split("Reproduce with:\n")[1].strip()
  assert repro.startswith("python -m pallas_cpu opt ")
  # The reproducer replays the same failure.
  args = repro.split(" ", 4)[4]  # FILE --pass-pipeline='...'
  path, pipeline = args.split(" --pass-pipeline=")
  proc = subprocess.run([sys.executable, "-m", "pallas_cpu", "opt", path,
                         "--pass-pipeline", pipeline.strip("'")],
                        capture_output=True, text=True)
  assert proc.returncode != 0 and "math.ipowi" in proc.stderr
