"""`llavamini train`: the training subcommand (the run's arguments follow the recipe)."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train one stage: llavamini train RECIPE.yaml [--key value ...]",
        description="Train one stage from a YAML recipe; later --key value flags override it. "
        "Multi-GPU and multi-node: launch `torchrun ... -m llavamini.train` (scripts/train/).",
        add_help=False,
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from llavamini.train.train import main

    main(args.arguments)
