"""`llavamini analyze {attention,drop-vision,compression}`: how a checkpoint uses its vision tokens.

    llavamini analyze attention --model-path PATH --data FILE [--image-folder DIR] [--limit N]
    llavamini analyze drop-vision --model-path PATH --task TASK [--layers 0,4,8] [--limit N]
    llavamini analyze compression --model-path PATH --image FILE

Outputs go to `--output-dir` (default `outputs/analysis/<model name>/<command>`): a JSON report
and PNG figures. See docs/analysis.md for what each measure means.
Each sub-command is a function of this module (`attention`, `drop_vision`, `compression`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Annotated

from llavamini.analysis.attention import analyze_attention, summary_lines
from llavamini.analysis.compression import compression_attention, plot_compression
from llavamini.analysis.drop_vision import answers_file_for, parse_layers, run_drop_vision
from llavamini.analysis.plots import plot_attention, plot_drop_vision
from llavamini.analysis.tokens import read_samples
from llavamini.conversation import default_template_name
from llavamini.errors import UsageError
from llavamini.eval import arguments as eval_args
from llavamini.eval.runner import RunConfig, check_visuals_exist
from llavamini.flags import only
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = os.path.join("outputs", "analysis")


def _model_name(model_path: str) -> str:
    return os.path.basename(os.path.normpath(model_path))


@dataclass(frozen=True)
class Report:
    """Where an analysis writes its report and figures (`output_dir` None:
    outputs/analysis/<model name>/<command>)."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "where the report and figures go (default: outputs/analysis/<model>/<command>)"
        },
    )

    def folder(self, model_path: str, command: str) -> str:
        return self.output_dir or os.path.join(
            DEFAULT_OUTPUT_ROOT, _model_name(model_path), command
        )


def write_report(report: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, ensure_ascii=False, indent=1)
        file.write("\n")
    return path


@dataclass(frozen=True)
class AttentionOptions:
    """The samples `analyze attention` reads.

    Attributes:
        data: LLaVA question file (.jsonl) or conversation file (.json).
        image_folder: image paths are relative to it (None: `data`'s folder).
        limit: only the first N samples.
    """

    data: str = field(
        metadata={
            "help": "LLaVA question file (.jsonl: question_id, image, text; answers are "
            "generated) or LLaVA-format conversation file (.json: the first question and its "
            "answer)"
        }
    )
    image_folder: str | None = field(
        default=None, metadata={"help": "image paths are relative to it (default: --data's)"}
    )
    limit: int | None = field(default=None, metadata={"help": "only the first N samples"})


def attention(
    options: AttentionOptions,
    model: eval_args.UnquantizedModel,
    generation: Annotated[GenerationSettings, only("max_new_tokens")] = GenerationSettings(
        max_new_tokens=32
    ),
    inputs: Annotated[InputSettings, only("conv_mode")] = InputSettings(),
    report: Report = Report(),
    loaded=None,
) -> dict:
    """Per layer: attention of text and answer tokens to vision, system and other text.

    Writes attention.json and three figures; returns the report. Answers are generated
    greedily, up to `generation.max_new_tokens` tokens.
    """
    folder = report.folder(model.path, "attention")
    try:
        samples = read_samples(options.data, options.image_folder)[: options.limit]
        missing = [s.image for s in samples if not os.path.isfile(s.image)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(samples)} images are missing, e.g. {missing[:3]}: check "
                f"--image-folder."
            )
        loaded = loaded if loaded is not None else model.load()
        conv_mode = inputs.conv_mode or default_template_name(loaded.tokenizer)
        result = analyze_attention(loaded, samples, conv_mode, generation.max_new_tokens)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise UsageError(str(error)) from error
    result = {"model_path": model.path, "data": options.data, **result}
    title = f"{_model_name(model.path)}: {result['samples']} samples of {options.data}"
    result["figures"] = plot_attention(result, folder, title)
    result["json"] = os.path.join(folder, "attention.json")
    write_report(result, result["json"])
    sys.stdout.write("\n".join(summary_lines(result)) + "\n")
    sys.stdout.write(f"Report: {result['json']}\nFigures: {', '.join(result['figures'])}\n")
    return result


