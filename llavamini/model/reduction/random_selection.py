"""Random: keep `budget` patches drawn uniformly without replacement, in grid order. The draw
depends only on the seed (the same patches for every image), so answers do not depend on
batching."""

from __future__ import annotations

import torch

from llavamini.model.reduction.base import Reduced, TokenReduction, VisionEvidence
from llavamini.model.reduction.budget import check_budget


def reduce(evidence: VisionEvidence, reduction: TokenReduction) -> Reduced:
    """`(B, N, D_v)` patches -> `(B, tokens, D_v)` of them."""
    patches = evidence.patches
    tokens = check_budget("random", reduction.tokens, patches.shape[1])
    generator = torch.Generator().manual_seed(reduction.seed)
    chosen = torch.randperm(patches.shape[1], generator=generator)[:tokens].sort().values
    chosen = chosen.to(patches.device)
    kept = (chosen + evidence.first_patch).expand(patches.shape[0], -1)
    return Reduced(patches[:, chosen], kept)
