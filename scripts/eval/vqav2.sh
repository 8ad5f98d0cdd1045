#!/usr/bin/env bash
# VQAv2 test-dev: answers, then the EvalAI upload file (labels are private).
#   bash scripts/eval/vqav2.sh MODEL_PATH [extra `llavamini eval run` flags]
# Environment as for run_benchmark.sh (CUDA_VISIBLE_DEVICES, DATA_ROOT, OUTPUT_DIR, SCORE_ARGS).
exec bash "$(dirname "$0")/run_benchmark.sh" vqav2 "$@"
