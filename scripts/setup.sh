#!/usr/bin/env bash
# Creates .venv (once) and installs pallas_cpu with its C++ runtime into it.
# Idempotent: re-running rebuilds the runtime incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Build requirements first: the runtime compiles against jaxlib's XLA FFI
# headers, so the build runs without isolation, inside this venv.
.venv/bin/python -m pip install -q "scikit-build-core>=0.10" "jax==0.10.2" "jaxlib==0.10.2"
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test,bench]"
