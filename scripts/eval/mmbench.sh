#!/usr/bin/env bash
# MMBench dev (English): answers, then local CircularEval accuracy.
#   bash scripts/eval/mmbench.sh MODEL_PATH [extra `llavamini eval run` flags]
# Environment as for run_benchmark.sh (CUDA_VISIBLE_DEVICES, DATA_ROOT, OUTPUT_DIR, SCORE_ARGS).
exec bash "$(dirname "$0")/run_benchmark.sh" mmbench "$@"
