"""Pooling: average-pool the patch grid to a C x C grid (budget C*C), the plain downsampling
baseline (VTC-Bench finds it hard to beat). The same pooling as the trained `avg_pool`
compressor, applied without training to a LLaVA-1.5-mode checkpoint."""

from __future__ import annotations

import math

from llavamini.model.compressor import AvgPoolCompressor
from llavamini.model.reduction.base import (
    Reduced,
    TokenReduction,
    TokenReductionError,
    VisionEvidence,
)
from llavamini.model.reduction.budget import check_budget


def reduce(evidence: VisionEvidence, reduction: TokenReduction) -> Reduced:
    """`(B, N, D_v)` patches -> `(B, tokens, D_v)` averages over a square grid of cells."""
    tokens = check_budget("pool", reduction.tokens, evidence.patches.shape[1])
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise TokenReductionError(
            f"pool keeps a square grid of tokens (1, 4, 9, 16, ...); got a budget of {tokens}."
        )
    return Reduced(AvgPoolCompressor(side)(evidence.patches), kept=None)
