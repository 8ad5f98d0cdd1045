"""`llavamini eval {run,score,merge,list}`: benchmark answers, scores and shard merging.

    llavamini eval run TASK --model-path PATH [--batch-size B] [--num-chunks N --chunk-idx I]
    llavamini eval merge --output answers.jsonl answers.chunk*.jsonl
    llavamini eval score TASK --answers answers.jsonl [--questions F] [--annotations F]
    llavamini eval list

Files default to LLaVA's `eval.zip` layout under `--data-root` (playground/data/eval); answers
to `outputs/eval/<model name>/<task>/answers.jsonl` (`answers.chunk<I>-of-<N>.jsonl` for a
shard). `score` prints one JSON object (its `accuracy` is the headline metric) and saves it as
`<answers without .jsonl>.score.json`. Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from llavamini.cli import add_device_arguments

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = os.path.join("outputs", "eval")


def add_parser(commands) -> None:
    """Add `eval` and its sub-commands to the `llavamini` sub-command parsers."""
    parser = commands.add_parser(
        "eval",
        help="answer and score benchmarks (VQAv2, GQA, MMBench, MSVD-QA, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_commands(parser.add_subparsers(dest="eval_command", required=True))


def add_commands(commands) -> None:
    """The `run`, `score`, `merge` and `list` sub-commands."""
    _add_run(commands)
    _add_score(commands)
    _add_merge(commands)
    listing = commands.add_parser("list", help="list the tasks and their default files")
    listing.add_argument("--data-root", default=None)
    listing.set_defaults(func=list_tasks)


def _add_run(commands) -> None:
    run = commands.add_parser(
        "run", help="answer a task's questions with a checkpoint", allow_abbrev=False
    )
    run.add_argument("task", help="task name (see `llavamini eval list`)")
    run.add_argument("--model-path", required=True, help="checkpoint folder or cached hub id")
    run.add_argument(
        "--model-name", default=None, help="model_id in the answers (default: folder name)"
    )
    _add_data_flags(run)
    run.add_argument(
        "--visual-folder",
        "--image-folder",
        "--video-dir",
        default=None,
        help="images/videos folder (default: the task's in the data root)",
    )
    run.add_argument("--answers-file", default=None, help="answer JSONL to append to")
    run.add_argument(
        "--conv-mode",
        default=None,
        help="chat template (default: from the checkpoint's tokenizer, as the chat does)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="questions per generate call (answers equal batch size 1's)",
    )
    run.add_argument("--num-chunks", type=int, default=1, help="shards of the question file")
    run.add_argument("--chunk-idx", type=int, default=0, help="which shard this process answers")
    run.add_argument("--shard-mode", choices=("contiguous", "strided"), default="contiguous")
    run.add_argument(
        "--max-new-tokens",
        "--max_new_tokens",
        type=int,
        default=None,
        help="default: the reference's for the task (128, or 1024 for MMBench, "
        "ScienceQA and video QA)",
    )
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-p", "--top_p", type=float, default=None)
    run.add_argument("--num-beams", "--num_beams", type=int, default=1)
    run.add_argument("--fps", type=float, default=1.0, help="video frames per second")
    run.add_argument("--max-frames", type=int, default=None, help="video frame cap (default none)")
    run.add_argument(
        "--prompt-prefix-file",
        default=None,
        help="text put before every question instead of the task's (video QA: "
        "the reference's exact instruction)",
    )
    add_device_arguments(run)
    run.add_argument("--attn-implementation", default=None, help="sdpa, eager, flash_attention_2")
    run.add_argument("--num-workers", type=int, default=2, help="threads loading visuals ahead")
    run.add_argument("--limit", type=int, default=None, help="only the first N questions")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the answer file first instead of resuming it",
    )
    run.set_defaults(func=run_command)


def _add_score(commands) -> None:
    score = commands.add_parser("score", help="score an answer file", allow_abbrev=False)
    score.add_argument("task", help="task name (see `llavamini eval list`)")
    score.add_argument("--answers", required=True, help="answer JSONL (merged shards)")
    _add_data_flags(score)
    score.add_argument(
        "--annotations",
        default=None,
        help="labels file or folder (default: the task's in the data root)",
    )
    score.add_argument("--output", default=None, help="result JSON (default: beside --answers)")
    score.add_argument(
        "--matcher",
        default="current",
        choices=("current", "2025-08", "v0.2"),
        help="MMBench: VLMEvalKit answer-matching rules (current: main since 2026-06; "
        "2025-08: before the 'answer is X' rule; v0.2: releases v0.2 and v0.3rc1)",
    )
    judge = score.add_argument_group(
        "LLM judge (video QA; MMBench answers the matcher cannot read, when configured)"
    )
    judge.add_argument("--judge-base-url", default=None, help="else $LLAVAMINI_JUDGE_BASE_URL")
    judge.add_argument("--judge-model", default=None, help="else $LLAVAMINI_JUDGE_MODEL")
    judge.add_argument(
        "--judge-cache", default=None, help="judgment cache folder (default: <answers>.judge_cache)"
    )
    judge.add_argument(
        "--judge-prompt-file",
        default=None,
        help="JSON with the judge's messages instead of ours, e.g. the reference's own: video "
        "QA 'system' and 'user' ({question}, {answer}, {prediction}); MMBench 'template', "
        "'template_cn' and 'options_header' (positional {} for question, options, answer)",
    )
    judge.add_argument("--judge-workers", type=int, default=8, help="parallel requests")
    judge.add_argument("--judge-retries", type=int, default=5, help="retries per judgment")
    judge.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request")
    judge.add_argument(
        "--judge-backoff", type=float, default=2.0, help="first wait between retries (doubles)"
    )
    judge.add_argument(
        "--allow-judge-failures",
        action="store_true",
        help="score without judgments that kept failing instead of stopping",
    )
    score.set_defaults(func=score_command)


def _add_merge(commands) -> None:
    merge = commands.add_parser("merge", help="concatenate shard answer files", allow_abbrev=False)
    merge.add_argument("inputs", nargs="+", help="shard answer files")
    merge.add_argument("--output", required=True, help="merged answer file")
    merge.set_defaults(func=merge_command)


def _add_data_flags(parser) -> None:
    parser.add_argument(
        "--data-root", default=None, help="LLaVA eval.zip root (default: playground/data/eval)"
    )
    parser.add_argument(
        "--questions",
        "--question-file",
        default=None,
        help="question file (default: the task's in the data root)",
    )


def _data_root(args: argparse.Namespace) -> str:
    from llavamini.eval.tasks.base import DEFAULT_DATA_ROOT

    return args.data_root or DEFAULT_DATA_ROOT


def _task(name: str):
    from llavamini.eval.tasks import get_task

    try:
        return get_task(name)
    except KeyError as error:
        raise SystemExit(f"error: {error.args[0]}") from error


def default_answers_file(model_id: str, task: str, num_chunks: int, chunk_idx: int) -> str:
    """`outputs/eval/<model>/<task>/answers.jsonl`, or `answers.chunk<I>-of-<N>.jsonl`."""
    name = "answers.jsonl" if num_chunks == 1 else f"answers.chunk{chunk_idx}-of-{num_chunks}.jsonl"
    return os.path.join(DEFAULT_OUTPUT_ROOT, model_id, task, name)


def build_run_config(args: argparse.Namespace, conv_mode: str | None = None):
    """`RunConfig` from parsed `eval run` flags (defaults resolved, prefix file read)."""
    from llavamini.eval.runner import RunConfig
    from llavamini.model.loading import ModelSpec
    from llavamini.model.processing_llavamini import checkpoint_conv_mode

    task = _task(args.task)
    root = _data_root(args)
    model_id = args.model_name or os.path.basename(os.path.normpath(args.model_path))
    prefix, prefix_source = None, "task default"
    if args.prompt_prefix_file:
        with open(args.prompt_prefix_file, encoding="utf-8") as file:
            prefix = file.read()
        prefix_source = args.prompt_prefix_file
    spec = ModelSpec(args.model_path, args.device, args.dtype, args.attn_implementation)
    return RunConfig(
        task=task,
        model_path=args.model_path,
        answers_file=args.answers_file
        or default_answers_file(model_id, task.name, args.num_chunks, args.chunk_idx),
        questions_file=args.questions or task.path(root, task.questions),
        visual_folder=args.visual_folder or task.path(root, task.visual_folder),
        conv_mode=args.conv_mode or conv_mode or checkpoint_conv_mode(args.model_path),
        batch_size=args.batch_size,
        num_chunks=args.num_chunks,
        chunk_idx=args.chunk_idx,
        shard_mode=args.shard_mode,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        num_beams=args.num_beams,
        fps=args.fps,
        max_frames=args.max_frames,
        prompt_prefix=prefix,
        prompt_prefix_source=prefix_source,
        model_name=model_id,
        device=spec.resolved_device,
        dtype=spec.resolved_dtype,
        attn_implementation=args.attn_implementation,
        num_workers=args.num_workers,
        limit=args.limit,
    )


def run_command(args: argparse.Namespace, loaded=None) -> str:
    """`eval run`: answer the questions; returns the answer file."""
    from llavamini.eval.runner import run_questions

    try:
        config = build_run_config(args, loaded.processor.conv_mode if loaded is not None else None)
    except ValueError as error:  # a flag out of range (--temperature -1, --dtype, ...)
        raise SystemExit(f"llavamini eval run: error: {error}") from error
    if args.overwrite and os.path.exists(config.answers_file):
        logger.info("--overwrite: removing %s", config.answers_file)
        os.remove(config.answers_file)
    path = run_questions(config, loaded=loaded)
    logger.info("Answers in %s", path)
    return path


def _output_prefix(answers: str) -> str:
    return answers[: -len(".jsonl")] if answers.endswith(".jsonl") else answers


def score_command(args: argparse.Namespace) -> dict:
    """`eval score`: compute the metrics, print them as JSON, save them beside the answers."""
    result = compute_score(args)
    sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    return result


def compute_score(args: argparse.Namespace) -> dict:
    """The metrics of `eval score`, saved beside the answers (not printed)."""
    from llavamini.eval.answers import read_answers, run_settings
    from llavamini.eval.tasks.base import ScoreInputs, write_json

    task = _task(args.task)
    root = _data_root(args)
    prefix = _output_prefix(args.answers)
    answers = read_answers(args.answers)
    judge = {
        "base_url": args.judge_base_url,
        "model": args.judge_model,
        "cache_dir": args.judge_cache or prefix + ".judge_cache",
        "workers": args.judge_workers,
        "retries": args.judge_retries,
        "timeout_s": args.judge_timeout,
        "backoff_s": args.judge_backoff,
    }
    inputs = ScoreInputs(
        answers=answers,
        questions=args.questions or task.path(root, task.score_questions or task.questions),
        annotations=args.annotations or task.path(root, task.annotations),
        output_prefix=prefix,
        options={
            "judge": judge,
            "allow_judge_failures": args.allow_judge_failures,
            "matcher": args.matcher,
            "judge_prompt_file": args.judge_prompt_file,
        },
    )
    result = {"task": task.name, "answers": args.answers, "answered": len(answers)}
    result.update(task.score(inputs))
    settings = run_settings(answers)
    result["run"] = settings[0] if len(settings) == 1 else settings
    result["output"] = args.output or prefix + ".score.json"
    write_json(result["output"], result)
    return result


def merge_command(args: argparse.Namespace) -> int:
    """`eval merge`: concatenate shard answer files into one."""
    from llavamini.eval.answers import merge_answer_files

    count = merge_answer_files(args.inputs, args.output)
    logger.info("Merged %d answers from %d files into %s", count, len(args.inputs), args.output)
    return count


def list_tasks(args: argparse.Namespace) -> None:
    """`eval list`: one line per task with its default question file."""
    from llavamini.eval.tasks import TASKS

    root = _data_root(args)
    for name, task in TASKS.items():
        path = task.path(root, task.questions)
        sys.stdout.write(f"{name:16} {task.description}\n{'':16} questions: {path}\n")


def main(argv: list[str] | None = None) -> None:
    """`python -m llavamini.eval ...` (the same commands without the `llavamini` front end)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m llavamini.eval",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_commands(parser.add_subparsers(dest="eval_command", required=True))
    args = parser.parse_args(argv)
    args.func(args)
