#!/usr/bin/env bash
# Stage 1, projector alignment: bash scripts/train/stage1_pretrain.sh [--key value ...]
# RECIPE defaults to the Llama-3.1-8B recipe; see launch.sh for multi-node variables.
exec bash "$(dirname "$0")/launch.sh" "${RECIPE:-configs/train/stage1_pretrain_llama3_1_8b.yaml}" "$@"
