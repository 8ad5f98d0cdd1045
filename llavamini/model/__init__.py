"""LLaVA-Mini model; importing this registers it with transformers' Auto classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from llavamini.model.configuration_llavamini import LlavaMiniConfig
from llavamini.model.modeling_llavamini import (
    LlavaMiniForCausalLM,
    LlavaMiniLlamaForCausalLM,
    LlavaMiniModel,
)

AutoConfig.register(LlavaMiniConfig.model_type, LlavaMiniConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaMiniConfig, LlavaMiniForCausalLM, exist_ok=True)

__all__ = ["LlavaMiniConfig", "LlavaMiniForCausalLM", "LlavaMiniLlamaForCausalLM", "LlavaMiniModel"]
