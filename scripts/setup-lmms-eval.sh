#!/usr/bin/env bash
# Create .venv-lmms-eval: lmms-eval 0.7.3 and llavamini (the `lmms-eval --model llava_mini`
# plug-in), with the versions of constraints-lmms-eval.txt. Idempotent: re-running only installs
# what changed. Usage: bash scripts/setup-lmms-eval.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-lmms-eval
# --no-deps: every package, torch==2.13.0 included, comes pinned from the file, and pip never
# resolves lmms-eval's requirements (they would pull a CUDA torchvision; see the file's header).
.venv-lmms-eval/bin/python -m pip install -q --no-deps -r constraints-lmms-eval.txt
.venv-lmms-eval/bin/python -m pip install -q --no-deps -e .
# The pinned set must be complete: only the two packages left out on purpose may be missing.
missing=$(.venv-lmms-eval/bin/python -m pip check 2>&1 | grep -v -E "requires (timm|torchvision), which is not installed" || true)
if [ -n "$missing" ] && [ "$missing" != "No broken requirements found." ]; then
    echo "constraints-lmms-eval.txt is incomplete or inconsistent:" >&2
    echo "$missing" >&2
    exit 1
fi
