"""`llavamini analyze {attention,drop-vision,compression}`: how a checkpoint uses its vision tokens.

    llavamini analyze attention --model-path PATH --data FILE [--image-folder DIR] [--limit N]
    llavamini analyze drop-vision --model-path PATH --task TASK [--layers 0,4,8] [--limit N]
    llavamini analyze compression --model-path PATH --image FILE

Outputs go to `--output-dir` (default `outputs/analysis/<model name>/<command>`): a JSON report
and PNG figures. See docs/analysis.md for what each measure means. Only the standard library is
imported at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from llavamini.cli import add_device_arguments

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = os.path.join("outputs", "analysis")


def add_parser(commands) -> None:
    """Add `analyze` and its sub-commands to the `llavamini` sub-command parsers."""
    parser = commands.add_parser(
        "analyze",
        help="how a checkpoint uses its vision tokens (attention, token dropping, compression)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_commands(parser.add_subparsers(dest="analyze_command", required=True))


def add_commands(commands) -> None:
    """The `attention`, `drop-vision` and `compression` sub-commands."""
    _add_attention(commands)
    _add_drop_vision(commands)
    _add_compression(commands)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="checkpoint folder or cached hub id")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where the report and figures go (default: outputs/analysis/<model>/<command>)",
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--attn-implementation",
        default=None,
        help="sdpa (default), eager or flash_attention_2; the analysis reads weights from any",
    )


def _add_attention(commands) -> None:
    parser = commands.add_parser(
        "attention",
        help="per layer: attention of text and answer tokens to vision, system and other text",
        allow_abbrev=False,
    )
    _add_model_flags(parser)
    parser.add_argument(
        "--data",
        required=True,
        help="LLaVA question file (.jsonl: question_id, image, text; answers are generated) or "
        "LLaVA-format conversation file (.json: the first question and its answer)",
    )
    parser.add_argument(
        "--image-folder", default=None, help="image paths are relative to it (default: --data's)"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples")
    parser.add_argument(
        "--conv-mode",
        default=None,
        help="chat template (default: the checkpoint's, from its tokenizer)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="length limit of generated answers"
    )
    parser.set_defaults(func=attention_command)


def _add_drop_vision(commands) -> None:
    parser = commands.add_parser(
        "drop-vision",
        help="accuracy when the vision tokens are removed from layer L on",
        allow_abbrev=False,
    )
    _add_model_flags(parser)
    parser.add_argument("--task", required=True, help="task name (see `llavamini eval list`)")
    parser.add_argument(
        "--layers",
        default=None,
        help="comma-separated first layers without vision tokens, e.g. 0,4,8 (default: every "
        "layer); the no-drop baseline (the number of layers) is always added",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument(
        "--data-root", default=None, help="LLaVA eval.zip root (default: playground/data/eval)"
    )
    parser.add_argument(
        "--questions", default=None, help="question file (default: the task's in the data root)"
    )
    parser.add_argument(
        "--visual-folder",
        "--image-folder",
        default=None,
        help="images/videos folder (default: the task's in the data root)",
    )
    parser.add_argument(
        "--annotations", default=None, help="labels (default: the task's in the data root)"
    )
    parser.add_argument(
        "--conv-mode",
        default=None,
        help="chat template (default: the checkpoint's, from its tokenizer)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="default: the task's (the reference's)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="answer again instead of resuming answer files"
    )
    parser.set_defaults(func=drop_vision_command)


def _add_compression(commands) -> None:
    parser = commands.add_parser(
        "compression",
        help="heat map of what each compressed token attends to in an image",
        allow_abbrev=False,
    )
    _add_model_flags(parser)
    parser.add_argument("--image", required=True, help="the image file")
    parser.add_argument("--output", default=None, help="PNG path (default: in --output-dir)")
    parser.set_defaults(func=compression_command)


def _model_name(model_path: str) -> str:
    return os.path.basename(os.path.normpath(model_path))


def output_dir(args: argparse.Namespace, command: str) -> str:
    """`--output-dir`, else `outputs/analysis/<model name>/<command>`."""
    return args.output_dir or os.path.join(
        DEFAULT_OUTPUT_ROOT, _model_name(args.model_path), command
    )


def model_spec(args: argparse.Namespace):
    """The `ModelSpec` of the model flags."""
    from llavamini.model.loading import ModelSpec

    return ModelSpec(args.model_path, args.device, args.dtype, args.attn_implementation)


def load_model(args: argparse.Namespace):
    """The checkpoint as a `LoadedModel`, in eval mode, on the chosen device and dtype."""
    return model_spec(args).load()


def write_report(report: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, ensure_ascii=False, indent=1)
        file.write("\n")
    return path


def attention_command(args: argparse.Namespace, loaded=None) -> dict:
    """`analyze attention`: the report (also written as attention.json) and three figures."""
    from llavamini.analysis.attention import analyze_attention, summary_lines
    from llavamini.analysis.plots import plot_attention
    from llavamini.analysis.tokens import read_samples
    from llavamini.conversation import default_template_name

    folder = output_dir(args, "attention")
    try:
        samples = read_samples(args.data, args.image_folder)[: args.limit]
        missing = [s.image for s in samples if not os.path.isfile(s.image)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(samples)} images are missing, e.g. {missing[:3]}: check "
                f"--image-folder."
            )
        loaded = loaded if loaded is not None else load_model(args)
        conv_mode = args.conv_mode or default_template_name(loaded.tokenizer)
        report = analyze_attention(loaded, samples, conv_mode, args.max_new_tokens)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise SystemExit(f"error: {error}") from error
    report = {"model_path": args.model_path, "data": args.data, **report}
    title = f"{_model_name(args.model_path)}: {report['samples']} samples of {args.data}"
    report["figures"] = plot_attention(report, folder, title)
    report["json"] = os.path.join(folder, "attention.json")
    write_report(report, report["json"])
    sys.stdout.write("\n".join(summary_lines(report)) + "\n")
    sys.stdout.write(f"Report: {report['json']}\nFigures: {', '.join(report['figures'])}\n")
    return report


def build_run_config(args: argparse.Namespace):
    """The evaluation `RunConfig` behind `analyze drop-vision` (its answers file is set per
    drop layer)."""
    from llavamini.eval.runner import RunConfig
    from llavamini.eval.tasks import get_task
    from llavamini.eval.tasks.base import DEFAULT_DATA_ROOT
    from llavamini.model.processing_llavamini import checkpoint_conv_mode

    task = get_task(args.task)
    root = args.data_root or DEFAULT_DATA_ROOT
    spec = model_spec(args)
    return RunConfig(
        task=task,
        model_path=args.model_path,
        answers_file="",
        questions_file=args.questions or task.path(root, task.questions),
        visual_folder=args.visual_folder or task.path(root, task.visual_folder),
        conv_mode=args.conv_mode or checkpoint_conv_mode(args.model_path),
        max_new_tokens=args.max_new_tokens,
        model_name=_model_name(args.model_path),
        device=spec.resolved_device,
        dtype=spec.resolved_dtype,
        attn_implementation=args.attn_implementation,
        num_workers=0,
        limit=args.limit,
    )


def drop_vision_command(args: argparse.Namespace, loaded=None) -> dict:
    """`analyze drop-vision`: answers and scores per drop layer, drop_vision.json and a PNG."""
    from llavamini.analysis.drop_vision import answers_file_for, parse_layers, run_drop_vision
    from llavamini.analysis.plots import plot_drop_vision
    from llavamini.eval.runner import check_visuals_exist
    from llavamini.eval.tasks.base import DEFAULT_DATA_ROOT

    try:
        config = build_run_config(args)
        task = config.task
        questions = task.read_questions(config.questions_file, config.visual_folder)
        check_visuals_exist(questions[: args.limit])
        folder = os.path.join(output_dir(args, "drop_vision"), task.name)
        loaded = loaded if loaded is not None else load_model(args)
        layers = parse_layers(args.layers, len(loaded.model.model.layers))
        if args.overwrite:
            for layer in layers:
                path = answers_file_for(folder, layer)
                if os.path.exists(path):
                    logger.info("--overwrite: removing %s", path)
                    os.remove(path)
        root = args.data_root or DEFAULT_DATA_ROOT
        score_questions = args.questions or task.path(root, task.score_questions or task.questions)
        annotations = args.annotations or task.path(root, task.annotations)
        report = run_drop_vision(loaded, config, layers, folder, score_questions, annotations)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise SystemExit(f"error: {error.args[0] if error.args else error}") from error
    report["json"] = os.path.join(folder, "drop_vision.json")
    title = f"{_model_name(args.model_path)}: {task.name}"
    report["figure"] = plot_drop_vision(report, os.path.join(folder, "drop_vision.png"), title)
    write_report(report, report["json"])
    lines = [f"{'drop from layer':>15} {'accuracy':>9} {'same answer %':>13}"]
    rows = zip(report["layers"], report["accuracy"], report["same_answer"], strict=True)
    for layer, accuracy, same in rows:
        note = "  (no drop)" if layer == report["baseline_layer"] else ""
        lines.append(f"{layer:>15} {accuracy!s:>9} {same!s:>13}{note}")
    sys.stdout.write("\n".join(lines) + f"\nReport: {report['json']}\n")
    return report


def compression_command(args: argparse.Namespace, loaded=None) -> str:
    """`analyze compression`: the compressor's attention as a heat map; returns the PNG."""
    from llavamini.analysis.compression import compression_attention, plot_compression

    path = args.output or os.path.join(output_dir(args, "compression"), "compression.png")
    try:
        loaded = loaded if loaded is not None else load_model(args)
        pixels, attention = compression_attention(loaded, args.image)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plot_compression(pixels, attention, path, f"{args.model_path}: {args.image}")
    sys.stdout.write(f"Wrote {path}\n")
    return path
