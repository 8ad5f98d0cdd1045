"""Vision encoders: their configs and modules, `(N, 3, H, W)` images to `(N, L, D_v)` features
of one hidden layer.

One small interface for every encoder (`VisionTower`): the hidden state of a chosen layer, with or
without the class token, and the patch grid size. Encoders, by `vision_config.model_type`:
transformers CLIP (the release's, checkpoint-compatible; its config is built in as
`CLIP_L_336_VISION_CONFIG`), transformers SigLIP (no class token), and open_clip ViTs (optional:
open_clip_torch needs torchvision). Where a checkpoint's tower config and weights come from is
`llavamini.model.checkpoint`'s business.
"""

from __future__ import annotations

import contextlib

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from llavamini.model.packed_linear import pack_linears, prepack

CLIP_L_336 = "openai/clip-vit-large-patch14-336"
"""The vision tower of every released LLaVA-Mini checkpoint."""

CLIP_L_336_VISION_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
"""`CLIPVisionConfig` of `openai/clip-vit-large-patch14-336` (its hub config.json, vision part)."""


@strict
class OpenClipVisionConfig(PreTrainedConfig):
    """An open_clip ViT vision tower (the optional `open_clip` backend; needs open_clip_torch).

    `model_name` is an open_clip architecture (`open_clip.list_models()`); `pretrained` a local
    checkpoint file of that architecture, read when the tower is loaded (nothing is downloaded).
    Sizes are filled in from open_clip's architecture config when not given.
    """

    model_type = "open_clip_vision"

    model_name: str = "ViT-L-14-336"
    pretrained: str | None = None
    hidden_size: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    num_hidden_layers: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if None in (self.hidden_size, self.image_size, self.patch_size, self.num_hidden_layers):
            vision = open_clip_architecture(self.model_name)
            self.hidden_size = self.hidden_size or vision["width"]
            self.image_size = self.image_size or vision["image_size"]
            self.patch_size = self.patch_size or vision["patch_size"]
            self.num_hidden_layers = self.num_hidden_layers or vision["layers"]


def open_clip_architecture(model_name: str) -> dict:
    """open_clip's `vision_cfg` of `model_name`; raises `ImportError` when open_clip is missing."""
    try:  # optional (it needs torchvision): imported only for an open_clip tower
        import open_clip
    except ImportError as error:
        raise ImportError(
            "The open_clip vision backend needs open_clip_torch (and torchvision, which exists for "
            "torch 2.13 only as a CUDA build): pip install -c constraints.txt open_clip_torch"
        ) from error
    config = open_clip.get_model_config(model_name)
    if config is None or "vision_cfg" not in config:
        raise ValueError(f"open_clip has no architecture {model_name!r} (open_clip.list_models()).")
    return config["vision_cfg"]


VISION_CONFIGS = {
    "clip_vision_model": CLIPVisionConfig,
    "siglip_vision_model": SiglipVisionConfig,
    "open_clip_vision": OpenClipVisionConfig,
}
"""Supported vision encoders, by `vision_config.model_type`."""

HAS_CLASS_TOKEN = {
    "clip_vision_model": True,
    "siglip_vision_model": False,
    "open_clip_vision": True,
}
"""Whether the encoder prepends a class token ('patch' features drop it; SigLIP has none)."""


def vision_config_from_dict(values: dict) -> PreTrainedConfig:
    """The encoder config a dict describes (no model_type: CLIP, as reference configs)."""
    values = dict(values)
    model_type = values.pop("model_type", "clip_vision_model")
    if model_type not in VISION_CONFIGS:
        raise ValueError(
            f"vision_config.model_type={model_type!r} is not a supported vision encoder; "
            f"supported: {sorted(VISION_CONFIGS)}."
        )
    return VISION_CONFIGS[model_type](**values)


