#!/usr/bin/env bash
# The main job: set up, then compile a tiled Pallas kernel natively, check it
# against jnp and print its speed next to interpret=True, TPU interpret mode
# and XLA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pallas_cpu demo "$@"
