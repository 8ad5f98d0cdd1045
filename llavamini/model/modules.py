"""The names of the modules LLaVA-Mini adds around its LLM: the one table that training stages,
LoRA, quantization, the vLLM plug-in and the benchmarks read.

They are attributes of `LlavaMiniModel` (`VisionEncoderMixin` builds the first three, the model
the pre-fusion), which is the causal LM's `model`, so checkpoint keys start `model.<attribute>.`.
"""

from __future__ import annotations

COMPONENTS = {
    "vision_tower": "vision_tower",
    "projector": "mm_projector",
    "compressor": "compressor",
    "prefusion": "prefusion_layers",
}
"""Component name (as the benchmarks report it) -> attribute of `LlavaMiniModel`, in the order a
visual goes through them."""

VISION_TOWER = COMPONENTS["vision_tower"]
PROJECTOR = COMPONENTS["projector"]
COMPRESSOR = COMPONENTS["compressor"]
PREFUSION = COMPONENTS["prefusion"]

MULTIMODAL_MODULES = (PROJECTOR, COMPRESSOR, PREFUSION)
"""The modules LLaVA-Mini adds to the LLM, CLIP aside (they train; CLIP stays frozen)."""

LLM_LAYERS = "layers"
"""The LLM's decoder layers (a `ModuleList`) inside `LlavaMiniModel`."""

LLM_MODULES = ("embed_tokens", LLM_LAYERS, "norm")
"""The LLM's own modules inside `LlavaMiniModel` (the backbone's names)."""

MODEL = "model"
"""The causal LM's attribute holding `LlavaMiniModel` (the first part of every key but the head)."""

LM_HEAD = "lm_head"
"""The causal LM's output layer (beside `model`)."""


def module_name(attribute: str) -> str:
    """`attribute`'s module name in the causal LM (`named_modules`): `model.<attribute>`."""
    return f"{MODEL}.{attribute}"


def key_prefix(attribute: str) -> str:
    """The prefix of `attribute`'s parameter names and checkpoint keys: `model.<attribute>.`."""
    return f"{module_name(attribute)}."
