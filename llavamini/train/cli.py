"""`llavamini train`: train one stage from a YAML recipe; later `--key value` flags override it.

Multi-GPU and multi-node: launch `torchrun ... -m llavamini.train` (scripts/train/). The recipe's
fields are `llavamini.train.arguments`' dataclasses, parsed by HfArgumentParser (`--help` lists
them).
"""

from __future__ import annotations

from collections.abc import Sequence

from llavamini.train.train import main


def train(arguments: Sequence[str]) -> None:
    """Train one stage: `arguments` are `RECIPE.yaml [--key value ...]`."""
    main(list(arguments))
