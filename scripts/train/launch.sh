#!/usr/bin/env bash
# Launch `python -m llavamini.train RECIPE [--key value ...]` with torchrun.
#   One node:   bash scripts/train/launch.sh RECIPE.yaml [--key value ...]
#   Many nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (node 0's address)
#               and MASTER_PORT set; NPROC_PER_NODE defaults to the visible GPUs (1 without).
# The recipe's `deepspeed:` entry (configs/deepspeed/*.json) turns DeepSpeed ZeRO on.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -x .venv/bin/torchrun ]; then PATH="$PWD/.venv/bin:$PATH"; fi
recipe="$1"; shift
gpus=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
exec torchrun \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --nproc_per_node "${NPROC_PER_NODE:-$gpus}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m llavamini.train "$recipe" "$@"
