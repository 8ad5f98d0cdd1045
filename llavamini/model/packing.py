"""Pure tensor functions: which text tokens pre-fusion reads, the placeholders each sample's
images fill, and the splice of vision tokens.

Shape notation: B batch, L text length, D LLM width, V vision tokens of one sample.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from llavamini.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def prefusion_text_keep(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """`(B, L)` bool: the text tokens pre-fusion reads.

    Excluded, as in the reference the released weights were trained with: the placeholder and
    every id <= 0 (so a real token of id 0 is treated as padding, a reference quirk kept for
    parity), and in training every supervised (answer) token, so answers never leak into the
    fused prompt. Also excluded: padding (`attention_mask == 0`), which the reference left in
    (harmless only with right padding).
    """
    keep = (input_ids > 0) & attention_mask.bool()
    if labels is not None:
        keep &= labels == IGNORE_INDEX
    return keep


def count_placeholders(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """Number of `IMAGE_TOKEN_INDEX` placeholders among the real tokens of each sample."""
    found = (input_ids == IMAGE_TOKEN_INDEX) & attention_mask.bool()
    return found.sum(dim=1).tolist()


class SplicedInputs(NamedTuple):
    """What the LLM receives for a batch (B batch, L' spliced length, D width)."""

    inputs_embeds: torch.Tensor  # (B, L', D)
    attention_mask: torch.Tensor  # (B, L') long, 0 at padding
    labels: torch.Tensor | None  # (B, L') or None
    position_ids: torch.Tensor  # (B, L') counting real tokens from 0
    vision_mask: torch.Tensor  # (B, L') bool, True at vision tokens


def splice_vision_tokens(
    text_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    vision_tokens: list[list[torch.Tensor]],
    padding_side: str,
    max_length: int | None = None,
) -> SplicedInputs:
    """Replace each placeholder by its vision tokens and re-pad the batch.

    Args:
        text_embeds: `(B, L, D)` embeddings of the text positions (fused or raw).
        input_ids, attention_mask: `(B, L)`; padding may be on either side.
        labels: `(B, L)` or None; vision positions get `IGNORE_INDEX`.
        vision_tokens: per sample, one `(V, D)` tensor per placeholder, in order (the caller
            checks the counts).
        padding_side: 'left' or 'right', for the output.
        max_length: truncate each spliced sequence to this length (training only).
    """
    sequences, label_rows, vision_rows = [], [], []
    for b, sample_tokens in enumerate(vision_tokens):
        real = attention_mask[b].bool()
        embeds, ids = text_embeds[b][real], input_ids[b][real]
        row_labels = labels[b][real] if labels is not None else None
        places = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        embed_pieces, label_pieces, vision_pieces, start = [], [], [], 0
        for at, tokens in zip(places, sample_tokens, strict=True):
            embed_pieces += [embeds[start:at], tokens.to(embeds.dtype)]
            vision_pieces += [
                ids.new_zeros(at - start, dtype=torch.bool),
                ids.new_ones(tokens.shape[0], dtype=torch.bool),
            ]
            if row_labels is not None:
                ignore = row_labels.new_full((tokens.shape[0],), IGNORE_INDEX)
                label_pieces += [row_labels[start:at], ignore]
            start = at + 1
        embeds = torch.cat(embed_pieces + [embeds[start:]])[:max_length]
        tail = ids.new_zeros(len(ids) - start, dtype=torch.bool)
        vision_rows.append(torch.cat(vision_pieces + [tail])[:max_length])
        if row_labels is not None:
            row_labels = torch.cat(label_pieces + [row_labels[start:]])[:max_length]
        sequences.append(embeds)
        label_rows.append(row_labels)

    width = max(seq.shape[0] for seq in sequences)

    def pad(tensor: torch.Tensor, value) -> torch.Tensor:
        missing = width - tensor.shape[0]
        side = [missing, 0] if padding_side == "left" else [0, missing]
        return F.pad(tensor, [0, 0] * (tensor.dim() - 1) + side, value=value)

    inputs_embeds = torch.stack([pad(seq, 0.0) for seq in sequences])
    new_mask = torch.stack(
        [pad(seq.new_ones(seq.shape[0], dtype=torch.long), 0) for seq in sequences]
    )
    new_labels = None
    if labels is not None:
        new_labels = torch.stack([pad(row, IGNORE_INDEX) for row in label_rows])
    position_ids = (new_mask.cumsum(-1) - 1).clamp(min=0)
    vision_mask = torch.stack([pad(row, False) for row in vision_rows])
    return SplicedInputs(inputs_embeds, new_mask, new_labels, position_ids, vision_mask)


def stitch_crops(crops: torch.Tensor, grid: int) -> torch.Tensor:
    """`(B, N*N, g*g, C)` row-major crop features -> `(B, (N*g)**2, C)` one stitched map.

    Order: block row, row in block, block column, column in block (the image's own raster).
    """
    batch, num_crops, tokens, channels = crops.shape
    n = round(num_crops**0.5)
    grid_map = crops.reshape(batch, n, n, grid, grid, channels).permute(0, 1, 3, 2, 4, 5)
    return grid_map.reshape(batch, n * grid * n * grid, channels)


Images = torch.Tensor | list[torch.Tensor | list[torch.Tensor] | None]
"""The forms of a batch's `images` (see `LlavaMiniModelMixin.embed_multimodal`)."""


def visuals_per_sample(images: Images) -> list[list[torch.Tensor]]:
    """The visuals of each sample, in placeholder order (see `embed_multimodal` for the forms)."""
    if isinstance(images, torch.Tensor):
        return [[image] for image in images]
    per_sample = []
    for item in images:
        if item is None:
            per_sample.append([])
        elif isinstance(item, torch.Tensor):
            per_sample.append([item])
        else:
            per_sample.append(list(item))
    return per_sample


def check_placeholders(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, visuals: list[list[torch.Tensor]]
) -> None:
    """Raise unless every sample has exactly one placeholder per image or video."""
    counts = count_placeholders(input_ids, attention_mask)
    if len(visuals) != len(counts):
        raise ValueError(
            f"Got images for {len(visuals)} samples but a batch of {len(counts)} samples."
        )
    for b, (found, sample_visuals) in enumerate(zip(counts, visuals, strict=True)):
        if found != len(sample_visuals):
            raise ValueError(
                f"Sample {b} has {found} image placeholders (IMAGE_TOKEN_INDEX="
                f"{IMAGE_TOKEN_INDEX}) but {len(sample_visuals)} images or videos: each image or "
                f"video needs exactly one placeholder, and a text-only sample none."
            )
