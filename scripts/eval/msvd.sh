#!/usr/bin/env bash
# MSVD-QA: answers, then the LLM judge (set LLAVAMINI_JUDGE_BASE_URL and LLAVAMINI_JUDGE_MODEL).
#   bash scripts/eval/msvd.sh MODEL_PATH [extra `llavamini eval run` flags]
# Environment as for run_benchmark.sh (CUDA_VISIBLE_DEVICES, DATA_ROOT, OUTPUT_DIR, SCORE_ARGS).
exec bash "$(dirname "$0")/run_benchmark.sh" msvd_qa "$@"
