"""`llavamini` command line: one entry point, one subcommand per job.

Every command is a plain function (a verb) whose parameters are small dataclasses: `ModelSpec`,
`GenerationSettings`, and an options class of its own. `COMMANDS` names each command's function
without importing it; the flags are generated from the dataclass fields (`add_verb`), so calling
the function from Python with its defaults is running the command with no flags. A verb's module
may name optional sub-commands in `SUBCOMMANDS` (`llavamini bench checkpoint`): the command runs
its own verb without one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from llavamini.errors import exit_on_command_error
from llavamini.flags import add_verb, add_verbs, parser_kwargs, start_process

COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "llavamini.apps.quickstart:quickstart",
        "train, evaluate and chat with a tiny LLaVA-Mini (CPU, minutes, no download)",
    ),
    "demo": (
        "llavamini.apps.demo:demo",
        "build a tiny random LLaVA-Mini and answer a question about an image (no download)",
    ),
    "tiny-assets": (
        "llavamini.apps.demo:tiny_assets",
        "write a tiny plain LLM, CLIP tower and synthetic data set (configs/train/tiny*.yaml)",
    ),
    "train": (
        "llavamini.train.cli:train",
        "train one stage: llavamini train RECIPE.yaml [--key value ...]",
    ),
    "data": ("llavamini.train.data_check:VERBS", "data tools: check"),
    "chat": (
        "llavamini.serve.cli:chat",
        "chat with a LLaVA-Mini checkpoint about images and videos (streamed, multi-turn)",
    ),
    "serve": (
        "llavamini.serve.server:serve",
        "serve a checkpoint over an OpenAI-compatible HTTP API (chat completions)",
    ),
    "gradio": (
        "llavamini.serve.gradio_app:gradio",
        "a browser demo of a checkpoint (Gradio, single process; needs the serve extra)",
    ),
    "eval": (
        "llavamini.eval.cli:VERBS",
        "answer and score benchmarks (VQAv2, GQA, MMBench, MSVD-QA, ...)",
    ),
    "analyze": (
        "llavamini.analysis.cli:VERBS",
        "how a checkpoint uses its vision tokens (attention, token dropping, compression)",
    ),
    "compare": (
        "llavamini.bench.compare:compare",
        "trained compressors vs training-free token reduction: accuracy, FLOPs, TTFT, KV cache",
    ),
    "bench": (
        "llavamini.bench.cli:bench",
        "efficiency benchmark: FLOPs vs the paper, TTFT, decode tok/s, memory, video",
    ),
}
"""Command name -> (`module:attribute`, one-line help). The attribute is a verb function, or a
dict of sub-command name -> verb function (`llavamini eval run`)."""

PASS_THROUGH = frozenset({"train"})
"""Commands whose function takes the raw arguments (`train` parses its recipe and overrides with
its own HfArgumentParser, `--help` included)."""


def resolve(command: str):
    """The verb function (or dict of them) of `command`, importing only its module."""
    module, _, attribute = COMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module), attribute)


def add_command(commands, name: str) -> argparse.ArgumentParser:
    """Add command `name` (a verb, or a group of verbs) to the `commands` subparsers."""
    target, help_text = resolve(name), COMMANDS[name][1]
    if callable(target):
        module = sys.modules[target.__module__]
        parser = add_verb(commands, name, target, help_text, module.__doc__)
        subcommands = getattr(module, "SUBCOMMANDS", None)
        if subcommands:
            sub = parser.add_subparsers(dest=f"{name}_command", required=False, metavar="SUB")
            for verb_name, verb in subcommands.items():
                add_verb(sub, verb_name, verb)
        return parser
    module = sys.modules[next(iter(target.values())).__module__]
    parser = commands.add_parser(name, help=help_text, **parser_kwargs(module.__doc__))
    add_verbs(parser, target, dest=f"{name}_command")
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `llavamini` parser. Every command is listed, but only `command`'s flags are added
    (and only its module imported): the others are placeholders that keep `--help` fast."""
    parser = argparse.ArgumentParser(prog="llavamini", **parser_kwargs(__doc__))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        if name == command:
            add_command(commands, name)
        else:
            commands.add_parser(name, help=help_text, add_help=False)
    return parser


def parse(argv: Sequence[str]) -> tuple[Callable, dict]:
    """`(verb function, its keyword arguments)` for a command line (without `llavamini`)."""
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return args.func.function, args.func.arguments(args)


def main(argv: Sequence[str] | None = None) -> None:
    start_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(None if command in PASS_THROUGH else command)
    try:
        with exit_on_command_error():  # library code raises; only the command line exits
            if command in PASS_THROUGH:
                resolve(command)(argv[1:])
                return
            args = parser.parse_args(argv)
            args.func(args)
    except FileNotFoundError as error:  # a path the user gave: say which, without a traceback
        parser.exit(1, f"llavamini {command}: error: {error}\n")


if __name__ == "__main__":
    main()
