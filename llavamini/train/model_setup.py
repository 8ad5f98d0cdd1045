"""Building the model a run trains: from a plain LLM, or from a LLaVA-Mini checkpoint."""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoConfig
from transformers.integrations import is_deepspeed_zero3_enabled

from llavamini.model import LlavaMiniConfig, LlavaMiniForCausalLM
from llavamini.model.configuration_llavamini import find_vision_config
from llavamini.train.stages import MULTIMODAL_PREFIXES, PROJECTOR_PREFIX, Stage

logger = logging.getLogger(__name__)

LLM_CONFIG_DROP = ("model_type", "architectures", "transformers_version", "_name_or_path")


def multimodal_config(llm_config, model_args, data_args, training_args, stage: Stage):
    """A `LlavaMiniConfig` for the LLM `llm_config` with the run's multimodal fields (the stage's
    architecture overriding the run's)."""
    vision_config = find_vision_config(model_args.vision_tower, base_dirs=(os.getcwd(),))
    if vision_config is None:
        raise FileNotFoundError(
            f"vision_tower={model_args.vision_tower!r} was found neither as a folder nor in the "
            f"local Hugging Face cache (nothing is downloaded during training set-up)."
        )
    fields = {k: v for k, v in llm_config.to_dict().items() if k not in LLM_CONFIG_DROP}
    fields.update(
        mm_vision_tower=model_args.vision_tower,
        vision_config=vision_config.to_dict(),
        mm_hidden_size=vision_config.hidden_size,
        mm_vision_select_layer=model_args.mm_vision_select_layer,
        mm_vision_select_feature=model_args.mm_vision_select_feature,
        mm_projector_type=model_args.mm_projector_type,
        compressor_type=model_args.compressor_type,
        compressor_size=model_args.compressor_size,
        compressor_num_heads=model_args.compressor_num_heads,
        prefusion_layer_num=model_args.prefusion_layer_num,
        resolution_ratio=model_args.resolution_ratio,
        image_aspect_ratio=data_args.image_aspect_ratio,
        tokenizer_model_max_length=training_args.model_max_length,
        tokenizer_padding_side="right",
        tune_mm_mlp_adapter=stage.saves == "adapter",
        mm_projector_lr=training_args.mm_projector_lr,
    )
    fields.update(stage.architecture)
    return LlavaMiniConfig(**fields)


def build_model(model_args, data_args, training_args, stage: Stage) -> LlavaMiniForCausalLM:
    """The model to train.

    From a LLaVA-Mini checkpoint: loaded strictly, every module kept (the reference re-created
    the projector and re-initialised the compressor here). From a plain LLM: LLaVA-Mini is built
    around it, CLIP loaded from `vision_tower`, the new modules initialised, and the projector
    loaded from `pretrain_mm_mlp_adapter` when given.
    """
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None
    path = model_args.model_name_or_path
    base_config = AutoConfig.from_pretrained(path)
    load_kwargs = {
        "dtype": dtype or torch.float32,
        "attn_implementation": model_args.attn_implementation,
    }
    if base_config.model_type == LlavaMiniConfig.model_type:
        if stage.architecture:
            raise ValueError(
                f"Stage {model_args.stage!r} builds its own architecture {stage.architecture}; "
                f"start it from a plain LLM, not the LLaVA-Mini checkpoint {path}."
            )
        logger.info("Fine-tuning the LLaVA-Mini checkpoint %s (all modules kept)", path)
        model = LlavaMiniForCausalLM.from_pretrained(path, **load_kwargs)
    else:
        config = multimodal_config(base_config, model_args, data_args, training_args, stage)
        model, info = LlavaMiniForCausalLM.from_pretrained(
            path, config=config, strict=False, output_loading_info=True, **load_kwargs
        )
        unexpected_new = [k for k in info["missing_keys"] if not k.startswith(MULTIMODAL_PREFIXES)]
        if unexpected_new or info["unexpected_keys"]:
            raise ValueError(
                f"{path} is not a plain LLM of this architecture: missing {unexpected_new[:20]}, "
                f"unexpected {sorted(info['unexpected_keys'])[:20]}."
            )
        logger.info("Built LLaVA-Mini around %s; new modules: %s", path, MULTIMODAL_PREFIXES)
    if model_args.pretrain_mm_mlp_adapter:
        load_projector(model, model_args.pretrain_mm_mlp_adapter)
    model.config.use_cache = False
    return model


def load_projector(model: LlavaMiniForCausalLM, path: str) -> None:
    """Copy a stage-1 `mm_projector.bin` into the projector; every key must match. Works under
    ZeRO-3, where each rank holds only a shard of the parameters."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrain_mm_mlp_adapter not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = {
        k.removeprefix(PROJECTOR_PREFIX): v
        for k, v in state.items()
        if k.startswith(PROJECTOR_PREFIX)
    }
    projector = model.model.mm_projector
    expected = set(projector.state_dict())
    if set(weights) != expected:
        raise ValueError(
            f"{path} does not match the projector: it has {sorted(weights)}, the model expects "
            f"{sorted(expected)} (under {PROJECTOR_PREFIX})."
        )
    parameters = dict(projector.named_parameters())
    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(parameters.values()), modifier_rank=0):
            _copy(parameters, weights)
    else:
        _copy(parameters, weights)
    logger.info("Loaded the projector from %s", path)


def _copy(parameters: dict, weights: dict) -> None:
    with torch.no_grad():
        for name, parameter in parameters.items():
            if parameter.shape != weights[name].shape:
                raise ValueError(
                    f"Projector weight {name}: checkpoint shape {tuple(weights[name].shape)}, "
                    f"model shape {tuple(parameter.shape)}."
                )
            parameter.copy_(weights[name])
