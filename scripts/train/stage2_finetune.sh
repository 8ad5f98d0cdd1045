#!/usr/bin/env bash
# Stage 2, end to end: bash scripts/train/stage2_finetune.sh [--key value ...]
# RECIPE defaults to the Llama-3.1-8B recipe; see launch.sh for multi-node variables.
exec bash "$(dirname "$0")/launch.sh" "${RECIPE:-configs/train/stage2_finetune_llama3_1_8b.yaml}" "$@"
