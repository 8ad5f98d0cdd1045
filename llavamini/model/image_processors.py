"""The image processor of a checkpoint: the PIL backend, from its files or built in.

The PIL processors are used whatever is installed: the reference preprocessed with PIL (the
torchvision backend differs by up to ~0.015 per pixel).
"""

from __future__ import annotations

import json
import os

import transformers
from transformers import CLIPImageProcessorPil

from llavamini.model.checkpoint import find_vision_tower_folder
from llavamini.model.vision_tower import CLIP_L_336

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"

CLIP_L_336_PROCESSOR = {
    "size": {"shortest_edge": 336},
    "crop_size": {"height": 336, "width": 336},
    "resample": 3,  # bicubic
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
"""`preprocessor_config.json` of `openai/clip-vit-large-patch14-336`, so the released checkpoint
needs nothing from the network."""

IMAGE_PROCESSOR_TYPES = {
    "clip_vision_model": "CLIPImageProcessor",
    "siglip_vision_model": "SiglipImageProcessor",
}
"""Image processor by vision encoder (open_clip towers use CLIP's preprocessing)."""


def pil_image_processor(name: str, settings: dict | None = None):
    """The PIL backend of the image processor class `name` ("CLIPImageProcessor" or its Pil
    name), whatever else is installed: the reference preprocessed with PIL (the torchvision
    backend differs by up to ~0.015 per pixel)."""
    pil_name = name if name.endswith("Pil") else name + "Pil"
    processor_class = getattr(transformers, pil_name, None)
    if processor_class is None:
        raise ValueError(f"Unknown image processor {name!r}: transformers has no {pil_name}.")
    settings = {k: v for k, v in (settings or {}).items() if k != "image_processor_type"}
    return processor_class(**settings)


def load_image_processor(checkpoint_dir: str, config):
    """The encoder's image processor for a checkpoint without a processor: its own
    `preprocessor_config.json`, else the vision tower folder's (found as its weights are, see
    `llavamini.model.checkpoint`), else the built-in one for CLIP ViT-L/14-336, else (open_clip)
    CLIP's preprocessing at the tower's image size."""
    model_type = config.vision_config.model_type
    default_type = IMAGE_PROCESSOR_TYPES.get(model_type, "CLIPImageProcessor")
    tower_folder = find_vision_tower_folder(config.mm_vision_tower, (checkpoint_dir,))
    looked = [checkpoint_dir] + ([tower_folder] if tower_folder else [])
    for folder in looked:
        path = os.path.join(folder, IMAGE_PROCESSOR_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                settings = json.load(f)
            return pil_image_processor(settings.get("image_processor_type", default_type), settings)
    if config.mm_vision_tower == CLIP_L_336:
        return CLIPImageProcessorPil(**CLIP_L_336_PROCESSOR)
    if model_type == "open_clip_vision":
        size = config.vision_config.image_size
        return CLIPImageProcessorPil(
            **{**CLIP_L_336_PROCESSOR, "size": {"shortest_edge": size},
               "crop_size": {"height": size, "width": size}}
        )  # fmt: skip
    raise FileNotFoundError(
        f"No {IMAGE_PROCESSOR_FILE} for mm_vision_tower={config.mm_vision_tower!r}: looked in "
        f"{looked}."
    )
