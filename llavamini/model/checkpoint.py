"""Loading policy: how a checkpoint on disk becomes a LLaVA-Mini model's weights, in one place.

Nothing here downloads (docs/compatibility.md F2): hub ids are looked up in the local Hugging
Face cache only, unless the caller passes `local_files_only=False` for the checkpoint itself.

1. **The checkpoint** (`resolve_checkpoint_dir`): a folder, or a hub id whose files are in the
   local HF cache; `from_pretrained`'s hub options (`HUB_OPTIONS`) apply to it.
2. **The vision tower's architecture** (`resolve_vision_config`), first found of:
   `vision_config` in config.json; the built-in config of `openai/clip-vit-large-patch14-336`
   when `mm_vision_tower` names it (the release); the config.json of the folder
   `mm_vision_tower` names, absolute or relative to the checkpoint folder (never to the working
   directory), or of that hub id in the local HF cache (a two-tower CLIP/SigLIP folder gives
   its vision part). Once resolved, `vision_config` is saved with the checkpoint.
3. **The vision tower's weights** (`load_vision_tower`): from the checkpoint when it stores any
   `model.vision_tower.vision_tower.*` tensor (then it must store them all), else from that
   same folder (an open_clip tower: from the file `vision_config.pretrained`).
4. **Key checks** (`load_checked`, behind `LlavaMiniForCausalLM.from_pretrained`): any missing
   or unexpected key raises a `ValueError` listing them (docs/compatibility.md K1); `strict=False`
   gives transformers' warning instead. `file_reads="per_tensor"` maps a file anew for each
   tensor (`FILE_READS`), for loads that convert every weight.
5. **DeepSpeed ZeRO-3** (`gathered`): weights written into partitioned parameters, here and by
   training's model setup, are written with the parameters gathered.

The image processor of a checkpoint without a processor is found the same way (its own
`preprocessor_config.json`, else the tower folder's): `llavamini.model.image_processors`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, GenerationConfig, PreTrainedConfig
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import cached_file

from llavamini.model.modules import VISION_TOWER, key_prefix
from llavamini.model.vision_tower import (
    CLIP_L_336,
    CLIP_L_336_VISION_CONFIG,
    ENCODER_PREFIX,
    vision_config_from_dict,
)

logger = logging.getLogger(__name__)

HUB_OPTIONS = (
    "cache_dir",
    "revision",
    "local_files_only",
    "token",
    "subfolder",
    "force_download",
    "proxies",
)
"""`from_pretrained` options that say where a hub id's files are (they reach `cached_file`)."""

VISION_ENCODER_PREFIX = key_prefix(VISION_TOWER) + ENCODER_PREFIX
"""Checkpoint prefix of the vision encoder's own state dict (the CLIP tower's
`CLIPVisionModel`): `model.vision_tower.vision_tower.vision_model.`."""

GENERATION_CONFIG_FILE = "generation_config.json"

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""Weight files of a vision tower folder, in the order they are tried."""

CLIP_FILE_PREFIX = "vision_model."
"""Prefix of the tower's tensors in LLaVA checkpoints and in CLIP/SigLIP files saved by
transformers 4 (and on the hub); transformers 5 saves a vision model without it."""

FOLDER_MODEL_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
"""A full two-tower checkpoint folder's model_type -> the vision part's."""


# ---- 1. the checkpoint ------------------------------------------------------------------------


def hub_options(kwargs: dict) -> dict:
    """The `HUB_OPTIONS` among a `from_pretrained`'s `kwargs` (left in `kwargs`)."""
    return {k: kwargs[k] for k in HUB_OPTIONS if k in kwargs}


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


def safetensors_files(checkpoint_dir: str) -> list[str] | None:
    """The checkpoint's safetensors files (the index's shards, or the single file), or None
    when the checkpoint is not in safetensors."""
    index = os.path.join(checkpoint_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(checkpoint_dir, shard) for shard in shards]
    single = os.path.join(checkpoint_dir, "model.safetensors")
    return [single] if os.path.isfile(single) else None


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


# ---- 2. the vision tower's architecture --------------------------------------------------------


def vision_tower_candidates(mm_vision_tower: str | None, base_dirs: tuple[str, ...]) -> list[str]:
    """Local folders that `mm_vision_tower` may name, in the order they are tried: itself when
    absolute, else relative to each of `base_dirs`."""
    if not mm_vision_tower:
        return []
    if os.path.isabs(mm_vision_tower):
        return [mm_vision_tower]
    return [os.path.join(base, mm_vision_tower) for base in base_dirs]


