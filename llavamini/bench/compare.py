"""`llavamini compare`: trained compressors against training-free token reduction, in one harness.

Each row is a checkpoint, optionally with a training-free reduction (`llavamini.model.reduction`)
at a budget of vision tokens per image. A LLaVA-1.5-mode checkpoint (`--checkpoint`) gives a row
with every vision token and one per method and budget; each `--trained LABEL=PATH` gives a row of
its own. Per row:

* accuracy: the task's official scorer on answers from the eval runner (`llavamini eval run`'s
  code, one answer file per row under `<output-dir>/answers/`, resumed when it is there);
* vision tokens the LLM sees per image, and the KV cache they take, read from the cache a
  prefill of the first question leaves (FastV: the tokens of its last layers; the cache counts
  every layer's own);
* FLOPs of that prefill (the work before the first token; the first decode step apart), counted
  with `torch.utils.flop_counter` on the model's own path with the reduction applied
  (`llavamini.bench.flopcount.counted_flops`): fewer tokens after a vision-side method, FastV's
  full layers before K and pruned ones after, and the ranking each method computes;
* time to first token on this machine: the median (and the minimum, what a busy host disturbs
  least) of `repeats` prefills of the first question, the rows of a checkpoint interleaved
  (`llavamini.bench.timing.time_cases`).

A checkpoint loads once; its rows switch the reduction (`set_token_reduction`). A budget that a
method cannot run on the checkpoint (more tokens than the encoder gives, a non-square grid for
`pool`) makes a row that says why; an unknown method or a budget below 1 is refused before any
loading. Writes `compare.json` (rows, settings, machine) and `compare.png` (accuracy against
FLOPs and against TTFT, one line per method).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import gc
import json
import logging
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Annotated

import torch
from matplotlib.figure import Figure

from llavamini.bench.flopcount import counted_flops
from llavamini.bench.report import markdown_table
from llavamini.bench.timing import GenerationCase, new_cache, prefill, time_cases
from llavamini.errors import UsageError
from llavamini.eval.arguments import TaskFiles, check_task
from llavamini.eval.cli import RunOptions, ScoreOptions, compute_score
from llavamini.eval.cli import run as run_evaluation
from llavamini.eval.runner import (
    REFERENCE_VIDEO_FPS,
    TASK_DEFAULT_GENERATION,
    load_question_visual,
    question_inputs,
)
from llavamini.flags import only
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec
from llavamini.model.reduction import METHODS, TokenReductionError

logger = logging.getLogger(__name__)

ALL_TOKENS = "all tokens"
"""The label of the LLaVA-1.5-mode checkpoint's row without a reduction."""

TRAINED = "trained"
"""The `method` of a `--trained` row (its own compressor, no reduction)."""

LOADING = ModelSpec(path="")
"""How every checkpoint loads by default (its path is each row's)."""


def check_budget(value: int) -> None:
    """A budget: at least one vision token per image."""
    if value < 1:
        raise ValueError(f"a budget is vision tokens per image, at least 1; got {value}")


def check_method(name: str) -> None:
    """A `METHODS` name."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")


def check_trained(value: str) -> None:
    """`LABEL=PATH`, both non-empty."""
    label, _, path = value.partition("=")
    if not label or not path:
        raise ValueError(f"expected LABEL=PATH, got {value!r}")


@dataclass(frozen=True)
class CompareOptions:
    """The rows `llavamini compare` runs, and where it writes.

    Attributes:
        checkpoint: a LLaVA-1.5-mode checkpoint (no compressor): a row with every vision token,
            and one per method and budget.
        methods: training-free methods (`METHODS` names) run on `checkpoint`.
        budgets: vision tokens per image the LLM sees.
        trained: more checkpoints as rows of their own, `LABEL=PATH`, evaluated as they are.
        output_dir: compare.json, compare.png and answers/.
        warmup, repeats: unrecorded and timed prefills per row (TTFT is their median).
    """

    checkpoint: str | None = field(
        default=None, metadata={"help": "LLaVA-1.5-mode checkpoint the methods run on"}
    )
    methods: tuple[str, ...] = field(
        default=tuple(METHODS),
        metadata={"check": check_method, "help": "training-free methods run on --checkpoint"},
    )
    budgets: tuple[int, ...] = field(
        default=(1, 4, 16, 64, 144),
        metadata={
            "check": check_budget,
            "help": "vision tokens per image the LLM sees, for each method",
        },
    )
    trained: tuple[str, ...] = field(
        default=(),
        metadata={
            "check": check_trained,
            "help": "more checkpoints, each a row: LABEL=PATH",
        },
    )
    output_dir: str = os.path.join("outputs", "compare")
    warmup: int = 1
    repeats: int = field(default=5, metadata={"help": "timed prefills per row (TTFT: median)"})

    def __post_init__(self):
        for name in self.methods:
            check_method(name)
        for value in self.budgets:
            check_budget(value)
        for value in self.trained:
            check_trained(value)
        if self.checkpoint is None and not self.trained:
            raise ValueError("nothing to compare: give --checkpoint and/or --trained LABEL=PATH")
        self.rows()  # distinct labels
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")

    def rows(self) -> list[Row]:
        """The checkpoint's rows (every token, then method by method, budget by budget), then
        the trained ones."""
        rows = []
        if self.checkpoint is not None:
            rows.append(Row(ALL_TOKENS, self.checkpoint, "none", None))
            rows += [
                Row(f"{method} {budget}", self.checkpoint, method, budget)
                for method in self.methods
                for budget in self.budgets
            ]
        for value in self.trained:
            label, _, path = value.partition("=")
            rows.append(Row(label, path, TRAINED, None))
        labels = [row.label for row in rows]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"rows need distinct labels; repeated: {repeated}")
        return rows


@dataclass(frozen=True)
class Row:
    """One row: a checkpoint, and the method and budget applied to it ('none': every vision
    token; `TRAINED`: the checkpoint's own compressor)."""

    label: str
    checkpoint: str
    method: str
    budget: int | None

    @property
    def file_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.label).strip("-") or "row"

    def model_spec(self, loading: ModelSpec) -> ModelSpec:
        """`loading` for this row's checkpoint, with its reduction."""
        reduction = self.method if self.method in METHODS else None
        budget = self.budget if reduction is not None else None
        return dataclasses.replace(
            loading, path=self.checkpoint, reduction=reduction, reduction_tokens=budget
        )


