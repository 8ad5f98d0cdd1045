#!/usr/bin/env bash
# Answer TASK with a checkpoint on every GPU in CUDA_VISIBLE_DEVICES (one process per GPU, each
# a shard of the questions), merge the shards, and score. Rerunning the same command resumes:
# answered questions are skipped, so a crash or a preemption costs only the in-flight batch.
#
#   bash scripts/eval/run_benchmark.sh TASK MODEL_PATH [extra `llavamini eval run` flags]
#
# Run it from the repository root. Environment:
#   CUDA_VISIBLE_DEVICES  GPUs to use (default 0); the number of shards is their count
#   DATA_ROOT             LLaVA eval.zip root (default playground/data/eval)
#   OUTPUT_DIR            default outputs/eval/<checkpoint folder name>/<TASK>
#   SCORE_ARGS            extra `llavamini eval score` flags, e.g. "--annotations FILE"
#   PYTHON                default .venv/bin/python when present, else python
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
task=$1
model_path=$2
shift 2

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
data_flags=()
if [ -n "${DATA_ROOT:-}" ]; then data_flags=(--data-root "$DATA_ROOT"); fi
IFS=',' read -r -a gpus <<< "${CUDA_VISIBLE_DEVICES:-0}"
chunks=${#gpus[@]}
output_dir=${OUTPUT_DIR:-outputs/eval/$(basename "${model_path%/}")/$task}
mkdir -p "$output_dir"

pids=()
shards=()
for idx in "${!gpus[@]}"; do
  shard="$output_dir/answers.chunk$idx-of-$chunks.jsonl"
  log="$output_dir/run.chunk$idx-of-$chunks.log"
  shards+=("$shard")
  command=(env CUDA_VISIBLE_DEVICES="${gpus[$idx]}" "$PYTHON" -m llavamini.eval run "$task"
           --model-path "$model_path" --num-chunks "$chunks" --chunk-idx "$idx"
           --answers-file "$shard" "${data_flags[@]}" "$@")
  if [ "$idx" -eq 0 ]; then
    # Shard 0 also shows its progress on stderr; every shard keeps a log. stdout gets only the
    # final score JSON.
    ( set -o pipefail; "${command[@]}" 2>&1 | tee "$log" >&2 ) &
  else
    "${command[@]}" > "$log" 2>&1 &
  fi
  pids+=($!)
done

failed=0
for idx in "${!pids[@]}"; do
  if ! wait "${pids[$idx]}"; then
    echo "shard $idx failed: see $output_dir/run.chunk$idx-of-$chunks.log" >&2
    failed=1
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "Rerun the same command to resume the unfinished shards." >&2
  exit 1
fi

"$PYTHON" -m llavamini.eval merge --output "$output_dir/answers.jsonl" "${shards[@]}"
# shellcheck disable=SC2086  # SCORE_ARGS is a list of flags
"$PYTHON" -m llavamini.eval score "$task" --answers "$output_dir/answers.jsonl" \
  "${data_flags[@]}" ${SCORE_ARGS:-}
