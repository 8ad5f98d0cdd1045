#!/usr/bin/env bash
# MMBench-CN dev (Chinese): answers, then local CircularEval accuracy.
#   bash scripts/eval/mmbench_cn.sh MODEL_PATH [extra `llavamini eval run` flags]
# Environment as for run_benchmark.sh (CUDA_VISIBLE_DEVICES, DATA_ROOT, OUTPUT_DIR, SCORE_ARGS).
exec bash "$(dirname "$0")/run_benchmark.sh" mmbench_cn "$@"
