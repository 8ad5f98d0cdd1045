"""The training-free methods, by name, and how the model applies them.

A method is one module and one line here: a vision-side method is a function
`(VisionEvidence, TokenReduction) -> Reduced` run on the vision tower's selected layer instead of
the patch features; an LLM-side method (FastV) acts inside the language model's layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from llavamini.model.reduction import (
    fastv,
    pooling,
    prumerge_plus,
    random_selection,
    visionzip,
)
from llavamini.model.reduction.base import (
    Reduced,
    TokenReduction,
    TokenReductionError,
    VisionEvidence,
)


@dataclass(frozen=True)
class Method:
    """A registered method: where it acts, and its function: `reduce` for a 'vision' method,
    `install(llm_layers, reduction)` (hooks with `start(vision_mask, per_image)` and `remove()`)
    for an 'llm' one."""

    stage: Literal["vision", "llm"]
    reduce: Callable[[VisionEvidence, TokenReduction], Reduced] | None = None
    install: Callable | None = None


METHODS: dict[str, Method] = {
    "pool": Method("vision", pooling.reduce),
    "random": Method("vision", random_selection.reduce),
    "visionzip": Method("vision", visionzip.reduce),
    "prumerge_plus": Method("vision", prumerge_plus.reduce),
    "fastv": Method("llm", install=fastv.FastVPruner),
}
"""Every method, by the name `TokenReduction.method` takes."""


def method_of(reduction: TokenReduction) -> Method:
    """The registered method `reduction` names; `TokenReductionError` listing the names if none."""
    if reduction.method not in METHODS:
        raise TokenReductionError(
            f"Unknown token reduction {reduction.method!r}; expected one of {sorted(METHODS)}."
        )
    method = METHODS[reduction.method]
    if method.stage == "llm" and reduction.tokens is None:
        raise TokenReductionError(f"{reduction.method} needs a budget: vision tokens per image.")
    return method


def check_applicable(reduction: TokenReduction, config) -> Method:
    """The method, checked to apply to a model with this `LlavaMiniConfig`: training-free
    methods replace the vision tokens of a checkpoint without a compressor (LLaVA-1.5 mode)."""
    method = method_of(reduction)
    if config.compressor_type != "none":
        raise TokenReductionError(
            f"Token reduction {reduction.method!r} applies to a checkpoint without a compressor "
            f"(compressor_type 'none', LLaVA-1.5 mode); this one has compressor_type "
            f"{config.compressor_type!r}, which already gives {config.compressor_size**2} "
            f"tokens per image."
        )
    return method


def reduce_images(tower, images: torch.Tensor, reduction: TokenReduction) -> torch.Tensor:
    """`(B, parts, 3, H, W)` images -> `(B, V, D_v)` reduced features (before the projector)."""
    if images.shape[1] != 1:
        raise TokenReductionError(
            f"Token reduction works on one view per image; got {images.shape[1]} parts (high "
            f"resolution crops). Use image_aspect_ratio 'pad' or 'square'."
        )
    method = method_of(reduction)
    evidence = VisionEvidence.from_tower(tower, images[:, 0])
    return method.reduce(evidence, reduction).tokens
