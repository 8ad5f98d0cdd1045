#!/usr/bin/env bash
# Create .venv and install llavamini with the pinned stack (CPU or GPU machine, Python >= 3.10).
# Idempotent: re-running only installs what changed. Usage: bash scripts/setup.sh [EXTRAS]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,video,serve,qlora,dev}"
python3 -m venv .venv
# -c constraints.txt pins torch==2.13.0 and every other version the tests ran with. The 'llamacpp'
# extra compiles llama.cpp for this machine's CPU, on every core.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
