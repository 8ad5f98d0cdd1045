"""`llavamini eval {run,score,merge,list}`: benchmark answers, scores and shard merging.

    llavamini eval run TASK --model-path PATH [--batch-size B] [--num-chunks N --chunk-idx I]
    llavamini eval merge --output answers.jsonl answers.chunk*.jsonl
    llavamini eval score TASK --answers answers.jsonl [--questions F] [--annotations F]
    llavamini eval list

Files default to LLaVA's `eval.zip` layout under `--data-root` (playground/data/eval); answers
to `outputs/eval/<model name>/<task>/answers.jsonl` (`answers.chunk<I>-of-<N>.jsonl` for a
shard). `score` prints one JSON object (its `accuracy` is the headline metric) and saves it as
`<answers without .jsonl>.score.json`. Each sub-command is a function of this module (`run`,
`score`, `merge`, `list_tasks`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Annotated, Literal

from llavamini.errors import UsageError
from llavamini.eval.answers import merge_answer_files, read_answers, run_settings
from llavamini.eval.arguments import TASK_HELP, TaskFiles, check_task, run_config
from llavamini.eval.runner import REFERENCE_VIDEO_FPS, TASK_DEFAULT_GENERATION, run_questions
from llavamini.eval.tasks import TASKS
from llavamini.eval.tasks.base import ScoreInputs, write_json
from llavamini.flags import only, standalone_main, standalone_parser
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What `eval run` answers, and how.

    Attributes:
        task: the task name (`TASKS`).
        model_name: model_id in the answers (None: the checkpoint folder's name).
        answers_file: answer JSONL to append to (None: `runner.default_answers_file`).
        batch_size: questions per generate call (answers equal batch size 1's).
        num_chunks, chunk_idx, shard_mode: which shard of the questions this process answers.
        prompt_prefix_file: text put before every question instead of the task's.
        num_workers: threads loading visuals ahead of generation.
        limit: only the first N questions.
        overwrite: delete the answer file first instead of resuming it.
    """

    task: str = field(metadata={"positional": True, "help": TASK_HELP})
    model_name: str | None = field(
        default=None, metadata={"help": "model_id in the answers (default: folder name)"}
    )
    answers_file: str | None = field(default=None, metadata={"help": "answer JSONL to append to"})
    batch_size: int = field(
        default=1, metadata={"help": "questions per generate call (answers equal batch size 1's)"}
    )
    num_chunks: int = field(default=1, metadata={"help": "shards of the question file"})
    chunk_idx: int = field(default=0, metadata={"help": "which shard this process answers"})
    shard_mode: Literal["contiguous", "strided"] = "contiguous"
    prompt_prefix_file: str | None = field(
        default=None,
        metadata={
            "help": "text put before every question instead of the task's (video QA: the "
            "reference's exact instruction)"
        },
    )
    num_workers: int = field(default=2, metadata={"help": "threads loading visuals ahead"})
    limit: int | None = field(default=None, metadata={"help": "only the first N questions"})
    overwrite: bool = field(
        default=False, metadata={"help": "delete the answer file first instead of resuming it"}
    )

    def __post_init__(self):
        check_task(self.task)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def prompt_prefix(self) -> tuple[str | None, str]:
        """`(prefix or None for the task's, where it came from)`."""
        if not self.prompt_prefix_file:
            return None, "task default"
        with open(self.prompt_prefix_file, encoding="utf-8") as file:
            return file.read(), self.prompt_prefix_file


def run(
    options: RunOptions,
    model: ModelSpec,
    generation: GenerationSettings = TASK_DEFAULT_GENERATION,
    inputs: InputSettings = InputSettings(video_fps=REFERENCE_VIDEO_FPS),
    files: Annotated[TaskFiles, only("data_root", "questions", "visual_folder")] = TaskFiles(),
    loaded=None,
) -> str:
    """Answer a task's questions with a checkpoint; returns the answer file.

    Decoding is greedy with the task's answer length (the reference's: 128, or 1024 for
    MMBench, ScienceQA and video QA) unless `--max-new-tokens` and the other decoding flags say
    otherwise; videos are sampled at 1 frame per second. Every setting of the model, decoding
    and input is recorded in each answer line and checked when a run resumes.
    `loaded`: an already loaded `LoadedModel` (its conv mode is the default template).
    """
    prefix, prefix_source = options.prompt_prefix()
    config = run_config(
        check_task(options.task),
        model,
        files,
        inputs,
        generation,
        loaded=loaded,
        model_name=options.model_name,
        answers_file=options.answers_file,
        batch_size=options.batch_size,
        num_chunks=options.num_chunks,
        chunk_idx=options.chunk_idx,
        shard_mode=options.shard_mode,
        prompt_prefix=prefix,
        prompt_prefix_source=prefix_source,
        num_workers=options.num_workers,
        limit=options.limit,
    )
    if options.overwrite and os.path.exists(config.answers_file):
        logger.info("--overwrite: removing %s", config.answers_file)
        os.remove(config.answers_file)
    try:
        path = run_questions(config, loaded=loaded)
    except ValueError as error:
        # Bad input (a malformed question file, an unreadable image, a prompt past the
        # context) is named in one line; answers written so far stay, for a resumed run.
        raise UsageError(f"llavamini eval run: {error}") from error
    logger.info("Answers in %s", path)
    return path


