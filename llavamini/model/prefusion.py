"""Pre-fusion: decoder layers of the LLM's own class that let text read the vision tokens.

The layers run causally over `[vision context; compressed tokens; text]`; only the positions in
`keep` take part (others neither attend nor are attended). Only the compressed tokens and the text
are read afterwards, so the last layer runs its MLP (most of a layer's cost at real scale) on
those rows only: the context rows give it their keys and values through a KV cache, as a prompt
does in generation. This file is the one place that calls transformers internals for it
(written against transformers 5.x: a decoder layer such as
`LlamaDecoderLayer` or `Qwen2DecoderLayer` takes `position_embeddings` from the backbone's
rotary embedding and returns a tensor; `create_causal_mask` builds the mask in the format of the
configured attention backend, eager, SDPA, flex or flash).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedConfig
from transformers.integrations import is_deepspeed_zero3_enabled
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
        self.skip_unread_rows = True
        """Run the last layer's MLP on the read rows only (`forward`'s `unread`); False runs it
        on every row (the benchmark compares both; the attention recorder needs one attention
        call over every row). Attaching hooks never changes which path runs."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        keep: torch.Tensor | None,
        rotary_emb: nn.Module,
        unread: int = 0,
    ) -> torch.Tensor:
        """`(B, S, D)` -> `(B, S - unread, D)`: the outputs of the rows from `unread` on.

        `keep` `(B, S)` bool: which positions take part (None: all of them). The first
        `unread` rows (all kept: the vision context) feed the other rows' attention but their
        own outputs are not returned, so the last layer gives them keys and values only (unless
        `skip_unread_rows` is False: then it runs on every row).
        """
        if keep is None:
            batch, length = hidden_states.shape[:2]
            position_ids = torch.arange(length, device=hidden_states.device).expand(batch, -1)
        else:
            position_ids = prefusion_position_ids(keep)
        position_embeddings = rotary_emb(hidden_states, position_ids)
        split = unread > 0 and self.skip_unread_rows and self._last_layer_can_split()
        full_layers = len(self) - 1 if split else len(self)
        if full_layers:
            mask = create_causal_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=keep,
                past_key_values=None,
            )
            for layer in list(self)[:full_layers]:
                hidden_states = layer(
                    hidden_states,
                    attention_mask=mask,
                    position_ids=position_ids,
                    position_embeddings=position_embeddings,
                )
        if not split:
            return hidden_states[:, unread:]
        return self._last_layer_on_read_rows(
            hidden_states, keep, position_ids, position_embeddings, unread
        )

    def _last_layer_can_split(self) -> bool:
        """False where the split would be wrong: a gradient-checkpointed layer drops the KV
        cache its read rows need (transformers does so in training), and DeepSpeed ZeRO-3
        gathers a module's partitioned weights around each call, for one call per forward."""
        if not len(self):
            return False
        checkpointed = self.training and getattr(self[-1], "gradient_checkpointing", False)
        return not checkpointed and not is_deepspeed_zero3_enabled()

    def _last_layer_on_read_rows(
        self,
        hidden_states: torch.Tensor,
        keep: torch.Tensor | None,
        position_ids: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        unread: int,
    ) -> torch.Tensor:
        """The last layer as a prompt and its continuation: the attention block alone over the
        first `unread` rows fills a KV cache, then the whole layer runs on the other rows
        against it. Equal to running the layer on every row and dropping the first `unread`."""
        layer = self[-1]
        layer_idx = layer.self_attn.layer_idx
        cache = DynamicCache()
        context, rest = hidden_states[:, :unread], hidden_states[:, unread:]
        cos, sin = position_embeddings
        layer.self_attn(
            hidden_states=layer.input_layernorm(context),
            position_embeddings=(cos[:, :unread], sin[:, :unread]),
            attention_mask=create_causal_mask(
                config=self.config,
                inputs_embeds=context,
                attention_mask=None if keep is None else keep[:, :unread],
                past_key_values=None,
            ),
            past_key_values=cache,
        )
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=rest,
            attention_mask=keep,
            past_key_values=cache,
            layer_idx=layer_idx,
        )
        return layer(
            rest,
            attention_mask=mask,
            position_ids=position_ids[:, unread:],
            past_key_values=cache,
            position_embeddings=(cos[:, unread:], sin[:, unread:]),
        )
