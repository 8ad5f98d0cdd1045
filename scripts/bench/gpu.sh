#!/usr/bin/env bash
# Every GPU row, in one run of under 10 minutes on an H100/H200: scripts/bench/gpu.sh [REFERENCE_DIR]
#
# Writes outputs/gpu/results.md (commit it, with outputs/gpu/bench-8b/bench.json) holding:
#   1. the machine (nvidia-smi, torch, transformers, flash_attn);
#   2. the tests marked gpu (pytest -m gpu);
#   3. `llavamini bench --scale 8b` rows: TTFT, decode, fast paths (bf16, static cache + compile),
#      mini-1 against llava-1.5;
#   4. flash-attn 2 against SDPA in bf16 (tokens must agree) and video chunking on CUDA
#      (scripts/bench/gpu.py);
#   5. when REFERENCE_DIR (a clone of ictnlp/LLaVA-Mini) is given: the side-by-side comparison
#      (scripts/bench/vs_reference.sh) at the CPU geometry, on the GPU.
# Each step has its own time limit, so one that hangs cannot take the others' time; a step that
# fails is recorded as failed and the next one runs.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/outputs/gpu}
RESULTS=$OUT/results.md
mkdir -p "$OUT"
export PYTHONPATH=$ROOT

step() {  # step TITLE SECONDS COMMAND...: runs COMMAND under a limit, appends its output
    local title=$1 limit=$2
    shift 2
    echo "## $title" >> "$RESULTS"
    echo '```' >> "$RESULTS"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/step.log" 2>&1
    local rc=$?
    tail -n 60 "$OUT/step.log" >> "$RESULTS"
    echo '```' >> "$RESULTS"
    echo "exit status $rc after $((SECONDS - start)) s (limit $limit s)" >> "$RESULTS"
    echo >> "$RESULTS"
}

{
    echo "# GPU results, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" -c 'import torch, transformers, importlib.util as u; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "flash_attn", u.find_spec("flash_attn") is not None)'
    echo '```'
    echo
} > "$RESULTS"

step "tests marked gpu" 90 "$PYTHON" -m pytest -q -m gpu tests
step "llavamini bench --scale 8b" 240 "$PYTHON" -m llavamini.cli bench --scale 8b --device cuda \
    --dtype bfloat16 --variants llava-1.5 mini-1 --sections timing fastpaths video \
    --fastpath-variants mini-1 --static-cache --compile --video-frames 64 --video-chunk 32 \
    --repeats 3 --no-meta-check --output-dir "$OUT/bench-8b"
step "flash-attn 2 vs SDPA" 90 "$PYTHON" scripts/bench/gpu.py attention "$OUT/attention.md"
step "video chunking on CUDA" 90 "$PYTHON" scripts/bench/gpu.py video "$OUT/video.md"
cat "$OUT/attention.md" "$OUT/video.md" >> "$RESULTS" 2>/dev/null
if [ $# -ge 1 ]; then
    step "side by side with the reference (cuda)" 120 env OURS_PYTHON="$PYTHON" \
        ARGS="--device cuda --frames 8 32 --repetitions 1 --video-repetitions 1" scripts/bench/vs_reference.sh "$1"
fi
echo "wrote $RESULTS"
