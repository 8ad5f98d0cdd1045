"""The CLIP vision tower: `(N, 3, H, W)` images to `(N, L, D_v)` features of one hidden layer."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CLIP_FILE_PREFIX = "vision_model."
"""Prefix of the tower's tensors in LLaVA checkpoints and in CLIP files saved by transformers 4
(and on the hub); transformers 5 saves a `CLIPVisionModel` without it."""


class LlavaMiniCLIPVisionModel(CLIPVisionModel):
    """`CLIPVisionModel` as LLaVA checkpoints nest it.

    transformers 5 renames the weights of a `CLIPVisionModel` on load (dropping `vision_model.`)
    and back on save. Under LLaVA-Mini the `vision_model` level is an explicit module (see
    `VisionTower`), so that renaming would double the prefix when a loaded model is saved again.
    A subclass defined here counts as custom code, which transformers leaves unrenamed.
    """


class VisionTower(nn.Module):
    """A frozen `CLIPVisionModel` built from its config (never downloaded at construction).

    The checkpoint keys `model.vision_tower.vision_tower.vision_model.*` are the module path:
    transformers 4 nested CLIP's weights under `vision_model`, transformers 5 does not, so the
    `vision_model` level is kept here explicitly, in a `ModuleDict`.
    """

    def __init__(self, vision_config: CLIPVisionConfig, select_layer: int, select_feature: str):
        super().__init__()
        clip = LlavaMiniCLIPVisionModel(vision_config)
        self.vision_tower = nn.ModuleDict({"vision_model": clip})
        self.vision_tower.requires_grad_(False)
        self.select_layer = select_layer
        self.select_feature = select_feature

    @property
    def clip(self) -> CLIPVisionModel:
        return self.vision_tower["vision_model"]

    @property
    def grid_size(self) -> int:
        """Patches per side of one image (24 for CLIP ViT-L/14 at 336 px)."""
        config = self.clip.config
        return config.image_size // config.patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(N, 3, H, W)` -> `(N, grid**2, D_v)` ('patch') or `(N, 1 + grid**2, D_v)` ('cls_patch'),
        in the tower's dtype.

        Runs in the tower's own dtype, without gradients unless the tower is being trained
        (`unfreeze_mm_vision_tower`).
        """
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in self.clip.parameters())
        with torch.set_grad_enabled(trainable):
            outputs = self.clip(images.to(self.clip.dtype), output_hidden_states=True)
        features = outputs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            features = features[:, 1:]
        return features


def read_vision_tower_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """The vision tensors of a CLIP folder (a `CLIPVisionModel` or a full `CLIPModel`), named as
    in a `CLIPVisionModel` in memory (without the file prefix `vision_model.`)."""
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if name.endswith(".safetensors"):
                state_dict = load_file(path)
            else:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
            if not any(k.startswith(CLIP_FILE_PREFIX) for k in state_dict):
                return state_dict  # a CLIPVisionModel saved by transformers 5: no prefix
            return {
                k.removeprefix(CLIP_FILE_PREFIX): v
                for k, v in state_dict.items()
                if k.startswith(CLIP_FILE_PREFIX)
            }
    raise FileNotFoundError(
        f"No vision tower weights in {folder}: expected one of {list(WEIGHT_FILES)}."
    )
