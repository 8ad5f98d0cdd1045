#!/usr/bin/env bash
# GQA test-dev balanced: answers, then local exact-match accuracy.
#   bash scripts/eval/gqa.sh MODEL_PATH [extra `llavamini eval run` flags]
# Environment as for run_benchmark.sh (CUDA_VISIBLE_DEVICES, DATA_ROOT, OUTPUT_DIR, SCORE_ARGS).
exec bash "$(dirname "$0")/run_benchmark.sh" gqa "$@"
