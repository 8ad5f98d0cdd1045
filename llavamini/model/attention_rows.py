"""Attention probabilities of chosen query rows, recomputed from what an attention module
receives, as eager attention computes them: for backends that return no weights (SDPA, flash
attention). Used by the attention analysis (`llavamini.analysis.recorder`) and FastV
(`llavamini.model.reduction.fastv`).

Written against transformers 5.x: `LlamaDecoderLayer` calls `self_attn(hidden_states=...,
attention_mask=..., position_embeddings=(cos, sin), ...)` and `create_causal_mask` builds None
(SDPA, plain causal), a boolean `(B, 1, q, k)` mask (SDPA), an additive float `(B, 1, q, k)`
mask (eager) or a `(B, k)` padding mask (flash attention).

Shape notation: B batch, S sequence, D width, H query heads, d head width, R query rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv


@dataclass(frozen=True)
class AttentionInputs:
    """What one attention module received in one forward call.

    Attributes:
        hidden_states: `(B, S, D)`, the layer input after its input norm.
        position_embeddings: rotary `(cos, sin)`, each `(B, S, d)`.
        attention_mask: the mask as built for the configured backend (see the module docstring).
    """

    hidden_states: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_mask: torch.Tensor | None

    @property
    def sequence_length(self) -> int:
        return self.hidden_states.shape[1]


def visible_keys(
    attention_mask: torch.Tensor | None, rows: torch.Tensor, key_length: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which keys each query row may attend to, and the additive mask values of those rows.

    Args:
        attention_mask: None (plain causal), a `(B, 1, S, S)` bool or additive float mask, or a
            `(B, S)` key padding mask (combined with causality).
        rows: `(R,)` query positions.
        key_length: S.

    Returns:
        `visible (B, R, S)` bool, and `bias (B, R, S)` (the float mask's values, to add to the
        scores exactly as eager attention does) or None when `visible` says it all.
    """
    keys = torch.arange(key_length, device=rows.device)
    causal = keys[None, :] <= rows[:, None]  # (R, S)
    if attention_mask is None:
        return causal[None], None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"Cannot read an attention mask of type {type(attention_mask).__name__}: the "
            f"analysis supports the eager, sdpa and flash_attention_2 backends (load the model "
            f"with attn_implementation='sdpa')."
        )
    if attention_mask.dim() == 2:
        return causal[None] & attention_mask.bool()[:, None, :], None
    if attention_mask.dim() != 4 or attention_mask.shape[-1] != key_length:
        raise ValueError(
            f"Expected a (batch, 1, {key_length}, {key_length}) or (batch, {key_length}) "
            f"attention mask, got shape {tuple(attention_mask.shape)}: the recorded forward must "
            f"be one pass over the whole sequence (no KV cache)."
        )
    mask_rows = attention_mask[:, 0, rows.to(attention_mask.device)]  # (B, R, S)
    if mask_rows.dtype == torch.bool:
        return mask_rows, None
    visible = mask_rows > torch.finfo(mask_rows.dtype).min / 2
    return visible, mask_rows.float()


def recompute_attention(
    module: nn.Module, inputs: AttentionInputs, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention probabilities of the query `rows`, as eager attention computes them.

    Args:
        module: a `LlamaAttention` (q/k projections, `num_key_value_groups`, `scaling`).
        inputs: what it received.
        rows: `(R,)` query positions.

    Returns:
        `probs (B, H, R, S)` float32 (each row sums to one over its visible keys) and
        `visible (B, R, S)` bool.
    """
    hidden = inputs.hidden_states
    batch, length = hidden.shape[:2]
    head_dim = module.head_dim
    cos, sin = inputs.position_embeddings
    rows = rows.to(hidden.device)
    query = module.q_proj(hidden[:, rows]).view(batch, len(rows), -1, head_dim).transpose(1, 2)
    key = module.k_proj(hidden).view(batch, length, -1, head_dim).transpose(1, 2)
    # apply_rotary_pos_emb rotates its two arguments with the same cos/sin: the query rows need
    # their own positions' angles, the keys all of them.
    query, _ = apply_rotary_pos_emb(query, query, cos[:, rows], sin[:, rows])
    _, key = apply_rotary_pos_emb(key, key, cos, sin)
    key = repeat_kv(key, module.num_key_value_groups)
    scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * module.scaling
    visible, bias = visible_keys(inputs.attention_mask, rows, length)
    if bias is not None:
        scores = scores + bias[:, None]
    else:
        # The finite minimum, as transformers' eager masks use, keeps a fully masked row finite.
        scores = scores.masked_fill(~visible[:, None], torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=-1), visible
