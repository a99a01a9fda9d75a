"""The on-disk kernel cache never breaks a call: damaged entries are
discarded and rebuilt, an unusable cache directory is skipped with one
warning, and an entry is only ever loaded on the kind of machine it was
built for.  Most tests run fresh processes (a process keeps the kernels it
loaded), each checking its numbers against jnp."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.experimental import pallas as pl

import pallas_cpu

KERNEL = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import pallas as pl
    import pallas_cpu
    from pallas_cpu import compiler

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

RUN = textwrap.dedent("""
    out = jax.jit(f)(x)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    (k,) = compiler.cache_entries()
    print("from_disk", k.from_disk)
""")

WARNING = "pallas_cpu: discarded a damaged kernel cache entry"


def _run(code: str, tmp_path, **env) -> tuple[str, str]:
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **env)
  proc = subprocess.run([sys.executable, "-c", code], env=full_env,
                        capture_output=True, text=True, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, proc.stderr


def _entries(cache) -> list:
  return sorted(cache.glob("*.so"))


def _build_one_entry(tmp_path):
  cache = tmp_path / "native"
  out, _ = _run(KERNEL + RUN, tmp_path, PALLAS_CPU_CACHE_DIR=str(cache))
  assert "from_disk False" in out
  (entry,) = _entries(cache)
  return cache, entry


def _assert_rebuilt_then_served(tmp_path, cache, entry, damaged: bytes):
  """The process meeting the damaged entry computes the right numbers,
  warns once and rebuilds the entry; the next one loads it silently."""
  out, err = _run(KERNEL + RUN, tmp_path, PALLAS_CPU_CACHE_DIR=str(cache))
  assert "from_disk False" in out
  assert err.count(WARNING) == 1, err[-3000:]
  assert _entries(cache) == [entry]
  assert entry.read_bytes() != damaged
  out, err = _run(KERNEL + RUN, tmp_path, PALLAS_CPU_CACHE_DIR=str(cache))
  assert "from_disk True" in out
  assert WARNING not in err


def test_truncated_entry_is_rebuilt(tmp_path):
  cache, entry = _build_one_entry(tmp_path)
  damaged = entry.read_bytes()[: entry.stat().st_size // 2]
  entry.write_bytes(damaged)
  _assert_rebuilt_then_served(tmp_path, cache, entry, damaged)


def test_empty_entry_is_rebuilt(tmp_path):
  cache, entry = _build_one_entry(tmp_path)
  entry.write_bytes(b"")
  _assert_rebuilt_then_served(tmp_path, cache, entry, b"")


def test_garbage_entry_of_the_right_size_is_rebuilt(tmp_path):
  cache, entry = _build_one_entry(tmp_path)
  damaged = np.random.default_rng(1).bytes(entry.stat().st_size)
  entry.write_bytes(damaged)
  _assert_rebuilt_then_served(tmp_path, cache, entry, damaged)


def test_entry_damaged_in_the_middle_is_rebuilt(tmp_path):
  """Bytes changed inside the object (its ELF header and the end of the
  file intact): only the checksum can tell."""
  cache, entry = _build_one_entry(tmp_path)
  data = bytearray(entry.read_bytes())
  mid = len(data) // 2
  data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
  damaged = bytes(data)
  entry.write_bytes(damaged)
  _assert_rebuilt_then_served(tmp_path, cache, entry, damaged)


def test_entry_without_the_kernel_symbol_is_rebuilt(tmp_path):
  """A well-formed entry (checksum right) whose shared object loads but
  has no kernel entry point."""
  from pallas_cpu import disk_cache, native
  cache, entry = _build_one_entry(tmp_path)
  src, so = tmp_path / "other.c", tmp_path / "other.so"
  src.write_text("int not_a_kernel(void) { return 1; }\n")
  subprocess.run([native._linker(), "-shared", "-fPIC", "-o", str(so),
                  str(src)], check=True)
  assert disk_cache.store(str(so), str(entry))
  damaged = entry.read_bytes()
  _assert_rebuilt_then_served(tmp_path, cache, entry, damaged)


TWO_KERNELS = KERNEL + textwrap.dedent("""
    def g(x):
      def kernel2(x_ref, o_ref):
        o_ref[...] = x_ref[...] * 2 - 5
      return pallas_cpu.pallas_call(kernel2, out_shape=x)(x)

    for _ in range(2):
      np.testing.assert_allclose(jax.jit(f)(x), want, rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(jax.jit(g)(x), x * 2 - 5)
    print("kernels", len(compiler.cache_entries()))
""")

UNUSABLE = "pallas_cpu: the kernel cache directory"


def _assert_runs_without_disk_cache(tmp_path, cache_dir: str):
  out, err = _run(TWO_KERNELS, tmp_path, PALLAS_CPU_CACHE_DIR=cache_dir)
  assert "kernels 2" in out
  assert err.count(UNUSABLE) == 1, err[-3000:]


def test_cache_dir_that_is_a_file_warns_once(tmp_path):
  not_a_dir = tmp_path / "cache_file"
  not_a_dir.write_text("not a directory\n")
  _assert_runs_without_disk_cache(tmp_path, str(not_a_dir))
  assert not_a_dir.read_text() == "not a directory\n"


def test_cache_dir_below_a_file_warns_once(tmp_path):
  (tmp_path / "cache_file").write_text("")
  _assert_runs_without_disk_cache(tmp_path, str(tmp_path / "cache_file" / "d"))


def test_unwritable_cache_dir_warns_once(tmp_path):
  """A directory that exists but takes no files, even from root (sysfs;
  chmod does not stop root, who runs these tests here)."""
  assert os.path.isdir("/sys/kernel") and not _can_create_in("/sys/kernel")
  _assert_runs_without_disk_cache(tmp_path, "/sys/kernel")


def test_entry_built_for_another_machine_is_not_loaded(tmp_path):
  """A cache shared between machines: what one built (say, AVX-512 code)
  is never handed to another; each keeps its own entry."""
  cache = tmp_path / "native"
  other = KERNEL + textwrap.dedent("""
    from pallas_cpu import native
    native.machine_description = lambda: "triple=x86_64\\ncpu=other-cpu"
  """) + RUN
  out, _ = _run(other, tmp_path, PALLAS_CPU_CACHE_DIR=str(cache))
  assert "from_disk False" in out
  (foreign,) = _entries(cache)
  out, _ = _run(KERNEL + RUN, tmp_path, PALLAS_CPU_CACHE_DIR=str(cache))
  assert "from_disk False" in out
  assert len(_entries(cache)) == 2
  out, _ = _run(KERNEL + RUN, tmp_path, PALLAS_CPU_CACHE_DIR=str(cache))
  assert "from_disk True" in out
  out, _ = _run(other, tmp_path, PALLAS_CPU_CACHE_DIR=str(cache))
  assert "from_disk True" in out
  assert foreign in _entries(cache)


def _kernel_of_this_test(x_ref, o_ref):
  o_ref[...] = x_ref[...] * 7 + 0.25   # (constants unique to this test)


def test_disk_key_has_the_machine_the_kernel_id_does_not(tmp_path,
                                                         monkeypatch):
  """The key of a disk entry changes with the machine; the kernel id the
  HLO carries (jax's persistent cache, jax.export) does not."""
  from pallas_cpu import compiler, disk_cache, native
  monkeypatch.setenv("PALLAS_CPU_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(native, "machine_description",
                      lambda: "triple=test\ncpu=imaginary")
  x = jnp.arange(8 * 128, dtype=jnp.float32).reshape(8, 128)
  fn = pallas_cpu.pallas_call(_kernel_of_this_test,
                              out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))
  np.testing.assert_array_equal(jax.jit(fn)(x), x * 7 + 0.25)
  (k,) = [k for k in compiler.cache_entries()
          if k.name == "_kernel_of_this_test"]
  imaginary = disk_cache.entry_path(str(tmp_path), k.fingerprint)
  assert [str(p) for p in _entries(tmp_path)] == [imaginary]
  monkeypatch.setattr(native, "machine_description",
                      lambda: "triple=test\ncpu=another")
  assert disk_cache.entry_path(str(tmp_path), k.fingerprint) != imaginary
  monkeypatch.undo()
  assert disk_cache.entry_path(str(tmp_path), k.fingerprint) != imaginary
  # The id is the same whatever the machine: jax.jit of the same kernel
  # lowers to the same custom call.
  text = jax.jit(fn).lower(x).as_text()
  assert k.fingerprint in text


def test_machine_description_names_triple_cpu_features_and_llvm():
  from pallas_cpu import native
  x = jnp.linspace(-2, 2, 8 * 128, dtype=jnp.float32).reshape(8, 128)
  out = pallas_cpu.pallas_call(
      lambda x_ref, o_ref: o_ref.__setitem__(..., jnp.abs(x_ref[...])),
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
  np.testing.assert_array_equal(out, jnp.abs(x))
  desc = native.machine_description()
  fields = dict(line.split("=", 1) for line in desc.splitlines())
  assert fields["triple"] == native.host_triple()
  assert fields["cpu"] and fields["cpu"] != "native"
  assert fields["llvm"][0].isdigit()
  assert "features" in fields
  assert native.machine_description() is desc   # computed once per process


def _can_create_in(directory: str) -> bool:
  import tempfile
  try:
    with tempfile.TemporaryFile(dir=directory):
      return True
  except OSError:
    return False
