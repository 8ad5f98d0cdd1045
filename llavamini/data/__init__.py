"""Data preparation: images, videos, prompts (no model imports here)."""

from llavamini.data.image_processing import (
    expand_to_square,
    load_image,
    process_images,
    split_image,
)
from llavamini.data.tokenization import tokenizer_image_token
from llavamini.data.video import load_video, process_video, sample_frame_indices

__all__ = [
    "expand_to_square",
    "load_image",
    "load_video",
    "process_images",
    "process_video",
    "sample_frame_indices",
    "split_image",
    "tokenizer_image_token",
]
