"""What the compressor looks at: its attention over the image, as a heat map (the paper's
compression figure). `llavamini analyze compression --model-path P --image F`; the quickstart
draws it too."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from llavamini.data.video import media_kind
from llavamini.model.compressor import QueryCompressor, grid_side
from llavamini.model.packing import stitch_crops

logger = logging.getLogger(__name__)


def compression_attention(loaded, image_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(pixels (3, S, S) in [0, 1], attention (C*C, T, T))`: what each compressed token attends
    to over the T x T grid of patches (at high resolution, the stitched crops).

    Raises `ValueError` when the checkpoint has no query compressor (nothing to show).
    """
    model = loaded.model
    compressor = model.model.compressor
    if not isinstance(compressor, QueryCompressor):
        kind = model.config.compressor_type
        raise ValueError(
            f"The checkpoint's compressor_type is {kind!r}: only the query compressor has "
            f"attention weights to show."
        )
    if media_kind(image_path) == "video":
        raise ValueError(f"{image_path}: give an image, not a video.")
    visual = loaded.processor.process_image(image_path)
    with torch.no_grad():
        parts = visual.to(model.device, model.dtype)
        features = model.model.vision_tower(parts)
        if parts.shape[0] > 1:
            grid = model.model.vision_tower.grid_size
            features = stitch_crops(features[None, :-1], grid)
        else:
            features = features[:1]
        _, weights = compressor(features.to(model.dtype), return_attention=True)
    side = grid_side(weights.shape[-1])
    attention = weights[0].float().reshape(-1, side, side).cpu()
    mean = torch.tensor(loaded.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(loaded.image_processor.image_std).view(3, 1, 1)
    pixels = (visual[-1].float() * std + mean).clamp(0, 1)  # the whole image (global view)
    return pixels, attention


def plot_compression(pixels: torch.Tensor, attention: torch.Tensor, path: str, title: str) -> str:
    """Save the image and one attention overlay per compressed token (up to 8) as a PNG."""
    shown = attention[:8]
    size = pixels.shape[-1]
    heat = F.interpolate(shown[:, None], size=(size, size), mode="bilinear")[:, 0]
    figure = Figure(figsize=(3 * (len(shown) + 1), 3.2))
    axes = figure.subplots(1, len(shown) + 1)
    axes[0].imshow(pixels.permute(1, 2, 0).numpy())
    axes[0].set_title("image")
    for index, (axis, values) in enumerate(zip(axes[1:], heat, strict=True)):
        axis.imshow(pixels.permute(1, 2, 0).numpy())
        axis.imshow(values.numpy(), cmap="inferno", alpha=0.6)
        axis.set_title(f"compressed token {index}")
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
