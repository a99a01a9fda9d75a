"""The pipeline's native stages: LLVM IR, opt and assembly are stages like
the MLIR ones -- printed, dumped, replaced from an override directory --
and a failing native step keeps its inputs for the printed command."""
from __future__ import annotations

import os
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

import pallas_cpu
from pallas_cpu import compiler, native
from conftest import assert_same

X = jnp.asarray(np.random.default_rng(0).standard_normal((16, 128)),
                jnp.float32)


def _scale_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...] * 3.0


def _call(x):
  return pallas_cpu.pallas_call(_scale_kernel, out_shape=x)(x)


def test_native_stages_print():
  lowered = pallas_cpu.lower(_call, X)
  ll = lowered.as_text("llvm-ir")
  assert "define void @pallas_cpu_entry_packed(ptr" in ll
  assert "declare noalias ptr @_mlir_memref_to_llvm_alloc(i64)" in ll
  assert "fmul" in lowered.as_text("opt")
  asm = lowered.as_text("asm")
  assert "pallas_cpu_entry_packed:" in asm and "vmul" in asm
  with pytest.raises(ValueError, match="unknown stage 'so'"):
    lowered.as_text("so")


def test_dump_dir_has_every_stage(tmp_path, monkeypatch):
  monkeypatch.setenv("PALLAS_CPU_DUMP_DIR", str(tmp_path))
  monkeypatch.setenv("PALLAS_CPU_CACHE_DIR", "off")
  # -O3 (a kernel this small builds at -O0 by default): opt folds x - c
  # into x + (-c), which the dump shows.
  monkeypatch.setenv("PALLAS_CPU_OPT_LEVEL", "3")
  x = X + 1  # a kernel compiled afresh: the in-process cache knows _call(X)
  k = lambda x_ref, o_ref: o_ref.__setitem__(..., x_ref[...] - 0.125)
  out = pallas_cpu.pallas_call(k, out_shape=x)(x)
  assert_same(out, x - 0.125)
  (d,) = tmp_path.iterdir()
  assert sorted(p.name for p in d.iterdir()) == [
      "0-kernel.mlir", "1-canonical.mlir", "2-loops.mlir", "3-flat.mlir",
      "4-llvm.mlir", "5-llvm-ir.ll", "6-opt.ll", "7-asm.s"]
  assert "-1.250000e-01" in (d / "6-opt.ll").read_text()


def _rescaled(text: str) -> str:
  """The kernel's constant 3.0 replaced by 5.0 (in LLVM IR or assembly)."""
  if "3.000000e+00" in text:  # LLVM IR
    return text.replace("3.000000e+00", "5.000000e+00")
  return text.replace(".long\t0x40400000", ".long\t0x40a00000")  # asm


@pytest.mark.parametrize("stage", ["4-llvm.mlir", "6-opt.ll", "7-asm.s"])
def test_override_replaces_a_stage_and_resumes(tmp_path, monkeypatch, stage):
  """Dump a kernel, edit one stage's output (3.0 -> 5.0), put it in the
  override directory under the kernel's name: the next build resumes from
  it, bypassing both caches' entries for the unedited kernel."""
  dump, override = tmp_path / "dump", tmp_path / "override"
  monkeypatch.setenv("PALLAS_CPU_CACHE_DIR", "off")
  monkeypatch.setenv("PALLAS_CPU_DUMP_DIR", str(dump))
  text = pallas_cpu.lower(_call, X).as_text(
      {"4-llvm.mlir": "llvm", "6-opt.ll": "opt", "7-asm.s": "asm"}[stage])
  edited = _rescaled(text)
  if stage == "4-llvm.mlir":
    edited = text.replace("3.000000e+00 : f32", "5.000000e+00 : f32")
  assert edited != text
  (override / "_scale_kernel").mkdir(parents=True)
  (override / "_scale_kernel" / stage).write_text(edited)
  monkeypatch.setenv("PALLAS_CPU_OVERRIDE_DIR", str(override))
  with pytest.warns(UserWarning, match="built from replaced stages"):
    out = jax.block_until_ready(_call(X))
  assert_same(out, X * 5.0)
  # The stages after the replaced one (if any but the binary) were dumped.
  dumped = [p.name for d in dump.glob("*") for p in d.iterdir()]
  assert "0-kernel.mlir" not in dumped
  assert ("7-asm.s" in dumped) == (stage != "7-asm.s")


def test_failed_native_step_keeps_its_inputs(tmp_path, monkeypatch):
  override = tmp_path / "override" / "_scale_kernel"
  override.mkdir(parents=True)
  (override / "6-opt.ll").write_text("this is not LLVM IR\n")
  monkeypatch.setenv("PALLAS_CPU_CACHE_DIR", "off")
  monkeypatch.setenv("PALLAS_CPU_OVERRIDE_DIR", str(tmp_path / "override"))
  with pytest.warns(UserWarning), pytest.raises(Exception) as info:
    jax.block_until_ready(_call(X))
  msg = str(info.value)
  assert "The step's inputs are kept in" in msg and "re-run:" in msg
  cmd = msg.split("re-run:\n  ")[1].split("\n")[0]
  kept = re.search(r"kept in (\S+);", msg).group(1)
  assert os.path.isfile(os.path.join(kept, "6-opt.ll"))
  # The printed command reproduces the failure.
  assert subprocess.run(cmd.split(), capture_output=True).returncode != 0
  assert cmd.split()[0] == native._tool("llc")


def test_stage_names_and_files():
  assert compiler.STAGE_NAMES == ("kernel", "canonical", "loops", "flat",
                                  "llvm", "llvm-ir", "opt", "asm", "so")
  assert compiler.stage_file("asm") == "7-asm.s"
