"""PruMerge+ (Shang et al., "LLaVA-PruMerge"; github.com/42Shawn/LLaVA-PruMerge).

The class token's attention over the patches, read from the block after the selected layer
(one head over the full width), decides: patches above Q3 + 1.5 IQR are kept (their share sets
the budget when none is given), evenly spaced patches are added to cover the image, and each
kept patch absorbs its 32 nearest tokens by key (weighted by their attention); one more token is
the attention-weighted sum of the patches not kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llavamini.model.reduction.base import (
    Reduced,
    TokenReduction,
    TokenReductionError,
    VisionEvidence,
)
from llavamini.model.reduction.budget import check_budget

NEIGHBOURS = 32
"""Tokens each kept patch absorbs (the authors' constant)."""


def outlier_share(scores: torch.Tensor) -> float:
    """Share of `(N,)` scores above Q3 + 1.5 IQR (numpy's linear percentiles, as the authors)."""
    values = scores.to(torch.float32).cpu().numpy()
    lower, upper = np.percentile(values, 25), np.percentile(values, 75)
    return float((values > upper + 1.5 * (upper - lower)).sum()) / values.size


def select(scores: torch.Tensor, tokens: int | None) -> torch.Tensor:
    """`(N,)` class-token attention -> indices of the kept patches: outliers by attention, then
    evenly spaced patches that are not among them; with a budget, the first `tokens - 1` of
    those (topped up by attention), as one more token is the merged rest."""
    count = scores.shape[0]
    share = outlier_share(scores) or 1 / count  # no outlier: sample as if there were one
    top = scores.topk(int(count * share)).indices
    stride = max(1, int(int(1 / share) / 3))
    spatial = torch.arange(0, count - 1, stride, device=scores.device)
    chosen = torch.cat([top, spatial[~torch.isin(spatial, top)]])
    if tokens is None:
        return chosen
    chosen = chosen[: tokens - 1]
    if chosen.shape[0] < tokens - 1:
        ranked = scores.argsort(descending=True)
        more = ranked[~torch.isin(ranked, chosen)][: tokens - 1 - chosen.shape[0]]
        chosen = torch.cat([chosen, more])
    return chosen


def merge(
    patches: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """`(N, D_v)` patches, `(N, D_v)` keys, `(N,)` attention, `(K,)` kept indices ->
    `(K + 1, D_v)`: each kept patch plus the attention-weighted sum of its nearest tokens (by
    key cosine, itself excluded), then the attention-weighted sum of the patches not kept.

    One kept patch at a time, its candidates ordered as the authors' (the other kept patches,
    then the rest in grid order) and its similarities computed by the same product: the keys of
    a random or collapsed encoder can tie to the last bit, and then the order decides which
    neighbours are taken."""
    rest = torch.ones(patches.shape[0], dtype=torch.bool, device=patches.device)
    rest[chosen] = False
    kept_keys = F.normalize(keys[chosen], p=2, dim=-1)
    rest_keys = F.normalize(keys[rest], p=2, dim=-1)
    kept_x, rest_x = patches[chosen], patches[rest]
    kept_w, rest_w = scores[chosen], scores[rest]
    centres = torch.empty_like(kept_x)
    for i in range(chosen.shape[0]):
        others = torch.cat([kept_keys[:i], kept_keys[i + 1 :], rest_keys])
        similarity = torch.bmm(kept_keys[i][None, None], others.T[None])[0, 0]
        nearest = similarity.topk(min(NEIGHBOURS, others.shape[0])).indices
        candidates = torch.cat([kept_x[:i], kept_x[i + 1 :], rest_x])
        weights = torch.cat([kept_w[:i], kept_w[i + 1 :], rest_w])
        centres[i] = kept_x[i] + (candidates[nearest] * weights[nearest].unsqueeze(-1)).sum(0)
    extra = (rest_x * rest_w.unsqueeze(-1)).sum(dim=0, keepdim=True)
    return torch.cat([centres, extra])


def reduce(evidence: VisionEvidence, reduction: TokenReduction) -> Reduced:
    """`(B, 1 + N, D_v)` selected-layer tokens -> `(B, K + 1, D_v)`, K the kept patches (the
    adaptive count without a budget, which then differs between images; batches need one)."""
    evidence.require_class_token("prumerge_plus")
    patches = evidence.patches
    batch, count, width = patches.shape
    if reduction.tokens is not None:
        check_budget("prumerge_plus", reduction.tokens, count)
    block = evidence.attention_block(offset=1)
    normed = block.layer_norm1(evidence.hidden)
    queries, keys = block.self_attn.q_proj(normed), block.self_attn.k_proj(normed)
    attention = ((queries @ keys.transpose(-2, -1)) * width**-0.5).softmax(dim=-1)
    scores = attention[:, 0, 1:]  # (B, N)
    tokens, kept = [], []
    for b in range(batch):
        chosen = select(scores[b], reduction.tokens)
        tokens.append(merge(patches[b], keys[b, 1:], scores[b], chosen))
        kept.append(chosen + evidence.first_patch)
    if len({t.shape[0] for t in tokens}) > 1:
        raise TokenReductionError(
            "prumerge_plus without a budget keeps a different count per image: encode the "
            "images one at a time, or give a budget."
        )
    return Reduced(torch.stack(tokens), torch.stack(kept))
