"""The HLO stays valid in a fresh process: JAX's persistent compilation
cache and jax.export both hand the executable to a process that never
lowered the kernel."""
import os
import subprocess
import sys
import textwrap

KERNEL = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import pallas as pl
    import pallas_cpu

    def kernel(x_ref, o_ref):
      o_ref[...] = jnp.tanh(x_ref[...]) * 3 + 1

    def f(x):
      spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
      return pallas_cpu.pallas_call(kernel, out_shape=x, grid=(4,),
                                    in_specs=[spec], out_specs=spec)(x)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 128)),
                    jnp.float32)
    want = jnp.tanh(x) * 3 + 1
""")


def _run(code: str, tmp_path, **env) -> str:
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **env)
  proc = subprocess.run([sys.executable, "-c", code], env=full_env,
                        capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_persistent_compilation_cache_hit_in_fresh_process(tmp_path):
  cache = tmp_path / "jax_cache"
  code = KERNEL + textwrap.dedent(f"""
    from jax._src import monitoring
    hits = []
    monitoring.register_event_listener(
        lambda name, **kw: hits.append(name)
        if name == "/jax/compilation_cache/cache_hits" else None)
    jax.config.update("jax_compilation_cache_dir", {str(cache)!r})
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    out = jax.jit(f)(x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    print("hits", len(hits))
  """)
  first = _run(code, tmp_path)
  assert "hits 0" in first
  assert any(cache.iterdir())
  second = _run(code, tmp_path)
  assert "hits 1" in second, second


def test_jax_export_roundtrip_in_fresh_process(tmp_path):
  blob = tmp_path / "kernel.jax_exported"
  export = KERNEL + textwrap.dedent(f"""
    from jax import export
    # pallas_cpu_call is not one of JAX's stable custom calls: its stability
    # is ours (the kernel IR travels inside it), so the check is waived.
    exp = export.export(jax.jit(f), disabled_checks=[
        export.DisabledSafetyCheck.custom_call("pallas_cpu_call")])(x)
    open({str(blob)!r}, "wb").write(exp.serialize())
  """)
  _run(export, tmp_path)
  # The fresh process imports pallas_cpu (the FFI target must be registered)
  # but never traces the kernel: the runtime compiles it from the IR that
  # the serialized module carries.
  load = textwrap.dedent(f"""
    import jax, jax.numpy as jnp, numpy as np
    from jax import export
    import pallas_cpu
    from pallas_cpu import runtime_lib
    exp = export.deserialize(open({str(blob)!r}, "rb").read())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 128)),
                    jnp.float32)
    before = runtime_lib.library().pallas_cpu_rt_num_registered_kernels()
    out = exp.call(x)
    np.testing.assert_allclose(out, jnp.tanh(x) * 3 + 1, rtol=1e-5, atol=1e-6)
    after = runtime_lib.library().pallas_cpu_rt_num_registered_kernels()
    print("compiled_by_runtime", after - before)
  """)
  assert "compiled_by_runtime 1" in _run(load, tmp_path)


def test_native_cache_on_disk_serves_a_fresh_process(tmp_path):
  """The second process loads the kernel's shared object: no compilation."""
  code = KERNEL + textwrap.dedent("""
    from pallas_cpu import compiler
    out = jax.jit(f)(x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    (k,) = compiler.cache_entries()
    print("from_disk", k.from_disk)
  """)
  cache = str(tmp_path / "native")
  assert "from_disk False" in _run(code, tmp_path, PALLAS_CPU_CACHE_DIR=cache)
  assert len(list((tmp_path / "native").glob("*.so"))) == 1
  assert "from_disk True" in _run(code, tmp_path, PALLAS_CPU_CACHE_DIR=cache)
