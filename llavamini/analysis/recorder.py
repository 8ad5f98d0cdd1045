"""Attention weights of chosen layers, recomputed beside the model's own forward.

SDPA and flash attention return no weights, and switching a whole model to eager attention costs
memory and can change its outputs. Instead, a forward pre-hook on each analysed attention module
(`LlamaAttention`) receives exactly what that module receives (the normed hidden states, the
rotary cos/sin and the mask in the backend's format) and hands it to a handler, which recomputes
softmax(Q K^T / sqrt(d) + mask) for the query rows it needs, in chunks of rows so that memory
stays bounded on long prompts. The hook returns nothing, so the model's computation is untouched.

The recomputation itself is `llavamini.model.attention_rows` (FastV uses it too).

Shape notation: B batch, S sequence, D width, H query heads, d head width, R query rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from llavamini.model.attention_rows import (  # noqa: F401  (the analysis' public names)
    AttentionInputs,
    recompute_attention,
    visible_keys,
)

DEFAULT_MAX_ELEMENTS = 2**24
"""Attention scores computed at once (H x rows x S floats, 64 MiB in float32)."""


AttentionHandler = Callable[[str, nn.Module, AttentionInputs], None]
"""`handler(name, attention_module, inputs)`, called before the module runs."""


def row_chunks(
    rows: torch.Tensor, num_heads: int, key_length: int, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> Iterator[torch.Tensor]:
    """Split `rows` so that each chunk's `(H, R, S)` scores hold at most `max_elements`."""
    size = max(1, max_elements // max(1, num_heads * key_length))
    yield from torch.split(rows, size)


class AttentionRecorder:
    """Calls `handler(name, module, inputs)` before each attention module of `model` named by
    `attention_modules(model, parts)` runs.

    Use as a context manager; the hooks are removed on exit. Nothing the model computes
    changes: the hooks only read their inputs. While recording, pre-fusion's last layer runs on
    every row (`PreFusionLayers.skip_unread_rows` off), so that each attention module is called
    once over the whole sequence (the outputs are the same).
    """

    def __init__(
        self,
        model: nn.Module,
        handler: AttentionHandler,
        parts: tuple[str, ...] = ("llm", "prefusion"),
    ):
        self.modules = attention_modules(model, parts)
        self.prefusion = model.model.prefusion_layers
        self.handler = handler
        self._handles: list = []
        self._skipped_unread_rows = self.prefusion.skip_unread_rows

    def __enter__(self) -> AttentionRecorder:
        self._skipped_unread_rows = self.prefusion.skip_unread_rows
        self.prefusion.skip_unread_rows = False
        for name, module in self.modules.items():
            self._handles.append(
                module.register_forward_pre_hook(self._hook(name), with_kwargs=True)
            )
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.prefusion.skip_unread_rows = self._skipped_unread_rows

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if kwargs.get("position_embeddings") is None:
                raise ValueError(
                    f"Attention module {name} was called without position_embeddings: the "
                    f"analysis expects transformers 5's LlamaDecoderLayer."
                )
            inputs = AttentionInputs(
                hidden.detach(), kwargs["position_embeddings"], kwargs.get("attention_mask")
            )
            with torch.no_grad():
                self.handler(name, module, inputs)

        return hook


def attention_modules(model: nn.Module, parts: tuple[str, ...] = ("llm", "prefusion")) -> dict:
    """`{"llm.<i>": layers[i].self_attn, "prefusion.<i>": prefusion_layers[i].self_attn}` of a
    `LlavaMiniForCausalLM`, for the parts asked for."""
    found = {}
    if "llm" in parts:
        for index, layer in enumerate(model.model.layers):
            found[f"llm.{index}"] = layer.self_attn
    if "prefusion" in parts:
        for index, layer in enumerate(model.model.prefusion_layers):
            found[f"prefusion.{index}"] = layer.self_attn
    return found