def first_question_inputs(evaluation: RunOptions, files: TaskFiles, loaded, inputs: InputSettings):
    """`(input_ids (1, L), images (1, parts, 3, H, W))` of the task's first question with its
    image, in the evaluation's prompt (the prompt the FLOPs, cache and TTFT are measured on)."""
    task = check_task(evaluation.task)
    questions = task.read_questions(files.questions_file(task), files.visual_folder_of(task))
    question = next((q for q in questions if q.visual is not None), None)
    if question is None:
        raise UsageError(f"{evaluation.task}: no question has an image to measure the cost on.")
    processor = loaded.processor
    visual = load_question_visual(question, processor, task)
    prefix, _ = evaluation.prompt_prefix()
    conv_mode = inputs.conv_mode or processor.conv_mode
    batch = question_inputs(processor, [question], [visual], task, conv_mode, prefix)
    device = loaded.model.device
    return batch["input_ids"].to(device), batch["images"][0][0].unsqueeze(0).to(device)


def cache_per_image(model, input_ids: torch.Tensor, images: torch.Tensor) -> dict:
    """Vision tokens the LLM's last layer holds and the KV-cache bytes of the vision tokens
    over all layers, from one prefill of a one-image prompt `(1, L)`."""
    cache = new_cache(model, 0, static=False)
    prefill(model, input_ids, images, cache)
    text = input_ids.shape[1] - 1  # the placeholder is replaced by the vision tokens
    vision_bytes, vision_tokens = 0, 0
    for layer in cache.layers:
        length = layer.keys.shape[-2]
        per_token = (layer.keys.numel() + layer.values.numel()) * layer.keys.element_size()
        vision_tokens = length - text
        vision_bytes += per_token // length * vision_tokens
    return {"vision_tokens": vision_tokens, "kv_cache_bytes": vision_bytes}


def measure_rows(
    rows: list[Row],
    loading: ModelSpec,
    evaluation: RunOptions,
    generation: GenerationSettings,
    inputs: InputSettings,
    files: TaskFiles,
    options: CompareOptions,
) -> list[dict]:
    """Every row of one checkpoint (all `rows` share it): load it once, then per row its cost
    and its answers, then the TTFT of the rows that ran, interleaved."""
    loaded = dataclasses.replace(loading, path=rows[0].checkpoint).load()
    model = loaded.model
    input_ids, images = first_question_inputs(evaluation, files, loaded, inputs)
    results, cases = [], {}
    for row in rows:
        spec = row.model_spec(loading)
        result = {"label": row.label, "method": row.method, "budget": row.budget}
        result["checkpoint"] = row.checkpoint
        try:
            with model.token_reduction_applied(spec.token_reduction):
                flops = counted_flops(model, input_ids, images)
                result.update(cache_per_image(model, input_ids, images))
        except TokenReductionError as error:
            logger.warning("%s: not run: %s", row.label, error)
            results.append({**result, "skipped": str(error)})
            continue
        result["flops"] = flops["prefill_total"]
        result["flops_by_component"] = flops
        answers = os.path.join(options.output_dir, "answers", f"{row.file_name}.jsonl")
        row_evaluation = dataclasses.replace(
            evaluation, answers_file=answers, model_name=row.file_name
        )
        path = run_evaluation(row_evaluation, spec, generation, inputs, files, loaded=loaded)
        score = compute_score(ScoreOptions(evaluation.task, answers=path), files)
        result["accuracy"] = score["accuracy"]
        result["metrics"] = {k: v for k, v in score.items() if k not in ("run", "answers")}
        result["answers"] = path
        results.append(result)
        switch = functools.partial(model.set_token_reduction, spec.token_reduction)
        cases[row.label] = GenerationCase(model, input_ids, images, new_tokens=2, prepare=switch)
    timed = time_cases(cases, options.warmup, options.repeats)
    model.set_token_reduction(None)
    for result in results:
        if result["label"] in timed:
            result["ttft_ms"] = timed[result["label"]].ttft_ms
            result["ttft_runs_ms"] = timed[result["label"]].ttft_runs_ms
            result["ttft_min_ms"] = min(result["ttft_runs_ms"])
    return results


