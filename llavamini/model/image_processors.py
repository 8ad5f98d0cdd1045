"""A checkpoint's preprocessing: the processor's saved settings and image processor, or, for a
checkpoint without them (the release), the encoder's image processor from its files or built in.

`LlavaMiniProcessor.from_pretrained` reads a checkpoint through `checkpoint_preprocessing`. The PIL
image processors are used whatever is installed: the reference preprocessed with PIL (the
torchvision backend differs by up to ~0.015 per pixel).
"""

from __future__ import annotations

import json
import os

import transformers
from transformers import AutoConfig, CLIPImageProcessorPil

from llavamini.model.checkpoint import find_vision_tower_folder
from llavamini.model.vision_tower import CLIP_L_336

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"

PROCESSOR_SETTINGS = (
    "conv_mode",
    "image_aspect_ratio",
    "resolution_ratio",
    "video_fps",
    "video_max_frames",
    "padding_side",
)
"""`LlavaMiniProcessor`'s own fields, saved in `processor_config.json` beside the image
processor's."""

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


def load_image_processor(checkpoint_dir: str, config, cache_dir: str | None = None):
    """The encoder's image processor for a checkpoint without a processor: its own
    `preprocessor_config.json`, else the vision tower folder's (found as its weights are, see
    `llavamini.model.checkpoint`), else the built-in one for CLIP ViT-L/14-336, else (open_clip)
    CLIP's preprocessing at the tower's image size."""
    model_type = config.vision_config.model_type
    default_type = IMAGE_PROCESSOR_TYPES.get(model_type, "CLIPImageProcessor")
    tower_folder = find_vision_tower_folder(config.mm_vision_tower, (checkpoint_dir,), cache_dir)
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
            **{
                **CLIP_L_336_PROCESSOR,
                "size": {"shortest_edge": size},
                "crop_size": {"height": size, "width": size},
            }
        )
    raise FileNotFoundError(
        f"No {IMAGE_PROCESSOR_FILE} for mm_vision_tower={config.mm_vision_tower!r}: looked in "
        f"{looked}."
    )


def read_processor_config(checkpoint_dir: str) -> dict | None:
    """The checkpoint's `processor_config.json` as saved, or None when it has none."""
    path = os.path.join(checkpoint_dir, PROCESSOR_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def checkpoint_preprocessing(
    checkpoint_dir: str, cache_dir: str | None = None
) -> tuple[object, dict, bool]:
    """(image processor, processor settings, whether the checkpoint saved them) of a checkpoint:
    its `processor_config.json`'s; else (the released checkpoints) `load_image_processor`'s, with
    the image preprocessing of its model config (`image_aspect_ratio`, `resolution_ratio`)."""
    saved = read_processor_config(checkpoint_dir)
    if saved is not None:
        if "image_processor" not in saved:
            raise ValueError(
                f"{os.path.join(checkpoint_dir, PROCESSOR_CONFIG_FILE)} has no 'image_processor' "
                f"entry."
            )
        settings = saved["image_processor"]
        image_processor = pil_image_processor(
            settings.get("image_processor_type", "CLIPImageProcessor"), settings
        )
        return image_processor, {k: saved[k] for k in PROCESSOR_SETTINGS if k in saved}, True
    config = AutoConfig.from_pretrained(checkpoint_dir)
    config.resolve_vision_config(checkpoint_dir, cache_dir)
    settings = {
        "image_aspect_ratio": config.image_aspect_ratio,
        "resolution_ratio": config.resolution_ratio,
    }
    return load_image_processor(checkpoint_dir, config, cache_dir), settings, False