def find_vision_tower_folder(
    mm_vision_tower: str | None, base_dirs: tuple[str, ...], cache_dir: str | None = None
) -> str | None:
    """The first local folder holding `mm_vision_tower` (a path, or a hub id in the HF cache)."""
    for folder in vision_tower_candidates(mm_vision_tower, base_dirs):
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    if mm_vision_tower and not os.path.isabs(mm_vision_tower) and mm_vision_tower.count("/") == 1:
        # huggingface_hub's public cache lookup: a path, None, or a marker for "known absent".
        cached = try_to_load_from_cache(mm_vision_tower, "config.json", cache_dir=cache_dir)
        if isinstance(cached, str):
            return os.path.dirname(cached)
    return None


def find_vision_config(
    mm_vision_tower: str | None, base_dirs: tuple[str, ...], cache_dir: str | None = None
) -> PreTrainedConfig | None:
    """The tower's architecture from `mm_vision_tower` (step 2 of the module docstring, after
    an explicit `vision_config`), or None when it is not found offline."""
    if mm_vision_tower == CLIP_L_336:
        return CLIPVisionConfig(**CLIP_L_336_VISION_CONFIG)
    folder = find_vision_tower_folder(mm_vision_tower, base_dirs, cache_dir)
    if folder is None:
        return None
    with open(os.path.join(folder, "config.json")) as f:
        config_dict = json.load(f)
    if config_dict.get("model_type") in FOLDER_MODEL_TYPES:  # a two-tower model: its vision part
        vision_type = FOLDER_MODEL_TYPES[config_dict["model_type"]]
        config_dict = {**config_dict["vision_config"], "model_type": vision_type}
    return vision_config_from_dict(config_dict)


def resolve_vision_config(
    config: PreTrainedConfig, checkpoint_dir: str | None, cache_dir: str | None = None
) -> None:
    """Fill a LLaVA-Mini `config`'s `vision_config` (and `mm_hidden_size`) when unset, with
    `mm_vision_tower` relative to `checkpoint_dir` or as a hub id in the local HF cache
    (`cache_dir` if given), and validate the config again. Raises `FileNotFoundError` naming
    every place it looked."""
    if config.vision_config is not None:
        return
    base_dirs = (checkpoint_dir,) if checkpoint_dir else ()
    config.vision_config = find_vision_config(config.mm_vision_tower, base_dirs, cache_dir)
    if config.vision_config is None:
        raise FileNotFoundError(
            f"{type(config).__name__}.mm_vision_tower={config.mm_vision_tower!r}: no vision "
            f"tower config found offline. Looked for "
            f"{vision_tower_candidates(config.mm_vision_tower, base_dirs)} and for the hub id "
            f"in the local Hugging Face cache. Set `vision_config` explicitly or point "
            f"`mm_vision_tower` at a local CLIP folder (absolute, or relative to the checkpoint)."
        )
    if config.mm_hidden_size is None:
        config.mm_hidden_size = config.vision_config.hidden_size
    config.validate_multimodal()


