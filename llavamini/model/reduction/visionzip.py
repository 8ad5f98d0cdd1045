"""VisionZip (Yang et al., CVPR 2025; github.com/dvlab-research/VisionZip).

Dominant tokens: the class token and the patches the class token attends to most at the
selected layer (attention summed over heads). Contextual tokens: the other tokens, compared by
their keys (averaged over heads, L2-normalised), are assigned to evenly spaced targets among
them and averaged into those targets (target + mean of its assigned tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavamini.model.reduction.base import Reduced, TokenReduction, VisionEvidence, split_heads
from llavamini.model.reduction.budget import check_budget


def split_budget(tokens: int) -> tuple[int, int]:
    """(dominant tokens with the class token, contextual tokens) for a budget: the authors'
    proportion, 54 + 10 of 64 (108 + 20 of 128, 162 + 30 of 192), rounded down for the
    contextual share; budgets under 7 keep dominant tokens only."""
    contextual = tokens * 5 // 32
    return tokens - contextual, contextual


def reduce(evidence: VisionEvidence, reduction: TokenReduction) -> Reduced:
    """`(B, T, D_v)` selected-layer tokens -> `(B, tokens, D_v)`: dominant tokens in sequence
    order, then contextual tokens in target order."""
    evidence.require_class_token("visionzip")
    hidden = evidence.hidden
    batch, length, width = hidden.shape
    tokens = check_budget("visionzip", reduction.tokens, length)
    dominant, contextual = split_budget(tokens)

    block = evidence.attention_block()
    attention = block.self_attn
    normed = block.layer_norm1(evidence.layer_input)
    queries = split_heads(attention.q_proj(normed) * attention.scale, attention.num_heads)
    keys = split_heads(attention.k_proj(normed), attention.num_heads)  # (B, H, T, d)
    class_row = (queries[:, :, :1] @ keys.transpose(-1, -2)).softmax(dim=-1)[:, :, 0]
    scores = class_row[:, :, 1:].sum(dim=1)  # (B, N)

    top = scores.topk(dominant - 1, dim=1).indices + 1
    keep = torch.zeros(batch, length, dtype=torch.bool, device=hidden.device)
    keep[:, 0] = True
    keep.scatter_(1, top, True)
    positions = torch.arange(length, device=hidden.device).expand(batch, -1)
    dominant_tokens = hidden[keep].view(batch, dominant, width)
    kept = positions[keep].view(batch, dominant)
    if contextual == 0:
        return Reduced(dominant_tokens, kept)

    rest = length - dominant
    rest_keys = keys.mean(dim=1)[~keep].view(batch, rest, -1)
    rest_keys = rest_keys / rest_keys.norm(dim=-1, keepdim=True)
    rest_hidden = hidden[~keep].view(batch, rest, width)
    rest_positions = positions[~keep].view(batch, rest)

    step = max(1, rest // contextual)
    targets = torch.arange(0, rest, step, device=hidden.device)[:contextual]
    is_target = torch.zeros(rest, dtype=torch.bool, device=hidden.device)
    is_target[targets] = True
    similarity = rest_keys[:, ~is_target] @ rest_keys[:, targets].transpose(1, 2)
    assign = F.one_hot(similarity.argmax(dim=2), contextual).to(hidden.dtype)  # (B, R-C, C)
    counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
    merged = assign.transpose(1, 2) @ rest_hidden[:, ~is_target] / counts
    contextual_tokens = rest_hidden[:, targets] + merged
    return Reduced(
        torch.cat([dominant_tokens, contextual_tokens], dim=1),
        torch.cat([kept, rest_positions[:, targets]], dim=1),
    )
