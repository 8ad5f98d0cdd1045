"""LLaVA-Mini model; importing this registers every named backbone family with transformers'
Auto classes (model_types llava_mini_llama, llava_mini_qwen2, llava_mini_qwen3)."""

from transformers import AutoConfig, AutoModelForCausalLM

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

AutoConfig.register(LlavaMiniConfig.model_type, LlavaMiniConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMiniConfig, LlavaMiniForCausalLM, exist_ok=True)

__all__ = [
    "FAMILIES",
    "LlavaMiniConfig",
    "LlavaMiniForCausalLM",
    "LlavaMiniLlamaForCausalLM",
    "LlavaMiniModel",
    "LlavaMiniQwen2Config",
    "LlavaMiniQwen2ForCausalLM",
    "LlavaMiniQwen3Config",
    "LlavaMiniQwen3ForCausalLM",
    "family_of",
    "register_backbone",
]
