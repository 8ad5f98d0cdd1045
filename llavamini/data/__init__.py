"""Data preparation: images, videos, prompts (no model imports here)."""

from llavamini.data.image_processing import (
    expand_to_square,
    load_image,
    process_images,
    split_image,
)
from llavamini.data.tokenization import tokenizer_image_token
from llavamini.data.video import (
    VIDEO_EXTENSIONS,
    load_video,
    media_kind,
    process_video,
    sample_frame_indices,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "expand_to_square",
    "load_image",
    "load_video",
    "media_kind",
    "process_images",
    "process_video",
    "sample_frame_indices",
    "split_image",
    "tokenizer_image_token",
]
