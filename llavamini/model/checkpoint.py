"""Checkpoint files on disk: where a checkpoint is and which keys it stores.

Nothing here downloads: hub ids are looked up in the local Hugging Face cache only, unless the
caller passes `local_files_only=False` for the checkpoint itself.
"""

from __future__ import annotations

import contextlib
import json
import os

from safetensors import safe_open
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import cached_file

VISION_ENCODER_PREFIX = "model.vision_tower.vision_tower."
"""Checkpoint prefix of the vision encoder's own state dict (the CLIP tower's
`CLIPVisionModel`), inside the `model.vision_tower.` module."""


def resolve_checkpoint_dir(name_or_path: str, **hub_kwargs) -> str:
    """The local folder of a checkpoint: the path itself, or the HF cache snapshot of a hub id."""
    if os.path.isdir(name_or_path):
        return name_or_path
    try:
        config_file = cached_file(name_or_path, "config.json", **hub_kwargs)
    except OSError as error:  # transformers' way of saying "not there" (bad id, not cached, ...)
        raise FileNotFoundError(
            f"Checkpoint {name_or_path!r} is neither a folder nor a hub id whose config.json is "
            f"in the local Hugging Face cache ({error})"
        ) from error
    return os.path.dirname(config_file)


def stored_keys(checkpoint_dir: str) -> set[str] | None:
    """Tensor names stored in the checkpoint's safetensors files (headers only), or None when
    the checkpoint is not in safetensors."""
    index = os.path.join(checkpoint_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return set(json.load(f)["weight_map"])
    single = os.path.join(checkpoint_dir, "model.safetensors")
    if os.path.isfile(single):
        with safe_open(single, framework="pt") as f:
            return set(f.keys())
    return None


def gathered(parameters: list):
    """A context in which DeepSpeed ZeRO-3-partitioned `parameters` are whole, and what rank 0
    writes into them is shared with every rank on exit (a no-op without ZeRO-3)."""
    if is_deepspeed_zero3_enabled():
        import deepspeed

        return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)
    return contextlib.nullcontext()
