"""What the benchmark compares: model variants (LLaVA-1.5 mode, LLaVA-Mini, HD) at several scales.

A *variant* fixes the multimodal fields (compressor, compressor size C, pre-fusion depth, HD ratio);
a *scale* fixes the LLM and vision tower shapes. `7b` and `8b` are the real shapes (Vicuna-7B, the
paper's Table 14 backbone, and Llama-3.1-8B, the release's); `tiny` and `small` keep the real depths
and token counts (24 CLIP layers, 576 patches, 32 LLM layers, 4 pre-fusion layers) and divide every
width, head count and the vocabulary by 16 or 8, so that a CPU can time them. At reduced width the
weight matmuls shrink by divisor**2 but the attention products only by the divisor, so attention
weighs more there than at real scale; the analytic FLOPs of the scaled config are reported next to
its timings for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from llavamini.model import LlavaMiniConfig
from llavamini.model.vision_tower import CLIP_L_336_VISION_CONFIG

LLMS = {
    "vicuna-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
    ),
}
"""LLM shapes (`LlamaConfig` fields): LLaVA-1.5's Vicuna-7B and the release's Llama-3.1-8B."""

REFERENCE_COMPRESSOR_HEADS = 8
"""Heads of the released compressor at the CLIP-L width 1024 (scaled with the width below)."""


@dataclass(frozen=True)
class Scale:
    """An LLM from `LLMS` and a width divisor (1: the real shapes)."""

    llm: str
    width_divisor: int
    description: str


SCALES = {
    "tiny": Scale("llama-3.1-8b", 16, "Llama-3.1-8B and CLIP-L depths, widths / 16 (CPU)"),
    "small": Scale("llama-3.1-8b", 8, "Llama-3.1-8B and CLIP-L depths, widths / 8 (CPU)"),
    "7b": Scale("vicuna-7b", 1, "Vicuna-7B + CLIP-L/336, real shapes (GPU)"),
    "8b": Scale("llama-3.1-8b", 1, "Llama-3.1-8B + CLIP-L/336, real shapes (GPU)"),
}


@dataclass(frozen=True)
class ModelVariant:
    """The multimodal fields of one compared model."""

    description: str
    compressor_type: str
    compressor_size: int
    prefusion_layer_num: int
    resolution_ratio: int = 1

    def overrides(self) -> dict:
        """The `LlavaMiniConfig` fields this variant sets."""
        return dict(
            compressor_type=self.compressor_type,
            compressor_size=self.compressor_size,
            prefusion_layer_num=self.prefusion_layer_num,
            resolution_ratio=self.resolution_ratio,
        )


VARIANTS = {
    "llava-1.5": ModelVariant(
        "LLaVA-1.5 mode: all 576 projected tokens, no pre-fusion", "none", 1, 0
    ),
    "mini-1": ModelVariant("LLaVA-Mini, 1 token (C=1), 4 pre-fusion layers", "query", 1, 4),
    "mini-4": ModelVariant("LLaVA-Mini, 4 tokens (C=2)", "query", 2, 4),
    "mini-16": ModelVariant("LLaVA-Mini, 16 tokens (C=4)", "query", 4, 4),
    "mini-64": ModelVariant("LLaVA-Mini, 64 tokens (C=8)", "query", 8, 4),
    "llava-1.5-hd": ModelVariant(
        "LLaVA-1.5 mode at 672 px: 4 crops + global, 2880 tokens", "none", 1, 0, 2
    ),
    "mini-hd-1": ModelVariant(
        "LLaVA-Mini-HD at 672 px, 1 token (Table 14's row)", "query", 1, 4, 2
    ),
    "mini-hd-64": ModelVariant(
        "LLaVA-Mini-HD at 672 px, 64 tokens (the paper's HD model)", "query", 8, 4, 2
    ),
}
"""Compared models, by name; `llava-1.5` and `mini-1` are the headline pair."""


def baseline_of(variant: str) -> str | None:
    """The LLaVA-1.5-mode variant at the same resolution as `variant` (None for those
    themselves): speed-ups are taken against it."""
    spec = VARIANTS[variant]
    if spec.compressor_type == "none":
        return None
    return "llava-1.5" if spec.resolution_ratio == 1 else "llava-1.5-hd"


def scaled_vision_config(divisor: int) -> dict:
    """CLIP ViT-L/14-336 with its width, MLP width and heads divided by `divisor` (depth, patch
    size and image size kept, so the token counts are the real ones)."""
    config = dict(CLIP_L_336_VISION_CONFIG)
    config["hidden_size"] //= divisor
    config["intermediate_size"] //= divisor
    config["num_attention_heads"] = max(1, config["num_attention_heads"] // divisor)
    return config


def scaled_llm_config(llm: str, divisor: int) -> dict:
    """`LLMS[llm]` with widths, heads, KV heads (at least 1) and vocabulary divided by `divisor`."""
    config = dict(LLMS[llm])
    for name in ("hidden_size", "intermediate_size", "vocab_size"):
        config[name] //= divisor
    for name in ("num_attention_heads", "num_key_value_heads"):
        config[name] = max(1, config[name] // divisor)
    return config


def build_config(scale: str, variant: str, llm: str | None = None, **overrides) -> LlavaMiniConfig:
    """The `LlavaMiniConfig` of `variant` at `scale` (`llm` replaces the scale's LLM if given).

    Token ids 0/1/2 are pad/BOS/EOS, so random prompts draw from ids >= 3.
    """
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}: expected one of {list(SCALES)}.")
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}: expected one of {list(VARIANTS)}.")
    spec = SCALES[scale]
    vision = scaled_vision_config(spec.width_divisor)
    fields = dict(
        scaled_llm_config(llm or spec.llm, spec.width_divisor),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        mm_vision_tower=None,
        vision_config=vision,
        mm_hidden_size=vision["hidden_size"],
        compressor_num_heads=max(1, REFERENCE_COMPRESSOR_HEADS // spec.width_divisor),
        image_aspect_ratio="pad",
        **VARIANTS[variant].overrides(),
    )
    fields.update(overrides)
    return LlavaMiniConfig(**fields)


def image_parts(config: LlavaMiniConfig) -> int:
    """Images per picture the tower sees: 1, or N*N crops + the global view."""
    ratio = config.resolution_ratio
    return 1 if ratio == 1 else ratio * ratio + 1