# ---- 3. the vision tower's weights -------------------------------------------------------------


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, or of a PyTorch pickle (weights only)."""
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def read_vision_tower_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """The vision tensors of a CLIP or SigLIP folder (a vision model or a full two-tower model),
    named as in the vision model (without the file prefix `vision_model.`)."""
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            state_dict = read_weights(path)
            if not any(k.startswith(CLIP_FILE_PREFIX) for k in state_dict):
                return state_dict  # a vision model saved by transformers 5: no prefix
            return {
                k.removeprefix(CLIP_FILE_PREFIX): v
                for k, v in state_dict.items()
                if k.startswith(CLIP_FILE_PREFIX)
            }
    raise FileNotFoundError(
        f"No vision tower weights in {folder}: expected one of {list(WEIGHT_FILES)}."
    )


def read_open_clip_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The `visual.*` tensors of an open_clip checkpoint file (a full CLIP model's)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"open_clip checkpoint not found: {path}")
    state_dict = read_weights(path)
    state_dict = state_dict.get("state_dict", state_dict)
    weights = {k.removeprefix("module."): v for k, v in state_dict.items()}
    visual = {k: v for k, v in weights.items() if k.startswith("visual.")}
    if not visual:
        raise ValueError(f"{path} holds no `visual.*` tensors: not an open_clip checkpoint?")
    return visual


def vision_tower_state_dict(
    config: PreTrainedConfig, checkpoint_dir: str | None, cache_dir: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """(where they came from, the encoder's tensors named as in the encoder) for a checkpoint
    that does not store its tower: the `mm_vision_tower` folder (step 2's search) or, for an
    open_clip tower, the file `vision_config.pretrained`. Raises `FileNotFoundError` naming
    where it looked."""
    if config.vision_config.model_type == "open_clip_vision":
        source = config.vision_config.pretrained
        if not source:
            raise FileNotFoundError(
                "The checkpoint does not store the open_clip tower and "
                "vision_config.pretrained names no local open_clip checkpoint file."
            )
        return source, read_open_clip_state_dict(source)
    mm_vision_tower = config.mm_vision_tower
    base_dirs = (checkpoint_dir,) if checkpoint_dir else ()
    source = find_vision_tower_folder(mm_vision_tower, base_dirs, cache_dir)
    if source is None:
        raise FileNotFoundError(
            f"The checkpoint does not store the vision tower and mm_vision_tower="
            f"{mm_vision_tower!r} was not found offline: looked for "
            f"{vision_tower_candidates(mm_vision_tower, base_dirs)} and in the local Hugging "
            f"Face cache for that hub id. Download it once (hf download {mm_vision_tower}) or "
            f"point mm_vision_tower at a folder (absolute, or relative to the checkpoint)."
        )
    return source, read_vision_tower_state_dict(source)


def load_vision_tower(
    model: torch.nn.Module, checkpoint_dir: str | None = None, cache_dir: str | None = None
) -> str:
    """Load a LLaVA-Mini causal LM's vision weights from `vision_tower_state_dict`, never the
    network. Returns where they came from; raises `ValueError` when they do not fit the
    encoder."""
    encoder = model.model.vision_tower.encoder
    source, state_dict = vision_tower_state_dict(model.config, checkpoint_dir, cache_dir)
    with gathered(list(encoder.parameters())):  # whole under ZeRO-3 too
        result = encoder.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"Vision tower weights in {source} do not match vision_config: missing "
            f"{result.missing_keys[:20]}, unexpected {result.unexpected_keys[:20]}."
        )
    logger.info("Loaded the vision tower from %s", source)
    return source


# ---- 4. key checks -----------------------------------------------------------------------------

FILE_READS = {
    "map": "memory-map every file for the whole load (transformers' default): the pages read "
    "for any tensor stay in the process's resident set while its file is mapped",
    "per_tensor": "map a file anew for each tensor read (`TensorRead`): a weight converted on "
    "load (quantized) takes its pages out of the process's resident set when it is dropped, "
    "so the load peaks near the converted model's size instead of the files'",
}
"""How `load_checked` reads a safetensors checkpoint."""

COPY_BELOW_BYTES = 2**20
"""`TensorRead` copies tensors smaller than this out of their mapping: the kernel maps file
pages in blocks of up to 2 MiB, so a mapping kept for a small tensor would keep its neighbours'
pages resident too."""


class TensorRead:
    """One tensor of a safetensors file, read when transformers materializes it (`[...]`)
    through a mapping of the file of its own: a view of that mapping, which ends when the tensor
    is freed (a weight quantized on load drops it at once; one kept as stored, such as the
    embeddings, keeps only its own pages resident, as it is used), or a copy below
    `COPY_BELOW_BYTES`. `get_dtype`/`get_shape` answer from the header, as safetensors' own
    slices do."""

    def __init__(self, path: str, key: str, dtype: str, shape: list[int]):
        self.path, self.key, self.dtype, self.shape = path, key, dtype, shape

    def get_dtype(self) -> str:
        return self.dtype

    def get_shape(self) -> list[int]:
        return self.shape

    def __getitem__(self, index) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as f:
            tensor = f.get_slice(self.key)[index]
        return tensor.clone() if tensor.nbytes < COPY_BELOW_BYTES else tensor


def per_tensor_state_dict(checkpoint_dir: str) -> dict[str, TensorRead]:
    """The checkpoint's tensors as `TensorRead`s, for `from_pretrained(state_dict=...)`.
    Raises `ValueError` for a checkpoint not in safetensors."""
    files = safetensors_files(checkpoint_dir)
    if files is None:
        raise ValueError(f"{checkpoint_dir}: file_reads='per_tensor' needs safetensors files.")
    state_dict = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                header = f.get_slice(key)
                state_dict[key] = TensorRead(path, key, header.get_dtype(), header.get_shape())
    return state_dict


def load_weights(
    load: Callable,
    name_or_path,
    checkpoint_dir: str,
    file_reads: str,
    *model_args,
    skip_prefixes: tuple[str, ...] = (),
    **kwargs,
):
    """`load(name_or_path, ...)` (`checkpoint_dir`: where it resolved to) reading the files as
    `file_reads` says (`FILE_READS`), without the keys starting with one of `skip_prefixes`
    (those need file_reads='per_tensor')."""
    if file_reads not in FILE_READS:
        raise ValueError(f"file_reads={file_reads!r}; expected one of {sorted(FILE_READS)}.")
    if file_reads == "map":
        if skip_prefixes:
            raise ValueError("skip_prefixes needs file_reads='per_tensor'.")
        return load(name_or_path, *model_args, **kwargs)
    for option in HUB_OPTIONS:  # they locate a hub id's files, found already
        kwargs.pop(option, None)
    state_dict = {
        key: read
        for key, read in per_tensor_state_dict(checkpoint_dir).items()
        if not key.startswith(skip_prefixes)
    }
    model, info = load(None, *model_args, state_dict=state_dict, **kwargs)
    # Without a path transformers reads no generation_config.json: read it as it would.
    if os.path.isfile(os.path.join(checkpoint_dir, GENERATION_CONFIG_FILE)):
        model.generation_config = GenerationConfig.from_pretrained(checkpoint_dir)
    return model, info


def load_checked(
    load: Callable, model_class: type, pretrained_model_name_or_path, *model_args, **kwargs
):
    """`load` (the backbone's `PreTrainedModel.from_pretrained`, bound to `model_class`) under
    this policy: the checkpoint resolved offline (1), its `vision_config` resolved (2), the
    tower's weights from the checkpoint or loaded from elsewhere (3), and every missing or
    unexpected key an error unless `strict=False` (4). Returns what `from_pretrained` returns
    (the model, or with `output_loading_info` the model and its loading info).

    `skip_prefixes` (with `file_reads='per_tensor'`): keys left unread, for a model built
    without their modules (its LLM layers, when llama.cpp runs them: `ModelSpec`)."""
    strict = kwargs.pop("strict", True)
    file_reads = kwargs.pop("file_reads", "map")
    skip_prefixes = tuple(kwargs.pop("skip_prefixes", ()))
    output_loading_info = kwargs.pop("output_loading_info", False)
    hub = hub_options(kwargs)
    cache_dir = hub.get("cache_dir")
    checkpoint_dir = resolve_checkpoint_dir(str(pretrained_model_name_or_path), **hub)
    config = kwargs.pop("config", None)
    if config is None:
        config = model_class.config_class.from_pretrained(checkpoint_dir)
    resolve_vision_config(config, checkpoint_dir, cache_dir)
    model, info = load_weights(
        load,
        pretrained_model_name_or_path,
        checkpoint_dir,
        file_reads,
        *model_args,
        skip_prefixes=skip_prefixes,
        config=config,
        output_loading_info=True,
        **kwargs,
    )
    tower_missing = load_vision_tower_unless_stored(model, checkpoint_dir, cache_dir)
    missing = set(info["missing_keys"]) | tower_missing
    unexpected = set(info["unexpected_keys"])
    if strict and (missing or unexpected):
        raise ValueError(
            f"Checkpoint {pretrained_model_name_or_path} does not match {model_class.__name__}: "
            f"{len(missing)} missing keys {sorted(missing)[:50]}, {len(unexpected)} unexpected "
            f"keys {sorted(unexpected)[:50]}. Check compressor_size, prefusion_layer_num and "
            f"compressor_type in its config.json."
        )
    info["missing_keys"], info["unexpected_keys"] = missing, unexpected
    return (model, info) if output_loading_info else model


def load_vision_tower_unless_stored(
    model: torch.nn.Module, checkpoint_dir: str, cache_dir: str | None = None
) -> set[str]:
    """Load the vision tower's weights from elsewhere (`load_vision_tower`) when the checkpoint
    stores none of them. Returns the tower keys still missing: those a checkpoint that stores
    some of its tower lacks (transformers does not report them: the models ignore missing
    tower keys, as they may come from elsewhere); empty when the tower was loaded."""
    keys = stored_keys(checkpoint_dir)
    tower_keys = {k for k in model.state_dict() if k.startswith(VISION_ENCODER_PREFIX)}
    if keys is not None and keys & tower_keys:
        return tower_keys - keys
    load_vision_tower(model, checkpoint_dir, cache_dir)
    return set()


# ---- 5. DeepSpeed ZeRO-3 -----------------------------------------------------------------------


def gathered(parameters: list):
    """A context in which DeepSpeed ZeRO-3-partitioned `parameters` are whole, and what rank 0
    writes into them is shared with every rank on exit (a no-op without ZeRO-3)."""
    if is_deepspeed_zero3_enabled():
        # deepspeed is optional (training extra) and slow to import: only under ZeRO-3.
        import deepspeed

        return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)
    return contextlib.nullcontext()
