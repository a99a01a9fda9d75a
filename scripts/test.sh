#!/usr/bin/env bash
# Every test: set up, then pytest (numerics) and lit + FileCheck (IR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
status=0
.venv/bin/python -m pytest -q test/py || status=$?
# pytest exit code 5 means "no tests collected": that must fail here too.
if [ "$status" -ne 0 ]; then
  echo "pytest failed with exit code $status"
  exit "$status"
fi
# Several devices: XLA's device count is fixed when JAX starts, so this
# suite runs in its own process (test/devices/conftest.py sets it).
.venv/bin/python -m pytest -q test/devices || status=$?
if [ "$status" -ne 0 ]; then
  echo "pytest (devices) failed with exit code $status"
  exit "$status"
fi
.venv/bin/lit -q test/lit
echo "lit: all IR tests passed"
