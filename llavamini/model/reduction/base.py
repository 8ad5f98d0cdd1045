"""What a training-free token-reduction method reads and returns.

Shape notation: B images, T tokens of the vision encoder's sequence (class token first when the
encoder has one, then N = grid**2 patches, row-major), D_v vision width, H heads, V tokens kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llavamini.errors import UsageError
from llavamini.model.vision_tower import VisionTower, block_output, encoder_blocks, selected_block


class TokenReductionError(UsageError):
    """A token reduction that cannot run as asked (method, budget, checkpoint or input)."""


@dataclass(frozen=True)
class TokenReduction:
    """A training-free reduction of the vision tokens, applied at inference to a checkpoint
    without a compressor (LLaVA-1.5 mode); the method name is checked against
    `llavamini.model.reduction.METHODS` when it is applied.

    Attributes:
        method: a `METHODS` name ('pool', 'random', 'visionzip', 'prumerge_plus', 'fastv').
        tokens: vision tokens per image the LLM sees (FastV: from layer `fastv_layer` on);
            None only for PruMerge+'s adaptive (official) count.
        seed: the random draw of 'random'.
        fastv_layer: K, the LLM layer from which FastV drops vision tokens (>= 1).
    """

    method: str
    tokens: int | None = None
    seed: int = 0
    fastv_layer: int = 2

    def __post_init__(self):
        if self.tokens is not None and (not isinstance(self.tokens, int) or self.tokens < 1):
            raise TokenReductionError(
                f"The budget must be an integer >= 1 vision tokens per image, got {self.tokens!r}."
            )
        if not isinstance(self.fastv_layer, int) or self.fastv_layer < 1:
            raise TokenReductionError(f"fastv_layer must be >= 1, got {self.fastv_layer!r}.")


@dataclass(frozen=True)
class Reduced:
    """A method's output for a batch of images.

    Attributes:
        tokens: `(B, V, D_v)` what replaces the patch features (before the projector).
        kept: `(B, K)` positions in the encoder's sequence (class token 0 when it has one) of the
            tokens kept as they are or as merge centres, in the method's output order; None for
            methods that keep no token as such (pooling).
    """

    tokens: torch.Tensor
    kept: torch.Tensor | None


@dataclass(frozen=True)
class VisionEvidence:
    """The vision tower's view of a batch of images at its selected layer.

    Attributes:
        hidden: `(B, T, D_v)` output of the selected block (the features LLaVA reads).
        layer_input: `(B, T, D_v)` input of the selected block.
        has_class_token: whether position 0 of T is the class token.
        blocks: the encoder's blocks; `index` is the selected block's (0-based).
    """

    hidden: torch.Tensor
    layer_input: torch.Tensor
    has_class_token: bool
    blocks: nn.ModuleList
    index: int

    @classmethod
    def from_tower(cls, tower: VisionTower, images: torch.Tensor) -> VisionEvidence:
        """Run `tower` on `(B, 3, H, W)` images up to its selected block."""
        encoder = tower.encoder
        blocks = encoder_blocks(encoder)
        hidden, layer_input = block_output(
            encoder, images.to(encoder.dtype), tower.select_layer, with_input=True
        )
        has_class_token = tower.tokens_per_image == tower.grid_size**2 + 1
        index = selected_block(blocks, tower.select_layer) - 1
        return cls(hidden, layer_input, has_class_token, blocks, index)

    @property
    def patches(self) -> torch.Tensor:
        """`(B, N, D_v)` the patch features, without the class token."""
        return self.hidden[:, 1:] if self.has_class_token else self.hidden

    @property
    def first_patch(self) -> int:
        """Position of the first patch in T (1 after a class token, else 0)."""
        return int(self.has_class_token)

    def attention_block(self, offset: int = 0) -> nn.Module:
        """The block `offset` after the selected one, checked to be a CLIP-style block
        (`layer_norm1`, `self_attn.{q,k}_proj`); raises `TokenReductionError` otherwise."""
        position = self.index + offset
        if position >= len(self.blocks):
            raise TokenReductionError(
                f"This method reads the attention of the block after the selected one "
                f"(mm_vision_select_layer), but block {position} does not exist: the encoder has "
                f"{len(self.blocks)} blocks."
            )
        block = self.blocks[position]
        attention = getattr(block, "self_attn", None)
        if not hasattr(block, "layer_norm1") or not hasattr(attention, "k_proj"):
            raise TokenReductionError(
                f"This method reads the vision encoder's attention; it supports CLIP and SigLIP "
                f"blocks, not {type(block).__name__}."
            )
        return block

    def require_class_token(self, method: str) -> None:
        if not self.has_class_token:
            raise TokenReductionError(
                f"{method} ranks patches by the class token's attention; this vision encoder has "
                f"no class token."
            )


def split_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """`(B, T, H*d)` -> `(B, H, T, d)`."""
    batch, length, _ = states.shape
    return states.view(batch, length, heads, -1).transpose(1, 2)
