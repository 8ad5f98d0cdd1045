"""What trains in each stage: the one table that freezing, saving and loading all read."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from llavamini.model.modules import (
    LLM_MODULES,
    LM_HEAD,
    MULTIMODAL_MODULES,
    PROJECTOR,
    VISION_TOWER,
    key_prefix,
)

MULTIMODAL_PREFIXES = tuple(key_prefix(name) for name in MULTIMODAL_MODULES)
"""The modules LLaVA-Mini adds to the LLM (CLIP aside); they get `mm_projector_lr`."""

PROJECTOR_PREFIX = key_prefix(PROJECTOR)
VISION_TOWER_PREFIX = key_prefix(VISION_TOWER)
LLM_PREFIXES = (*(key_prefix(name) for name in LLM_MODULES), f"{LM_HEAD}.")
"""The LLM's parameters: `model.embed_tokens.`, `model.layers.`, `model.norm.`, `lm_head.`."""


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        trainable: parameter-name prefixes that train (everything else is frozen; CLIP always).
        architecture: `LlavaMiniConfig` fields the stage imposes on a model built from an LLM.
        saves: 'adapter' writes only the trainable weights (`mm_projector.bin`, as the
            reference's stage 1); 'full' writes a checkpoint that `from_pretrained` loads.
    """

    trainable: tuple[str, ...]
    architecture: dict = field(default_factory=dict)
    saves: str = "full"


STAGES: dict[str, Stage] = {
    # Paper stage 1 (LLaVA-1.5 mode): CLIP and LLM frozen, projector aligned on captions.
    "pretrain": Stage(
        trainable=(PROJECTOR_PREFIX,),
        architecture={"compressor_type": "none", "prefusion_layer_num": 0},
        saves="adapter",
    ),
    # Paper stage 2: projector, compressor, pre-fusion and LLM end to end; CLIP frozen.
    "finetune": Stage(trainable=MULTIMODAL_PREFIXES + LLM_PREFIXES),
}

ADAPTER_FILE = "mm_projector.bin"
"""Stage-1 output, reference-compatible: `{"model.mm_projector.0.weight": ..., ...}`."""


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"Unknown stage {name!r}; known: {sorted(STAGES)}.")
    return STAGES[name]


def is_trainable(name: str, prefixes: tuple[str, ...], vision_tower: bool = False) -> bool:
    """Whether parameter `name` (possibly wrapped by peft) starts with one of `prefixes`; the
    vision tower only with `vision_tower` (`unfreeze_mm_vision_tower`)."""
    name = name.removeprefix("base_model.model.")
    if name.startswith(VISION_TOWER_PREFIX):
        return vision_tower
    return name.startswith(prefixes)


def apply_trainable(
    model: nn.Module, prefixes: tuple[str, ...], vision_tower: bool = False
) -> dict[str, int]:
    """Freeze everything, then unfreeze parameters under `prefixes` (and the vision tower with
    `vision_tower`). Returns parameter counts `{"trainable": n, "frozen": m}`."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_trainable(name, prefixes, vision_tower))
    return parameter_counts(model)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """`{"trainable": n, "frozen": m}` parameter counts."""
    counts = {"trainable": 0, "frozen": 0}
    for parameter in model.parameters():
        counts["trainable" if parameter.requires_grad else "frozen"] += parameter.numel()
    return counts
