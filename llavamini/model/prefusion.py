"""Pre-fusion: decoder layers of the LLM's own class that let text read the vision tokens.

The layers run causally over `[vision context; compressed tokens; text]`; only the positions in
`keep` take part (others neither attend nor are attended). This file is the one place that calls
transformers internals for it (written against transformers 5.x: a decoder layer such as
`LlamaDecoderLayer` or `Qwen2DecoderLayer` takes `position_embeddings` from the backbone's
rotary embedding and returns a tensor; `create_causal_mask` builds the mask in the format of the
configured attention backend, eager, SDPA, flex or flash).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.masking_utils import create_causal_mask


def prefusion_position_ids(keep: torch.Tensor) -> torch.Tensor:
    """Positions counting only kept tokens: `cumsum(keep) - 1`, and 1 where not kept (reference)."""
    positions = keep.long().cumsum(-1) - 1
    return positions.masked_fill(~keep, 1)


class PreFusionLayers(nn.ModuleList):
    """`num_layers` decoder layers of the LLM's own class built from its config (checkpoint keys
    `prefusion_layers.{i}.*`, the same names and shapes as `layers.{i}.*`). No final norm."""

    def __init__(self, config: PreTrainedConfig, num_layers: int, layer_class: type[nn.Module]):
        super().__init__([layer_class(config, layer_idx=i) for i in range(num_layers)])
        self.config = config

    def forward(
        self, hidden_states: torch.Tensor, keep: torch.Tensor, rotary_emb: nn.Module
    ) -> torch.Tensor:
        """`(B, S, D)` -> `(B, S, D)`. `keep` `(B, S)` bool: which positions take part."""
        position_ids = prefusion_position_ids(keep)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=keep,
            past_key_values=None,
        )
        position_embeddings = rotary_emb(hidden_states, position_ids)
        for layer in self:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
            )
        return hidden_states
