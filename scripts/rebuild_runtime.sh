#!/usr/bin/env bash
# Developer shortcut: rebuilds the C++ runtime incrementally after an edit in
# pallas_cpu/runtime/ and installs it into .venv without re-running pip.
# Serialized by a lock (several people may share one tree); the new library
# replaces the old one by rename, so processes that still have the old one
# mapped keep running.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(ls -d build/cp311-*/ 2>/dev/null | head -1)
if [ -z "$build" ]; then
  exec bash scripts/setup.sh
fi
exec 9>/tmp/pallas_cpu_runtime_build.lock
flock 9
ninja -C "$build" >/dev/null
so=$(ls "$build"/_runtime*.so)
# Where pip installed it (not found by importing pallas_cpu: that would load
# the installed library, which may be the broken one being replaced).
dest=$(ls .venv/lib/python3*/site-packages/pallas_cpu/_runtime*.so | head -1)
cp "$so" "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "runtime rebuilt: $dest"
