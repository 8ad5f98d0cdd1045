"""FastV (Chen et al., ECCV 2024; github.com/pkunlp-icler/FastV), its in-place variant.

After LLM layer K-1, the attention the prompt's last token gives each vision token (averaged over
heads) ranks them; from layer K on only the top `tokens` per image stay in the sequence, with
their original positions, beside every text token. Layers before K cache keys over the whole
prompt, layers from K on over the kept tokens, so decoding attends to exactly what a recomputed
prefix would (the authors' in-place variant has no KV cache).
"""

from __future__ import annotations

import torch
from torch import nn

from llavamini.model.attention_rows import AttentionInputs, recompute_attention
from llavamini.model.reduction.base import TokenReduction, TokenReductionError


def select(last_row: torch.Tensor, vision_positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """`(H, L)` attention of the last query at layer K-1, `(V,)` vision positions -> the sorted
    positions `(L - V + tokens,)` that layers K.. keep: every other position and the `tokens`
    vision positions the last query attends to most (mean over heads)."""
    scores = last_row.mean(dim=0)[vision_positions]
    top = vision_positions[scores.topk(tokens).indices]
    keep = torch.ones(last_row.shape[-1], dtype=torch.bool, device=last_row.device)
    keep[vision_positions] = False
    keep[top] = True
    return keep.nonzero().squeeze(1)


def gather_positions(tensor: torch.Tensor, kept: torch.Tensor, dim: int) -> torch.Tensor:
    """`tensor` with dimension `dim` (its sequence) reduced to `kept` `(B, L')` per row; a
    leading dimension of 1 is broadcast to B."""
    tensor = tensor.expand(kept.shape[0], *tensor.shape[1:])
    shape = [1] * tensor.dim()
    shape[0], shape[dim] = kept.shape
    index = kept.view(shape).expand(*tensor.shape[:dim], kept.shape[1], *tensor.shape[dim + 1 :])
    return tensor.gather(dim, index)


class FastVPruner:
    """Forward pre-hooks on the LLM's decoder layers that apply FastV to each prefill announced
    by `start` (the model does so when it embeds images) and to its decode steps.

    Args:
        layers: the LLM's decoder layers (transformers 5 `LlamaDecoderLayer`-like: called with
            `hidden_states` first and `attention_mask`, `position_embeddings`, `position_ids`
            keywords).
        reduction: method 'fastv', `tokens` per image, `fastv_layer` K (1 <= K < layers).
    """

    def __init__(self, layers: nn.ModuleList, reduction: TokenReduction):
        if reduction.fastv_layer >= len(layers):
            raise TokenReductionError(
                f"fastv_layer {reduction.fastv_layer} must be below the LLM's {len(layers)} layers."
            )
        self.tokens = reduction.tokens
        self.first = layers[reduction.fastv_layer]
        self.vision_mask: torch.Tensor | None = None
        self.per_image = 1
        self.kept: torch.Tensor | None = None
        self.prefill_length = 0
        attention = layers[reduction.fastv_layer - 1].self_attn
        self.handles = [attention.register_forward_pre_hook(self.rank, with_kwargs=True)]
        self.handles += [
            layer.register_forward_pre_hook(self.prune, with_kwargs=True)
            for layer in layers[reduction.fastv_layer :]
        ]

    def start(self, vision_mask: torch.Tensor, per_image: int) -> None:
        """The next prefill is `(B, L)` with vision tokens at `vision_mask`, `per_image` each."""
        self.vision_mask, self.per_image, self.kept = vision_mask, per_image, None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def rank(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if hidden.shape[1] == 1:
            return  # a decode step
        mask, self.vision_mask = self.vision_mask, None
        self.kept = None
        if mask is None or mask.shape != hidden.shape[:2] or not bool(mask.any()):
            return  # a prefill without images
        inputs = AttentionInputs(
            hidden, kwargs["position_embeddings"], kwargs.get("attention_mask")
        )
        last = torch.tensor([hidden.shape[1] - 1], device=hidden.device)
        probs, _ = recompute_attention(module, inputs, last)  # (B, H, 1, L)
        counts = mask.sum(dim=1)
        if bool((counts != counts[0]).any()) or int(counts[0]) % self.per_image:
            raise TokenReductionError(
                f"fastv needs the same number of images in every row of a batch; got "
                f"{counts.tolist()} vision tokens per row ({self.per_image} per image)."
            )
        keep = int(counts[0]) // self.per_image * self.tokens
        self.kept = torch.stack(
            [
                select(probs[b, :, 0], mask[b].nonzero().squeeze(1), min(keep, int(counts[0])))
                for b in range(hidden.shape[0])
            ]
        )
        self.prefill_length = hidden.shape[1]

    def prune(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.kept is None:
            return None
        kept, kwargs = self.kept, dict(kwargs)
        hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        args = args[1:] if args else args
        mask = kwargs.get("attention_mask")
        if hidden.shape[1] == 1:  # decode: keys are the kept prompt, then the new tokens
            if isinstance(mask, torch.Tensor):
                extra = torch.arange(self.prefill_length, mask.shape[-1], device=kept.device)
                columns = torch.cat([kept, extra.expand(kept.shape[0], -1)], dim=1)
                kwargs["attention_mask"] = gather_positions(mask, columns, mask.dim() - 1)
            return (hidden, *args), kwargs
        if module is self.first:
            hidden = gather_positions(hidden, kept, 1)
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (
            gather_positions(cos, kept, 1),
            gather_positions(sin, kept, 1),
        )
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = gather_positions(kwargs["position_ids"], kept, 1)
        if isinstance(mask, torch.Tensor):
            if mask.dim() == 4:
                mask = gather_positions(mask, kept, 2)
            kwargs["attention_mask"] = gather_positions(mask, kept, mask.dim() - 1)
        return (hidden, *args), kwargs