class LlavaMiniCLIPVisionModel(CLIPVisionModel):
    """`CLIPVisionModel` as LLaVA checkpoints nest it.

    transformers 5 renames the weights of a `CLIPVisionModel` on load (dropping `vision_model.`)
    and back on save. Under LLaVA-Mini the `vision_model` level is an explicit module (see
    `VisionTower`), so that renaming would double the prefix when a loaded model is saved again.
    A subclass defined here counts as custom code, which transformers leaves unrenamed.
    """


class LlavaMiniSiglipVisionModel(SiglipVisionModel):
    """`SiglipVisionModel`, unrenamed for the same reason as `LlavaMiniCLIPVisionModel`."""


class OpenClipVisionModel(nn.Module):
    """An open_clip ViT's image tower (`visual.*` weights, as in open_clip checkpoints).

    open_clip returns only pooled outputs, so the selected block's output is captured with a
    forward hook (this works across open_clip versions for its `VisionTransformer`).
    """

    def __init__(self, config: OpenClipVisionConfig):
        super().__init__()
        open_clip_architecture(config.model_name)  # clear ImportError when open_clip is missing
        # open_clip is optional (it needs torchvision): imported only when such a tower is built.
        import open_clip
        from open_clip.transformer import VisionTransformer

        self.config = config
        self.visual = open_clip.create_model(config.model_name, pretrained=None).visual
        if not isinstance(self.visual, VisionTransformer):
            raise ValueError(
                f"open_clip architecture {config.model_name!r} has a "
                f"{type(self.visual).__name__} image tower; only its VisionTransformer (ViT-*) "
                f"towers are supported."
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


ENCODERS = {
    "clip_vision_model": LlavaMiniCLIPVisionModel,
    "siglip_vision_model": LlavaMiniSiglipVisionModel,
    "open_clip_vision": OpenClipVisionModel,
}
"""Encoder class by `vision_config.model_type`."""


ENCODER_KEY = "vision_model"
"""The encoder's key inside `VisionTower.vision_tower` (the level transformers 4 nested CLIP's
weights under)."""

ENCODER_PREFIX = f"vision_tower.{ENCODER_KEY}."
"""The prefix of the encoder's parameter names inside `VisionTower`."""


class VisionTower(nn.Module):
    """A frozen vision encoder built from its config (never downloaded at construction).

    The checkpoint keys `model.vision_tower.vision_tower.vision_model.*` are the module path:
    transformers 4 nested CLIP's weights under `vision_model`, transformers 5 does not, so the
    `vision_model` level is kept here explicitly, in a `ModuleDict`.
    """

    def __init__(self, vision_config: PreTrainedConfig, select_layer: int, select_feature: str):
        super().__init__()
        model_type = vision_config.model_type
        if model_type not in ENCODERS:
            raise ValueError(
                f"Unsupported vision encoder {model_type!r}; supported: {sorted(ENCODERS)}."
            )
        encoder = ENCODERS[model_type](vision_config)
        self.vision_tower = nn.ModuleDict({ENCODER_KEY: encoder})
        self.vision_tower.requires_grad_(False)
        self.select_layer = select_layer
        self.drop_class_token = select_feature == "patch" and HAS_CLASS_TOKEN[model_type]
        self.tokens_per_image = self.grid_size**2 + HAS_CLASS_TOKEN[model_type]

    def pack_weights(self) -> int:
        """Opt in to MKL-packed block weights for one image at a time on a CPU (float32):
        one image's prefill ~6% faster, for a packed copy of the block weights (1.2 GB for
        CLIP-L) kept beside them (llavamini/model/packed_linear.py). A batch's larger matmuls
        amortise MKL's packing already, and take the plain path. Returns how many linears now
        pack (0 when called again)."""
        return pack_linears(encoder_blocks(self.encoder), self.tokens_per_image)

    @property
    def encoder(self) -> nn.Module:
        return self.vision_tower[ENCODER_KEY]

    @property
    def grid_size(self) -> int:
        """Patches per side of one image (24 for CLIP ViT-L/14 at 336 px)."""
        config = self.encoder.config
        return config.image_size // config.patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(N, 3, H, W)` -> `(N, grid**2, D_v)` ('patch') or `(N, 1 + grid**2, D_v)`
        ('cls_patch'), in the encoder's dtype.

        Runs without gradients unless the tower is being trained (`unfreeze_mm_vision_tower`).
        """
        encoder = self.encoder
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        images = images.to(encoder.dtype)
        with torch.set_grad_enabled(trainable):
            if len(images) == 1:  # the blocks that run: up to the selected one
                blocks = encoder_blocks(encoder)
                count = selected_block(blocks, self.select_layer)
                prepack(blocks[:count], images, self.tokens_per_image)
            features = block_output(encoder, images, self.select_layer)
        return features[:, 1:] if self.drop_class_token else features


def block_owner(encoder: nn.Module) -> tuple[nn.Module, str]:
    """The module holding the transformer blocks of a CLIP, SigLIP or open_clip vision encoder,
    and the name of its `nn.ModuleList` attribute."""
    if isinstance(encoder, OpenClipVisionModel):
        return encoder.visual.transformer, "resblocks"
    return encoder.encoder, "layers"


def encoder_blocks(encoder: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a CLIP, SigLIP or open_clip vision encoder."""
    owner, name = block_owner(encoder)
    return getattr(owner, name)


def selected_block(blocks: nn.ModuleList, layer: int) -> int:
    """The 1-based index of the block whose output `layer` selects (transformers' hidden-states
    numbering; negative counts from the end)."""
    index = layer % (len(blocks) + 1)
    if index == 0:
        raise ValueError("mm_vision_select_layer must select a block's output, not the embeddings.")
    return index


@contextlib.contextmanager
def first_blocks_only(encoder: nn.Module, count: int):
    """Within the block, `encoder`'s forward runs its first `count` blocks only: its block list
    is swapped for a slice of itself (the same modules), and put back after. Parameters and
    state-dict keys are untouched outside the block."""
    owner, name = block_owner(encoder)
    blocks = getattr(owner, name)
    setattr(owner, name, blocks[:count])
    try:
        yield
    finally:
        setattr(owner, name, blocks)


def block_output(
    encoder: nn.Module, images: torch.Tensor, layer: int, with_input: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The output of block `layer` in transformers' hidden-states numbering (i: block i, 1-based;
    negative counts from the end, -2 being the second-to-last block), `(N, L, D_v)`; with
    `with_input`, also that block's input `(N, L, D_v)` (what attention-based token reduction
    reads, `llavamini.model.reduction`).

    Only the blocks up to the selected one run (`first_blocks_only`; CLIP at -2 skips 1 of 24),
    which works for every encoder class whose forward loops over its block list. The output is
    read with a forward hook on the selected block rather than from `output_hidden_states`:
    transformers 5 can attach its output recorders to a nested encoder a second time (after a
    caller asked the whole model for hidden states), and the tuple then holds more entries than
    layers; open_clip returns only pooled outputs.
    """
    index = selected_block(encoder_blocks(encoder), layer)
    captured = []

    def keep(module, inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    inputs = []
    block = encoder_blocks(encoder)[index - 1]
    handles = [block.register_forward_hook(keep)]
    if with_input:
        handles.append(block.register_forward_pre_hook(lambda module, args: inputs.append(args[0])))
    try:
        with first_blocks_only(encoder, index):
            encoder(images)
    finally:
        for handle in handles:
            handle.remove()
    hidden = captured[0]
    if isinstance(encoder, OpenClipVisionModel) and not getattr(
        encoder.visual.transformer, "batch_first", True
    ):
        hidden = hidden.transpose(0, 1)  # older open_clip runs blocks sequence-first
        inputs = [tensor.transpose(0, 1) for tensor in inputs]
    return (hidden, inputs[0]) if with_input else hidden
