"""Data preparation: images, prompts (no model imports here)."""

from llavamini.data.image_processing import expand_to_square, process_images, split_image
from llavamini.data.tokenization import tokenizer_image_token

__all__ = ["expand_to_square", "process_images", "split_image", "tokenizer_image_token"]
