"""Image preprocessing, identical to the reference's inference path (docs/compatibility.md K7, K9).

`process_images` turns PIL images into the `(B, parts, 3, H, W)` tensor the model takes:
with `resolution_ratio` N > 1 each image is split into N x N row-major crops followed by the whole
image; with `image_aspect_ratio == "pad"` each part is padded to a square with the processor's
mean colour; then the CLIP processor resizes the short side, centre-crops and normalises.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

SMALLER = "Send a smaller image: the model sees it at 336 x 336 (or N x N crops of that)."


def load_image(path: str) -> Image.Image:
    """Open an image as RGB; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    return open_rgb(path, f"image {path}")


def open_rgb(source, name: str) -> Image.Image:
    """Decode `source` (a path or a binary file object) as RGB.

    Raises `ValueError` starting with `name` when the bytes are not an image Pillow reads, or
    when the image has more pixels than `Image.MAX_IMAGE_PIXELS` (a decompression bomb: a small
    file that would take gigabytes to decode), saying the limit and what to do.
    """
    try:
        with Image.open(source) as image:
            pixels = image.width * image.height
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and pixels > limit:
                raise ValueError(
                    f"Cannot read {name}: {image.width} x {image.height} = {pixels} pixels, more "
                    f"than the {limit} that are decoded (PIL.Image.MAX_IMAGE_PIXELS). {SMALLER}"
                )
            return image.convert("RGB")
    except Image.DecompressionBombError as error:  # past twice the limit, from Image.open
        raise ValueError(
            f"Cannot read {name}: {error} (PIL.Image.MAX_IMAGE_PIXELS). {SMALLER}"
        ) from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read {name}: {error}") from error


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad `image` to a square of its longer side, centred, filled with `background`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def fit_for_square(image: Image.Image) -> Image.Image:
    """`image`, scaled down (aspect kept, each side at least 1 pixel) when the square it would be
    padded to has more pixels than `Image.MAX_IMAGE_PIXELS`; unchanged otherwise.

    The decode limit bounds an image's pixels but not its padded square: a 1 x 1,000,000 strip
    (1 KB as PNG) would be padded to 10^12 pixels. Images whose longer side is at most the
    limit's square root (9459 pixels for Pillow's default) are untouched, so their pixels equal
    the reference's; longer ones (wide panoramas, strips) are scaled, where the reference would
    have spent gigabytes on the padding.
    """
    limit = Image.MAX_IMAGE_PIXELS
    side = max(image.size)
    if limit is None or side * side <= limit:
        return image
    scale = math.isqrt(limit) / side
    size = tuple(max(1, int(length * scale)) for length in image.size)
    logger.info(
        "Scaled a %d x %d image to %d x %d before padding it to a square", *image.size, *size
    )
    return image.resize(size, Image.Resampling.BICUBIC)


def split_image(image: Image.Image, n: int) -> list[Image.Image]:
    """`[image]` for n == 1; else n*n crops (row-major, each W//n x H//n) then the whole image.

    Remainder pixels of sizes not divisible by n are dropped, as in the reference.
    """
    if n == 1:
        return [image]
    width, height = image.size
    crop_w, crop_h = width // n, height // n
    crops = [
        image.crop((j * crop_w, i * crop_h, (j + 1) * crop_w, (i + 1) * crop_h))
        for i in range(n)
        for j in range(n)
    ]
    return crops + [image]


def processor_image_size(image_processor) -> int:
    """The side of the square images `image_processor` outputs: its crop size when it crops
    (CLIP), else its resize size (SigLIP)."""
    if getattr(image_processor, "do_center_crop", False) and image_processor.crop_size:
        return image_processor.crop_size["height"]
    return image_processor.size["height"]


def mean_colour(image_processor) -> tuple[int, int, int]:
    """The processor's normalisation mean as an RGB colour (122, 116, 104 for CLIP)."""
    return tuple(int(255 * m) for m in image_processor.image_mean)


def process_images(images: Sequence[Image.Image], image_processor, config) -> torch.Tensor:
    """PIL images -> `(B, parts, 3, H, W)` float32 pixel values, parts = N*N + 1 or 1.

    Args:
        images: PIL images (converted to RGB here).
        image_processor: a CLIP image processor (`CLIPImageProcessorPil` or compatible).
        config: anything with `image_aspect_ratio` and `resolution_ratio` (a `LlavaMiniConfig`).
    """
    batch = []
    for image in images:
        parts = split_image(image.convert("RGB"), config.resolution_ratio)
        if config.image_aspect_ratio == "pad":
            parts = [
                expand_to_square(fit_for_square(part), mean_colour(image_processor))
                for part in parts
            ]
        pixels = image_processor(images=parts, return_tensors="pt")["pixel_values"]
        batch.append(pixels)
    return torch.stack(batch)