@dataclass(frozen=True)
class ScoreOptions:
    """What `eval score` scores.

    Attributes:
        task: the task name.
        answers: answer JSONL (merged shards).
        output: result JSON (None: beside `answers`).
        matcher: MMBench's VLMEvalKit answer-matching rules.
    """

    task: str = field(metadata={"positional": True, "help": TASK_HELP})
    answers: str = field(metadata={"help": "answer JSONL (merged shards)"})
    output: str | None = field(
        default=None, metadata={"help": "result JSON (default: beside --answers)"}
    )
    matcher: Literal["current", "2025-08", "v0.2"] = field(
        default="current",
        metadata={
            "help": "MMBench: VLMEvalKit answer-matching rules (current: main since 2026-06; "
            "2025-08: before the 'answer is X' rule; v0.2: releases v0.2 and v0.3rc1)"
        },
    )

    def __post_init__(self):
        check_task(self.task)

    @property
    def output_prefix(self) -> str:
        answers = self.answers
        return answers[: -len(".jsonl")] if answers.endswith(".jsonl") else answers


@dataclass(frozen=True)
class JudgeOptions:
    """The LLM judge (video QA; MMBench answers the matcher cannot read, when configured)."""

    judge_base_url: str | None = field(
        default=None, metadata={"help": "else $LLAVAMINI_JUDGE_BASE_URL"}
    )
    judge_model: str | None = field(default=None, metadata={"help": "else $LLAVAMINI_JUDGE_MODEL"})
    judge_cache: str | None = field(
        default=None, metadata={"help": "judgment cache folder (default: <answers>.judge_cache)"}
    )
    judge_prompt_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON with the judge's messages instead of ours, e.g. the reference's own: "
            "video QA 'system' and 'user' ({question}, {answer}, {prediction}); MMBench "
            "'template', 'template_cn' and 'options_header' (positional {} for question, "
            "options, answer)"
        },
    )
    judge_workers: int = field(default=8, metadata={"help": "parallel requests"})
    judge_retries: int = field(default=5, metadata={"help": "retries per judgment"})
    judge_timeout: float = field(default=60.0, metadata={"help": "seconds per request"})
    judge_backoff: float = field(
        default=2.0, metadata={"help": "first wait between retries (doubles)"}
    )
    allow_judge_failures: bool = field(
        default=False,
        metadata={"help": "score without judgments that kept failing instead of stopping"},
    )

    def client_settings(self, output_prefix: str) -> dict:
        """The `judge` option of `ScoreInputs`."""
        return {
            "base_url": self.judge_base_url,
            "model": self.judge_model,
            "cache_dir": self.judge_cache or output_prefix + ".judge_cache",
            "workers": self.judge_workers,
            "retries": self.judge_retries,
            "timeout_s": self.judge_timeout,
            "backoff_s": self.judge_backoff,
        }


def compute_score(
    options: ScoreOptions,
    files: Annotated[TaskFiles, only("data_root", "questions", "annotations")] = TaskFiles(),
    judge: JudgeOptions = JudgeOptions(),
) -> dict:
    """The metrics of `eval score`, saved beside the answers (not printed)."""
    task = check_task(options.task)
    prefix = options.output_prefix
    answers = read_answers(options.answers)
    inputs = ScoreInputs(
        answers=answers,
        questions=files.questions_file(task, scoring=True),
        annotations=files.annotations_of(task),
        output_prefix=prefix,
        options={
            "judge": judge.client_settings(prefix),
            "allow_judge_failures": judge.allow_judge_failures,
            "matcher": options.matcher,
            "judge_prompt_file": judge.judge_prompt_file,
        },
    )
    result = {"task": task.name, "answers": options.answers, "answered": len(answers)}
    result.update(task.score(inputs))
    settings = run_settings(answers)
    result["run"] = settings[0] if len(settings) == 1 else settings
    result["output"] = options.output or prefix + ".score.json"
    write_json(result["output"], result)
    return result


def score(
    options: ScoreOptions,
    files: Annotated[TaskFiles, only("data_root", "questions", "annotations")] = TaskFiles(),
    judge: JudgeOptions = JudgeOptions(),
) -> dict:
    """Score an answer file: compute the metrics, print them as JSON, save them beside it."""
    result = compute_score(options, files, judge)
    sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    return result


@dataclass(frozen=True)
class MergeOptions:
    """Shard answer files (`inputs`) and the merged file (`output`)."""

    inputs: tuple[str, ...] = field(metadata={"positional": True, "help": "shard answer files"})
    output: str = field(metadata={"help": "merged answer file"})


def merge(options: MergeOptions) -> int:
    """Concatenate shard answer files into one; returns the number of answers."""
    count = merge_answer_files(list(options.inputs), options.output)
    logger.info(
        "Merged %d answers from %d files into %s", count, len(options.inputs), options.output
    )
    return count


def list_tasks(files: Annotated[TaskFiles, only("data_root")] = TaskFiles()) -> None:
    """List the tasks and their default question files."""
    for name, task in TASKS.items():
        path = task.path(files.root, task.questions)
        sys.stdout.write(f"{name:16} {task.description}\n{'':16} questions: {path}\n")


VERBS = {"run": run, "score": score, "merge": merge, "list": list_tasks}
"""The `llavamini eval` sub-commands."""


PROG = "python -m llavamini.eval"


def build_parser():
    """The stand-alone parser of `python -m llavamini.eval`."""
    return standalone_parser(VERBS, PROG, __doc__)


def main(argv: list[str] | None = None) -> None:
    """`python -m llavamini.eval ...` (the same commands without the `llavamini` front end)."""
    standalone_main(VERBS, PROG, __doc__, argv)