@dataclass(frozen=True)
class DropVisionOptions:
    """What `analyze drop-vision` answers.

    Attributes:
        task: the task name.
        layers: comma-separated first layers without vision tokens (None: every layer); the
            no-drop baseline is always added.
        limit: only the first N questions.
        max_new_tokens: answer length limit (None: the task's).
        overwrite: answer again instead of resuming answer files.
    """

    task: str = field(metadata={"help": eval_args.TASK_HELP})
    layers: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated first layers without vision tokens, e.g. 0,4,8 (default: "
            "every layer); the no-drop baseline (the number of layers) is always added"
        },
    )
    limit: int | None = field(default=None, metadata={"help": "only the first N questions"})
    max_new_tokens: int | None = eval_args.task_max_new_tokens()
    overwrite: bool = field(
        default=False, metadata={"help": "answer again instead of resuming answer files"}
    )

    def __post_init__(self):
        eval_args.check_task(self.task)


def _remove_answers(folder: str, layers: list[int]) -> None:
    for layer in layers:
        path = answers_file_for(folder, layer)
        if os.path.exists(path):
            logger.info("--overwrite: removing %s", path)
            os.remove(path)


def _drop_vision_table(report: dict) -> str:
    lines = [f"{'drop from layer':>15} {'accuracy':>9} {'same answer %':>13}"]
    rows = zip(report["layers"], report["accuracy"], report["same_answer"], strict=True)
    for layer, accuracy, same in rows:
        note = "  (no drop)" if layer == report["baseline_layer"] else ""
        lines.append(f"{layer:>15} {accuracy!s:>9} {same!s:>13}{note}")
    return "\n".join(lines)


def drop_vision_config(
    options: DropVisionOptions, model: ModelSpec, inputs: InputSettings, files: eval_args.TaskFiles
) -> RunConfig:
    """The evaluation `RunConfig` behind `analyze drop-vision` (its answers file is set per
    drop layer)."""
    return eval_args.run_config(
        eval_args.check_task(options.task),
        model,
        files,
        inputs,
        GenerationSettings(max_new_tokens=options.max_new_tokens),
        answers_file="",
        model_name=_model_name(model.path),
        num_workers=0,
        limit=options.limit,
    )


def drop_vision(
    options: DropVisionOptions,
    model: eval_args.UnquantizedModel,
    inputs: InputSettings = InputSettings(video_fps=1.0),
    files: eval_args.TaskFiles = eval_args.TaskFiles(),
    report: Report = Report(),
    loaded=None,
) -> dict:
    """Accuracy when the vision tokens are removed from layer L on.

    Answers and scores per drop layer; writes drop_vision.json and a PNG; returns the report.
    """
    try:
        config = drop_vision_config(options, model, inputs, files)
        task = config.task
        questions = task.read_questions(config.questions_file, config.visual_folder)
        check_visuals_exist(questions[: options.limit])
        folder = os.path.join(report.folder(model.path, "drop_vision"), task.name)
        loaded = loaded if loaded is not None else model.load()
        layers = parse_layers(options.layers, len(loaded.model.model.layers))
        if options.overwrite:
            _remove_answers(folder, layers)
        score_questions = files.questions_file(task, scoring=True)
        annotations = files.annotations_of(task)
        result = run_drop_vision(loaded, config, layers, folder, score_questions, annotations)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise UsageError(str(error.args[0] if error.args else error)) from error
    result["json"] = os.path.join(folder, "drop_vision.json")
    title = f"{_model_name(model.path)}: {task.name}"
    result["figure"] = plot_drop_vision(result, os.path.join(folder, "drop_vision.png"), title)
    write_report(result, result["json"])
    sys.stdout.write(_drop_vision_table(result) + f"\nReport: {result['json']}\n")
    return result


@dataclass(frozen=True)
class CompressionOptions:
    """The image of `analyze compression`, and the PNG (None: in the report folder)."""

    image: str = field(metadata={"help": "the image file"})
    output: str | None = field(
        default=None, metadata={"help": "PNG path (default: in --output-dir)"}
    )


def compression(
    options: CompressionOptions,
    model: eval_args.UnquantizedModel,
    report: Report = Report(),
    loaded=None,
) -> str:
    """Heat map of what each compressed token attends to in an image; returns the PNG."""
    path = options.output or os.path.join(
        report.folder(model.path, "compression"), "compression.png"
    )
    try:
        loaded = loaded if loaded is not None else model.load()
        pixels, weights = compression_attention(loaded, options.image)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plot_compression(pixels, weights, path, f"{model.path}: {options.image}")
    sys.stdout.write(f"Wrote {path}\n")
    return path


VERBS = {"attention": attention, "drop-vision": drop_vision, "compression": compression}
"""The `llavamini analyze` sub-commands."""
