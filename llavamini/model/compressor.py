"""Compressors: a square grid of `N = T*T` vision features `(B, N, D_v)` -> `(B, C*C, D_v)`.

`QueryCompressor` is the paper's query-based compression, computed exactly as the reference's
`Resampler` (docs/compatibility.md K2, K3) because the released weights were trained with it:

    q   = LayerNorm_q(query) + pos_embed                        # (C*C, D_v), C x C sin-cos table
    kv  = LayerNorm_kv(x)                                       # (B, N, D_v)
    out = MultiheadAttention(q, kv + upsample(pos_embed), kv)   # (B, C*C, D_v)

Two of its quirks are reproduced on purpose and documented here:

* the keys' position code is the C x C query table resized bicubically to T x T, not a native
  T x T table; at C = 1 it is one constant vector, so the keys carry no spatial information;
* `pos_embed` is an ordinary (trainable) parameter, as in the released checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """MAE 2D sin-cos table, `(grid_size**2, embed_dim)` in float64, positions row-major.

    Each row is [sin(w*omega), cos(w*omega), sin(h*omega), cos(h*omega)] for the column w and row
    h of the position, with omega_k = 10000 ** (-k / (embed_dim / 4)).
    """
    if embed_dim % 4:
        raise ValueError(f"The 2D sin-cos table needs embed_dim divisible by 4, got {embed_dim}.")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1)


def resize_pos_embed(pos_embed: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Resize a square `(S*S, D)` table to `(num_positions, D)` (bicubic, as the reference)."""
    src = math.isqrt(pos_embed.shape[0])
    tgt = grid_side(num_positions)
    if src == tgt:
        return pos_embed
    grid = pos_embed.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(pos_embed.dtype)


def grid_side(num_tokens: int) -> int:
    """T for a square grid of `num_tokens = T*T` features; raises if it is not square."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"The compressor needs a square grid of vision features, got {num_tokens} tokens."
        )
    return side


class QueryCompressor(nn.Module):
    """C*C learnable queries cross-attending to the vision features (checkpoint: `compressor.*`).

    Args:
        width: feature width D_v (the vision tower's hidden size).
        size: C; the output has C*C tokens.
        num_heads: attention heads (width must be divisible by it).
    """

    def __init__(self, width: int, size: int, num_heads: int):
        super().__init__()
        self.size = size
        self.query = nn.Parameter(torch.empty(size * size, width))
        self.pos_embed = nn.Parameter(torch.empty(size * size, width))
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.reset_parameters()

    def init_queries(self) -> None:
        """Queries ~ N(0, 0.02); position table = 2D sin-cos: the compressor's own parameters,
        initialised here only (in a model, `_init_weights` calls this, and transformers'
        initialises the attention and norms)."""
        with torch.no_grad():
            nn.init.normal_(self.query, std=0.02)
            self.pos_embed.copy_(sincos_pos_embed_2d(self.query.shape[1], self.size))

    def reset_parameters(self) -> None:
        """`init_queries`, and attention and norms as torch initialises them."""
        self.init_queries()
        self.attn._reset_parameters()
        self.ln_q.reset_parameters()
        self.ln_kv.reset_parameters()

    def forward(
        self, features: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`(B, N, D_v)` -> `(B, C*C, D_v)`; with `return_attention`, also the head-averaged
        attention `(B, C*C, N)` of each query over the N features."""
        key_pos = resize_pos_embed(self.pos_embed, features.shape[1])
        kv = self.ln_kv(features)
        query = (self.ln_q(self.query) + self.pos_embed).expand(features.shape[0], -1, -1)
        # need_weights=False lets torch use its fused attention kernel.
        out, weights = self.attn(query, kv + key_pos, kv, need_weights=return_attention)
        return (out, weights) if return_attention else out


class AvgPoolCompressor(nn.Module):
    """The paper's pooling ablation: average-pool the T x T grid to C x C (no parameters)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(B, T*T, D_v)` -> `(B, C*C, D_v)`."""
        batch, num_tokens, width = features.shape
        side = grid_side(num_tokens)
        grid = features.transpose(1, 2).reshape(batch, width, side, side)
        pooled = F.adaptive_avg_pool2d(grid, self.size)
        return pooled.flatten(2).transpose(1, 2)


def build_compressor(config) -> nn.Module | None:
    """The compressor a LLaVA-Mini config names (`compressor_type` 'query', 'avg_pool' or
    'none'), over features of the vision tower's width; None for 'none'."""
    if config.compressor_type == "query":
        width = config.vision_config.hidden_size
        return QueryCompressor(width, config.compressor_size, config.compressor_num_heads)
    if config.compressor_type == "avg_pool":
        return AvgPoolCompressor(config.compressor_size)
    return None
