"""`llavamini` command line: one entry point, one subcommand per job.

Subcommands live in their own modules, which expose `add_parser(subparsers)`; each imports what
it runs on only when it runs. (`import llavamini` itself registers the model with transformers,
which takes a few seconds.)
"""

from __future__ import annotations

import argparse
import importlib
import logging

from llavamini.apps import APPS

SUBCOMMAND_MODULES = (
    *APPS,  # quickstart; demo, tiny-assets
    "llavamini.train.cli",  # train
    "llavamini.train.data_check",  # data
    "llavamini.serve.cli",  # chat
    "llavamini.serve.server",  # serve
    "llavamini.serve.gradio_app",  # gradio
    "llavamini.eval.cli",  # eval
    "llavamini.analysis.cli",  # analyze
    "llavamini.bench.cli",  # bench
)
"""Modules whose `add_parser(subparsers)` adds the subcommands."""


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype` (`llavamini.model.loading.ModelSpec`), for every command that
    loads a model."""
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps, cpu (default: best)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weights dtype (default: float16 on CUDA, else 'auto', the checkpoint's own)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavamini", description=__doc__, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # `train` hands its arguments (even a leading --help) to the training parser.
        if not hasattr(args, "arguments"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.arguments = unknown + args.arguments
    try:
        args.func(args)
    except FileNotFoundError as error:  # a path the user gave: say which, without a traceback
        parser.exit(1, f"llavamini {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
