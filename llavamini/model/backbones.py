"""Language backbones: LLaVA-Mini over any transformers causal LM family.

A family's classes are composed from the backbone's own (`XConfig`, `XModel`, `XForCausalLM`) and
the LLaVA-Mini mixins, so pre-fusion uses the backbone's own decoder layer and rotary embedding.
Llama (Vicuna, Llama-3.x; the release, model_type "llava_mini_llama"), Qwen2/Qwen2.5
("llava_mini_qwen2") and Qwen3 ("llava_mini_qwen3") are registered on import; any other causal LM
whose base model has decoder `layers` and a shared `rotary_emb` (Mistral, Phi-3, ...) is added
with `register_backbone(model_type)`, after which its LLaVA-Mini checkpoints load with the Auto
classes too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

from llavamini.model.configuration_llavamini import LlavaMiniConfig, LlavaMiniConfigMixin
from llavamini.model.modeling_llavamini import (
    ENCODER_LAYERS,
    LlavaMiniForCausalLM,
    LlavaMiniForCausalLMMixin,
    LlavaMiniModel,
    LlavaMiniModelMixin,
)
from llavamini.model.processing_llavamini import LlavaMiniProcessor

MODEL_TYPE_PREFIX = "llava_mini_"


@dataclass(frozen=True)
class Family:
    """The LLaVA-Mini classes of one backbone family."""

    base_model_type: str
    config_class: type
    model_class: type
    causal_lm_class: type

    @property
    def model_type(self) -> str:
        return self.config_class.model_type


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", LlavaMiniConfig, LlavaMiniModel, LlavaMiniForCausalLM),
}
"""Backbone model_type -> its LLaVA-Mini family."""


def _compose(base_model_type: str, name: str) -> Family:
    """New classes `LlavaMini{name}Config/Model/ForCausalLM` over the backbone's own."""
    base_config = CONFIG_MAPPING[base_model_type]
    base_model, base_causal_lm = (
        MODEL_MAPPING[base_config],
        MODEL_FOR_CAUSAL_LM_MAPPING[base_config],
    )
    no_split = [*(base_model._no_split_modules or []), *ENCODER_LAYERS]
    config_class = strict(
        type(
            f"LlavaMini{name}Config",
            (LlavaMiniConfigMixin, base_config),
            {"model_type": MODEL_TYPE_PREFIX + base_model_type, "__module__": __name__},
        )
    )
    common = {"config_class": config_class, "_no_split_modules": no_split, "__module__": __name__}
    model_class = type(f"LlavaMini{name}Model", (LlavaMiniModelMixin, base_model), common)
    causal_lm_class = type(
        f"LlavaMini{name}ForCausalLM",
        (LlavaMiniForCausalLMMixin, base_causal_lm),
        {**common, "multimodal_model_class": model_class},
    )
    return Family(base_model_type, config_class, model_class, causal_lm_class)


def _has_decoder_layers_and_rope(base_model: type) -> bool:
    """Whether the backbone's modeling module defines a decoder-layer class and a rotary
    embedding, which pre-fusion reuses (an encoder like BERT has neither)."""
    module = sys.modules[base_model.__module__]
    names = dir(module)
    return any(n.endswith("DecoderLayer") for n in names) and any(
        n.endswith("RotaryEmbedding") for n in names
    )


def register_backbone(base_model_type: str, name: str | None = None) -> Family:
    """The LLaVA-Mini family over the transformers causal LM `base_model_type`, composed and
    registered with `AutoConfig` / `AutoModelForCausalLM` on first use.

    Raises `ValueError` naming the supported backbones when transformers has no causal LM of
    that model_type.
    """
    if base_model_type in FAMILIES:
        return FAMILIES[base_model_type]
    config = CONFIG_MAPPING[base_model_type] if base_model_type in CONFIG_MAPPING else None
    if not (
        config is not None
        and config in MODEL_FOR_CAUSAL_LM_MAPPING
        and config in MODEL_MAPPING
        and _has_decoder_layers_and_rope(MODEL_MAPPING[config])
    ):
        raise ValueError(
            f"Unsupported language backbone {base_model_type!r}: LLaVA-Mini needs a transformers "
            f"causal LM with rotary decoder layers (named: {sorted(FAMILIES)}; others such as "
            f"mistral or phi3 through register_backbone)."
        )
    family = _compose(
        base_model_type, name or base_model_type.replace("_", " ").title().replace(" ", "")
    )
    AutoConfig.register(family.model_type, family.config_class, exist_ok=True)
    AutoModelForCausalLM.register(family.config_class, family.causal_lm_class, exist_ok=True)
    AutoModelForImageTextToText.register(family.config_class, family.causal_lm_class, exist_ok=True)
    AutoProcessor.register(family.config_class, LlavaMiniProcessor, exist_ok=True)
    FAMILIES[base_model_type] = family
    return family


def family_of(model_type: str) -> Family:
    """The family of a backbone model_type ("qwen2") or a LLaVA-Mini one ("llava_mini_qwen2")."""
    base = model_type.removeprefix(MODEL_TYPE_PREFIX)
    return register_backbone(base)


def is_llava_mini(model_type: str) -> bool:
    return model_type.startswith(MODEL_TYPE_PREFIX)


LlavaMiniQwen2ForCausalLM = register_backbone("qwen2", "Qwen2").causal_lm_class
LlavaMiniQwen3ForCausalLM = register_backbone("qwen3", "Qwen3").causal_lm_class
LlavaMiniQwen2Config = FAMILIES["qwen2"].config_class
LlavaMiniQwen3Config = FAMILIES["qwen3"].config_class