def machine() -> dict:
    """What the timings were measured on."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (a row that did not run says why)."""
    headers = [
        "row",
        "LLM vision tokens",
        "accuracy",
        "MFLOPs (prefill)",
        "TTFT ms, median (min)",
        "KV cache KiB/image",
    ]
    cells = []
    for row in rows:
        if "skipped" in row:
            cells.append([row["label"], f"not run: {row['skipped']}", "", "", "", ""])
            continue
        cells.append(
            [
                row["label"],
                row["vision_tokens"],
                f"{row['accuracy']:.1f}",
                f"{row['flops'] / 1e6:.1f}",
                f"{row['ttft_ms']:.1f} ({row['ttft_min_ms']:.1f})",
                f"{row['kv_cache_bytes'] / 1024:.1f}",
            ]
        )
    return markdown_table(headers, cells)


def plot(rows: list[dict], path: str, title: str) -> str:
    """Accuracy against prefill FLOPs and against TTFT: a line per method over its budgets, a
    point per other row."""
    figure = Figure(figsize=(11, 4.5))
    axes = figure.subplots(1, 2)
    ran = [row for row in rows if "skipped" not in row]
    groups: dict[str, list[dict]] = {}
    for row in ran:
        key = row["method"] if row["method"] in METHODS else row["label"]
        groups.setdefault(key, []).append(row)
    for axis, (x, name) in zip(
        axes, (("flops", "prefill MFLOPs (log scale)"), ("ttft_ms", "TTFT ms")), strict=True
    ):
        scale = 1e6 if x == "flops" else 1
        for key, members in groups.items():
            members = sorted(members, key=lambda r: r["budget"] or 0)
            xs = [r[x] / scale for r in members]
            style = "o-" if len(members) > 1 else "s"
            axis.plot(xs, [r["accuracy"] for r in members], style, label=key)
            for member, position in zip(members, xs, strict=True):
                if member["budget"] is not None:
                    point = (position, member["accuracy"])
                    axis.annotate(
                        str(member["budget"]),
                        point,
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        axis.set(xlabel=name, ylabel="accuracy (%)")
        if x == "flops":
            axis.set_xscale("log")
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def compare(
    evaluation: Annotated[
        RunOptions,
        only("task", "batch_size", "num_workers", "limit", "prompt_prefix_file", "overwrite"),
    ],
    options: CompareOptions,
    model: Annotated[
        ModelSpec, only("device", "dtype", "attn_implementation", "reduction_seed", "fastv_layer")
    ] = LOADING,
    generation: GenerationSettings = TASK_DEFAULT_GENERATION,
    inputs: Annotated[InputSettings, only("conv_mode")] = InputSettings(
        video_fps=REFERENCE_VIDEO_FPS
    ),
    files: TaskFiles = TaskFiles(),
    print_table: bool = True,
) -> dict:
    """Run every row on a task: accuracy, LLM vision tokens, prefill FLOPs, TTFT and KV cache
    per image; write compare.json and compare.png, and print the table (unless
    `print_table` is False); returns what the JSON holds (`rows` in `CompareOptions.rows`
    order, each with `skipped` when it could not run).

    `evaluation.overwrite` answers every row anew instead of resuming its answer file."""
    rows = options.rows()
    task = check_task(evaluation.task)
    if task.modality != "image":
        raise UsageError(
            f"llavamini compare measures one-image prompts; {task.name} is {task.modality}."
        )
    os.makedirs(options.output_dir, exist_ok=True)
    results: list[dict] = []
    for checkpoint in dict.fromkeys(row.checkpoint for row in rows):
        group = [row for row in rows if row.checkpoint == checkpoint]
        results += measure_rows(group, model, evaluation, generation, inputs, files, options)
        gc.collect()  # one model at a time: the last one is gone before the next loads
    order = {row.label: index for index, row in enumerate(rows)}
    results.sort(key=lambda result: order[result["label"]])
    summary = {
        "task": task.name,
        "settings": {
            "evaluation": dataclasses.asdict(evaluation),
            "options": dataclasses.asdict(options),
            "model": dataclasses.asdict(model),
            "generation": dataclasses.asdict(generation),
            "files": dataclasses.asdict(files),
        },
        "machine": machine(),
        "rows": results,
    }
    summary["plot"] = plot(
        results, os.path.join(options.output_dir, "compare.png"), f"{task.name}: accuracy vs cost"
    )
    json_path = os.path.join(options.output_dir, "compare.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    if print_table:
        sys.stdout.write(table(results) + f"\n\nWrote {json_path} and {summary['plot']}\n")
    return summary
