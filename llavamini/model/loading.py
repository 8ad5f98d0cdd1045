"""`load_pretrained`: model and processor of a checkpoint, offline.

Dispatch is by `config.model_type` (through the Auto classes), never by the folder's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from llavamini.model.checkpoint import resolve_checkpoint_dir
from llavamini.model.processing_llavamini import LlavaMiniProcessor

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


@dataclass
class LoadedModel:
    """A checkpoint's model and processor: what chat, evaluation and demos need."""

    model: torch.nn.Module
    processor: LlavaMiniProcessor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor


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
    processor = LlavaMiniProcessor.from_pretrained(checkpoint_dir)
    check_processor(processor, model.config, checkpoint_dir)
    return LoadedModel(model=model, processor=processor)


def check_processor(processor: LlavaMiniProcessor, config, checkpoint_dir: str) -> None:
    """Raise when the processor's image preprocessing is not the model config's."""
    for field in ("image_aspect_ratio", "resolution_ratio"):
        if getattr(processor, field) != getattr(config, field):
            raise ValueError(
                f"{checkpoint_dir}: the processor's {field}={getattr(processor, field)!r} "
                f"differs from config.json's {getattr(config, field)!r}; fix processor_config.json."
            )
