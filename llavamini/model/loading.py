"""`load_pretrained`: model, tokenizer and image processor of a checkpoint, offline.

Dispatch is by `config.model_type` (through the Auto classes), never by the folder's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    CLIPImageProcessorPil,
    SiglipImageProcessorPil,
)

from llavamini.model.checkpoint import resolve_checkpoint_dir
from llavamini.model.configuration_llavamini import CLIP_L_336, find_vision_tower_folder

PROCESSOR_FILE = "preprocessor_config.json"

CLIP_L_336_PROCESSOR = {
    "size": {"shortest_edge": 336},
    "crop_size": {"height": 336, "width": 336},
    "resample": 3,  # bicubic
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
"""`preprocessor_config.json` of `openai/clip-vit-large-patch14-336`, so the released checkpoint
needs nothing from the network."""


QUANTIZATION_SKIP_MODULES = (
    "model.vision_tower",
    "model.mm_projector",
    "model.compressor",
    "lm_head",
)
"""Modules kept in 16-bit under 8/4-bit loading: small, and the first three feed every vision
token (the reference's 8-bit path quantized lm_head and its 4-bit path failed outright)."""


def quantization_config(
    quantization: str,
    compute_dtype: torch.dtype,
    skip_modules: tuple[str, ...] = QUANTIZATION_SKIP_MODULES,
) -> BitsAndBytesConfig:
    """bitsandbytes settings for '8bit' or '4bit' (NF4) loading; `skip_modules` stay 16-bit."""
    if quantization not in ("8bit", "4bit"):
        raise ValueError(f"Unknown quantization {quantization!r}; expected '8bit' or '4bit'.")
    return BitsAndBytesConfig(
        load_in_8bit=quantization == "8bit",
        load_in_4bit=quantization == "4bit",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_type="nf4",
        llm_int8_skip_modules=list(skip_modules),
    )


PROCESSORS = {
    "clip_vision_model": CLIPImageProcessorPil,
    "siglip_vision_model": SiglipImageProcessorPil,
}
"""Image processor class by vision encoder (open_clip towers use CLIP's preprocessing)."""


@dataclass
class LoadedModel:
    """What chat, evaluation and demos need from a checkpoint."""

    model: torch.nn.Module
    tokenizer: object
    image_processor: CLIPImageProcessorPil | SiglipImageProcessorPil


def load_image_processor(checkpoint_dir: str, config):
    """The encoder's image processor: the checkpoint's own `preprocessor_config.json`, else the
    vision tower folder's, else the built-in one for CLIP ViT-L/14-336, else (open_clip) CLIP's
    preprocessing at the tower's image size.

    The PIL processors are used whatever is installed: the reference preprocessed with PIL (the
    torchvision backend differs by up to ~0.015 per pixel).
    """
    model_type = config.vision_config.model_type
    processor_class = PROCESSORS.get(model_type, CLIPImageProcessorPil)
    tower_folder = find_vision_tower_folder(config.mm_vision_tower, (checkpoint_dir, os.getcwd()))
    looked = [checkpoint_dir] + ([tower_folder] if tower_folder else [])
    for folder in looked:
        if os.path.isfile(os.path.join(folder, PROCESSOR_FILE)):
            return processor_class.from_pretrained(folder)
    if config.mm_vision_tower == CLIP_L_336:
        return CLIPImageProcessorPil(**CLIP_L_336_PROCESSOR)
    if model_type == "open_clip_vision":
        size = config.vision_config.image_size
        return CLIPImageProcessorPil(
            **{**CLIP_L_336_PROCESSOR, "size": {"shortest_edge": size},
               "crop_size": {"height": size, "width": size}}
        )  # fmt: skip
    raise FileNotFoundError(
        f"No {PROCESSOR_FILE} for mm_vision_tower={config.mm_vision_tower!r}: looked in {looked}."
    )


def load_pretrained(
    model_path: str,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Load a LLaVA-Mini checkpoint (a folder, or a hub id already in the local HF cache).

    Args:
        model_path: the checkpoint.
        dtype: torch dtype, or 'auto' for the one stored in config.json.
        device: where to put the model ('cpu', 'cuda', 'cuda:1', ...; None keeps it on CPU).
        attn_implementation: 'sdpa' (default), 'eager', 'flash_attention_2', ...
        quantization: None, '8bit' or '4bit' (bitsandbytes, on a CUDA device; the vision
            modules and lm_head stay unquantized).
    """
    checkpoint_dir = resolve_checkpoint_dir(model_path)
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if quantization is not None:
        compute_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float16
        kwargs.update(
            dtype=compute_dtype,
            quantization_config=quantization_config(quantization, compute_dtype),
            device_map=str(device or "cuda"),
        )
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, **kwargs)
    if device is not None and quantization is None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    image_processor = load_image_processor(checkpoint_dir, model.config)
    return LoadedModel(model=model, tokenizer=tokenizer, image_processor=image_processor)
