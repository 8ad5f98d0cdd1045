"""LLaVA-Mini model; importing this registers every named backbone family with transformers'
Auto classes (model_types llava_mini_llama, llava_mini_qwen2, llava_mini_qwen3), with
`LlavaMiniProcessor` as their `AutoProcessor` (and the causal LM as their
`AutoModelForImageTextToText`, for transformers' image-text-to-text pipeline)."""

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from llavamini.model.backbones import (
    FAMILIES,
    LlavaMiniQwen2Config,
    LlavaMiniQwen2ForCausalLM,
    LlavaMiniQwen3Config,
    LlavaMiniQwen3ForCausalLM,
    family_of,
    register_backbone,
)
from llavamini.model.configuration_llavamini import LlavaMiniConfig
from llavamini.model.modeling_llavamini import (
    LlavaMiniForCausalLM,
    LlavaMiniLlamaForCausalLM,
    LlavaMiniModel,
)
from llavamini.model.processing_llavamini import LlavaMiniProcessor

AutoConfig.register(LlavaMiniConfig.model_type, LlavaMiniConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMiniConfig, LlavaMiniForCausalLM, exist_ok=True)
AutoModelForImageTextToText.register(LlavaMiniConfig, LlavaMiniForCausalLM, exist_ok=True)
AutoProcessor.register(LlavaMiniConfig, LlavaMiniProcessor, exist_ok=True)

__all__ = [
    "FAMILIES",
    "LlavaMiniConfig",
    "LlavaMiniForCausalLM",
    "LlavaMiniLlamaForCausalLM",
    "LlavaMiniModel",
    "LlavaMiniProcessor",
    "LlavaMiniQwen2Config",
    "LlavaMiniQwen2ForCausalLM",
    "LlavaMiniQwen3Config",
    "LlavaMiniQwen3ForCausalLM",
    "family_of",
    "register_backbone",
]
