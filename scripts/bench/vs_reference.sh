#!/usr/bin/env bash
# Side by side with the reference implementation: scripts/bench/vs_reference.sh REFERENCE_DIR
#
# REFERENCE_DIR is a clone of ictnlp/LLaVA-Mini (the comparison in docs/benchmarks.md used
# 47da113). The script builds the reference's environment with its own transformers (4.43.1,
# torch pinned to ours so that neither side gets another BLAS), writes one random checkpoint both
# codebases load, checks their outputs agree, then times every row in both, alternating process
# by process, and prints the table with ratios (reference time / ours). Run by hand, not by CI:
# the full run takes about 22 minutes on 2 CPU cores (video at 64 frames is 40% of it).
#
# Environment variables:
#   OURS_PYTHON      our environment's python (default: .venv/bin/python of this repository)
#   REFERENCE_VENV   where to build the reference's environment (default: /tmp/llavamini-refvenv)
#   WORK_DIR         checkpoint and scratch (default: /tmp/llavamini-vs-reference)
#   ARGS             extra arguments for `vs_reference.py compare`, e.g. "--frames 8 --rows ttft"
set -euo pipefail

if [ $# -ne 1 ] || [ ! -d "$1/llavamini/model" ]; then
    echo "usage: $0 REFERENCE_DIR   (a clone of ictnlp/LLaVA-Mini)" >&2
    exit 2
fi
REFERENCE_DIR=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OURS_PYTHON=${OURS_PYTHON:-$ROOT/.venv/bin/python}
REFERENCE_VENV=${REFERENCE_VENV:-/tmp/llavamini-refvenv}
WORK_DIR=${WORK_DIR:-/tmp/llavamini-vs-reference}
TORCH_VERSION=$("$OURS_PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')

if [ ! -x "$REFERENCE_VENV/bin/python" ]; then
    python3 -m venv "$REFERENCE_VENV"
    # The reference's pins that its model code needs; torch pinned to ours (never unpinned:
    # pip would pull the CUDA wheels).
    "$REFERENCE_VENV/bin/pip" install -q "torch==$TORCH_VERSION" transformers==4.43.1 \
        "tokenizers>=0.19,<0.20" accelerate==0.29.0 einops sentencepiece safetensors numpy pillow
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
    "load $(cut -d' ' -f1-3 /proc/loadavg); reference $(git -C "$REFERENCE_DIR" rev-parse --short HEAD 2>/dev/null || echo '(not a git clone)')"
# shellcheck disable=SC2086  # ARGS is a list of arguments
PYTHONPATH="$ROOT" "$OURS_PYTHON" "$ROOT/scripts/bench/vs_reference.py" compare \
    --work-dir "$WORK_DIR" --ours-python "$OURS_PYTHON" \
    --reference-python "$REFERENCE_VENV/bin/python" --reference-dir "$REFERENCE_DIR" ${ARGS:-}
