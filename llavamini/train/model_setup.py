"""Building the model a run trains: from a plain LLM, or from a LLaVA-Mini checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from transformers import AutoConfig

from llavamini.model import family_of
from llavamini.model.backbones import is_llava_mini
from llavamini.model.checkpoint import find_vision_config, gathered
from llavamini.model.loading import QUANTIZATION_SKIP_MODULES, quantization_config
from llavamini.model.modules import COMPRESSOR, PREFUSION, PROJECTOR, key_prefix, module_name
from llavamini.train.arguments import ARCHITECTURE_DEFAULTS
from llavamini.train.stages import MULTIMODAL_PREFIXES, PROJECTOR_PREFIX, Stage

logger = logging.getLogger(__name__)

QLORA_SKIP_MODULES = (*QUANTIZATION_SKIP_MODULES, module_name(PREFUSION))
"""What QLoRA keeps in 16-bit: the vision modules, lm_head, and the fully trained pre-fusion."""

LLM_CONFIG_DROP = ("model_type", "architectures", "transformers_version", "_name_or_path")


def architecture(model_args, base: dict) -> dict:
    """The architecture fields the run sets: `base` (defaults or a checkpoint's values) updated
    with every field given explicitly."""
    fields = dict(base)
    for name in ARCHITECTURE_DEFAULTS:
        value = getattr(model_args, name)
        if value is not None:
            fields[name] = value
    return fields


def multimodal_config(family, llm_config, model_args, data_args, training_args, stage: Stage):
    """The family's LLaVA-Mini config for the LLM `llm_config`, with the run's multimodal fields
    (the stage's architecture overriding the run's)."""
    vision_config = find_vision_config(model_args.vision_tower, base_dirs=(os.getcwd(),))
    if vision_config is None:
        raise FileNotFoundError(
            f"vision_tower={model_args.vision_tower!r} was found neither as a folder nor in the "
            f"local Hugging Face cache (nothing is downloaded during training set-up)."
        )
    fields = {k: v for k, v in llm_config.to_dict().items() if k not in LLM_CONFIG_DROP}
    # The vision config's own model_type tells the encoder (CLIP, SigLIP).
    vision_config = vision_config.to_dict()
    tower = model_args.vision_tower
    fields.update(
        # A folder given on the command line is relative to the working directory, but a saved
        # config's mm_vision_tower is read relative to the checkpoint: store it absolute.
        mm_vision_tower=os.path.abspath(tower) if os.path.isdir(tower) else tower,
        vision_config=vision_config,
        mm_hidden_size=vision_config["hidden_size"],
        mm_vision_select_layer=model_args.mm_vision_select_layer,
        mm_vision_select_feature=model_args.mm_vision_select_feature,
        image_aspect_ratio=data_args.image_aspect_ratio,
        tokenizer_model_max_length=training_args.model_max_length,
        tokenizer_padding_side="right",
        tune_mm_mlp_adapter=stage.saves == "adapter",
        mm_projector_lr=training_args.mm_projector_lr,
        **architecture(model_args, ARCHITECTURE_DEFAULTS),
    )
    fields.update(stage.architecture)
    return family.config_class(**fields)


def build_model(model_args, data_args, training_args, stage: Stage):
    """The model to train.

    From a LLaVA-Mini checkpoint: loaded strictly, every module kept (the reference re-created
    the projector and re-initialised the compressor here); architecture fields given explicitly
    may add modules (a compressor or pre-fusion on a LLaVA-1.5-mode checkpoint), which are
    initialised. From a plain LLM: LLaVA-Mini is built around it, CLIP loaded from
    `vision_tower`, the new modules initialised, and the projector loaded from
    `pretrain_mm_mlp_adapter` when given.
    """
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None
    path = model_args.model_name_or_path
    base_config = AutoConfig.from_pretrained(path)
    load_kwargs = {
        "dtype": dtype or torch.float32,
        "attn_implementation": model_args.attn_implementation,
        "strict": False,
        "output_loading_info": True,
    }
    if training_args.bits < 16:
        compute_dtype = dtype or torch.float32
        load_kwargs.update(
            dtype=compute_dtype,
            quantization_config=quantization_config(
                f"{training_args.bits}bit", compute_dtype, skip_modules=QLORA_SKIP_MODULES
            ),
            device_map={"": str(training_args.device)},
        )
    family = family_of(base_config.model_type)  # raises for an unsupported backbone
    if is_llava_mini(base_config.model_type):
        if stage.architecture:
            raise ValueError(
                f"Stage {model_args.stage!r} builds its own architecture {stage.architecture}; "
                f"start it from a plain LLM, not the LLaVA-Mini checkpoint {path}."
            )
        current = {name: getattr(base_config, name) for name in ARCHITECTURE_DEFAULTS}
        changes = {k: v for k, v in architecture(model_args, current).items() if current[k] != v}
        for name, value in changes.items():
            setattr(base_config, name, value)
        base_config.validate_multimodal()
        logger.info("Continuing from the LLaVA-Mini checkpoint %s; changes: %s", path, changes)
        with quiet_load_report():
            model, info = family.causal_lm_class.from_pretrained(
                path, config=base_config, **load_kwargs
            )
        allowed = tuple(prefix for field, prefix in CHANGED_MODULE.items() if field in changes)
    else:
        config = multimodal_config(family, base_config, model_args, data_args, training_args, stage)
        with quiet_load_report():
            model, info = family.causal_lm_class.from_pretrained(path, config=config, **load_kwargs)
        logger.info("Built LLaVA-Mini around %s; new modules: %s", path, MULTIMODAL_PREFIXES)
        allowed = MULTIMODAL_PREFIXES
    new_modules = check_new_modules(path, info, allowed)
    if model_args.prefusion_init == "llm" and key_prefix(PREFUSION) in new_modules:
        copy_llm_layers_to_prefusion(model)
    if model_args.pretrain_mm_mlp_adapter:
        load_projector(model, model_args.pretrain_mm_mlp_adapter)
    model.config.use_cache = False
    return model


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Drop transformers' table of missing keys while loading: `check_new_modules` checks them
    (and raises for any it does not expect) and the new modules are logged, so the table would
    only repeat it, one row per new weight. A filter rather than a quieter level: transformers 5
    runs extra tensor-parallel checks, with warnings of their own, when that logger is quieter."""
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    transformers_logger.addFilter(drop)
    try:
        yield
    finally:
        transformers_logger.removeFilter(drop)


CHANGED_MODULE = {
    "mm_projector_type": key_prefix(PROJECTOR),
    "compressor_type": key_prefix(COMPRESSOR),
    "compressor_size": key_prefix(COMPRESSOR),
    "compressor_num_heads": key_prefix(COMPRESSOR),
    "prefusion_layer_num": key_prefix(PREFUSION),
}
"""Which module an architecture change re-creates (its weights may be missing from the
checkpoint and are then initialised)."""


def check_new_modules(path: str, info: dict, allowed: tuple[str, ...]) -> set[str]:
    """The modules under `allowed` that `from_pretrained` initialised (missing from `path`);
    raise if anything else is missing or anything is unexpected."""
    missing = set(info["missing_keys"])
    other = sorted(k for k in missing if not k.startswith(allowed))
    if other or info["unexpected_keys"]:
        raise ValueError(
            f"{path} does not fit the requested architecture: missing {other[:20]}, unexpected "
            f"{sorted(info['unexpected_keys'])[:20]}."
        )
    return {prefix for prefix in allowed for k in missing if k.startswith(prefix)}


def copy_llm_layers_to_prefusion(model) -> None:
    """Initialise pre-fusion layer i as a copy of LLM layer i (works under ZeRO-3)."""
    inner = model.model
    if len(inner.prefusion_layers) > len(inner.layers):
        raise ValueError(
            f"prefusion_init='llm' needs prefusion_layer_num ({len(inner.prefusion_layers)}) <= "
            f"the LLM's num_hidden_layers ({len(inner.layers)})."
        )
    pairs = list(zip(inner.prefusion_layers, inner.layers, strict=False))
    parameters = [
        p for target, source in pairs for p in (*target.parameters(), *source.parameters())
    ]
    with gathered(parameters), torch.no_grad():
        for target, source in pairs:
            for copy, original in zip(target.parameters(), source.parameters(), strict=True):
                copy.copy_(original)
    logger.info("Initialised %d pre-fusion layers from the LLM's first layers", len(pairs))


def load_projector(model, path: str) -> None:
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
    with gathered(list(parameters.values())), torch.no_grad():
        for name, parameter in parameters.items():
            if parameter.shape != weights[name].shape:
                raise ValueError(
                    f"Projector weight {name}: checkpoint shape {tuple(weights[name].shape)}, "
                    f"model shape {tuple(parameter.shape)}."
                )
            parameter.copy_(weights[name])
    logger.info("Loaded the projector from %s", path)
