"""Run configuration: three dataclasses parsed by `HfArgumentParser` (the reference's flag names).

`parse_args(argv)` takes an optional YAML recipe first, then `--key value` overrides: defaults,
then the YAML, then the command line. Unknown keys are errors naming the key and the file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

import torch
import transformers
import yaml

from llavamini.conversation import TEMPLATES
from llavamini.data.video import MAX_VIDEO_FRAMES
from llavamini.train.stages import STAGES


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A plain LLM (LLaVA-Mini is built around it) or a LLaVA-Mini checkpoint "
            "(fine-tuned further, keeping its projector, compressor and pre-fusion)."
        },
    )
    stage: str = field(default="finetune", metadata={"help": f"One of {sorted(STAGES)}."})
    version: str = field(
        default="llava_llama_3_1", metadata={"help": f"Conversation template: {sorted(TEMPLATES)}."}
    )
    vision_tower: str = field(
        default="openai/clip-vit-large-patch14-336",
        metadata={
            "help": "CLIP folder or hub id in the local HF cache (when building from an LLM)."
        },
    )
    mm_vision_select_layer: int = field(default=-2, metadata={"help": "CLIP hidden state used."})
    mm_vision_select_feature: str = field(
        default="patch", metadata={"help": "'patch' or 'cls_patch'."}
    )
    # Architecture: None keeps a LLaVA-Mini checkpoint's value, or takes ARCHITECTURE_DEFAULTS
    # when building from a plain LLM. A value that differs from a checkpoint's changes it: new
    # modules are initialised (prefusion_init), nothing else is allowed to be missing.
    mm_projector_type: str | None = field(default=None, metadata={"help": "Projector type."})
    compressor_type: str | None = field(
        default=None, metadata={"help": "'query', 'avg_pool' or 'none' (LLaVA-1.5 mode)."}
    )
    compressor_size: int | None = field(default=None, metadata={"help": "C: C x C tokens."})
    compressor_num_heads: int | None = field(default=None, metadata={"help": "Compressor heads."})
    prefusion_layer_num: int | None = field(default=None, metadata={"help": "Pre-fusion layers."})
    resolution_ratio: int | None = field(default=None, metadata={"help": "N: N x N crops + 1."})
    prefusion_init: str = field(
        default="random",
        metadata={
            "help": "New pre-fusion layers: 'random', or 'llm' (copies of the LLM's first "
            "layers; the paper does not say, the reference uses random)."
        },
    )
    unfreeze_mm_vision_tower: bool = field(
        default=False,
        metadata={"help": "Also train the vision tower (e.g. a tiny one from scratch)."},
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "Stage-1 mm_projector.bin to start the projector from."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "'sdpa', 'eager' or 'flash_attention_2'."}
    )

    def __post_init__(self):
        if self.prefusion_init not in ("random", "llm"):
            raise ValueError(f"prefusion_init={self.prefusion_init!r}: expected 'random' or 'llm'.")
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required (an LLM or a LLaVA-Mini checkpoint).")
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: expected one of {sorted(STAGES)}.")
        if self.version not in TEMPLATES:
            raise ValueError(f"version={self.version!r}: expected one of {sorted(TEMPLATES)}.")


@dataclass
class DataArguments:
    data_path: list[str] = field(
        default_factory=list,
        metadata={"help": "LLaVA-format JSON/JSONL files or YAML mixtures (one or more)."},
    )
    image_folder: list[str] = field(
        default_factory=list, metadata={"help": "Media folder of each data_path, in order."}
    )
    image_aspect_ratio: str = field(default="pad", metadata={"help": "'pad' or 'square'."})
    video_fps: float = field(default=1.0, metadata={"help": "Video frames per second sampled."})
    video_max_frames: int | None = field(
        default=MAX_VIDEO_FRAMES,
        metadata={"help": f"Cap on frames per video ({MAX_VIDEO_FRAMES}; null in YAML: no cap)."},
    )
    on_bad_sample: str = field(
        default="raise", metadata={"help": "'raise' (default) or 'skip' (logged and counted)."}
    )
    mixture_seed: int = field(default=1, metadata={"help": "Seed of YAML mixture sampling."})

    def __post_init__(self):
        if not self.data_path:
            raise ValueError("data_path is required: one or more LLaVA-format files.")
        if len(self.data_path) != len(self.image_folder):
            raise ValueError(
                f"{len(self.data_path)} data_path entries but {len(self.image_folder)} "
                f"image_folder entries: give one image folder per data file."
            )
        if self.on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample={self.on_bad_sample!r}: expected 'raise' or 'skip'.")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(
        default=2048, metadata={"help": "Longest sequence, vision tokens included."}
    )
    mm_projector_lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of projector, compressor and pre-fusion (paper stage 2: "
            "1e-5 with LLM 1e-4); None uses learning_rate."
        },
    )
    group_by_modality_length: bool = field(
        default=True, metadata={"help": "Batch image and text-only samples separately."}
    )
    lora_enable: bool = field(default=False, metadata={"help": "LoRA on the LLM (peft)."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    bits: int = field(
        default=16,
        metadata={
            "help": "4 or 8: QLoRA, the LLM loaded quantized with bitsandbytes (needs "
            "lora_enable and the qlora extra); the multimodal modules stay 16-bit."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False."})
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training after this much wall-clock time."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.bits not in (4, 8, 16):
            raise ValueError(f"bits={self.bits}: expected 4, 8 or 16.")
        if self.bits < 16 and not self.lora_enable:
            raise ValueError(f"bits={self.bits} (QLoRA) trains LoRA adapters: set lora_enable.")
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            # Pinned memory only speeds up copies to a GPU; without one torch warns each epoch.
            self.dataloader_pin_memory = False


ARCHITECTURE_DEFAULTS = {
    "mm_projector_type": "mlp2x_gelu",
    "compressor_type": "query",
    "compressor_size": 1,
    "compressor_num_heads": 8,
    "prefusion_layer_num": 4,
    "resolution_ratio": 1,
}
"""The paper's LLaVA-Mini, for a model built around a plain LLM."""

ALIASES = {"data_paths": "data_path", "image_folders": "image_folder"}
"""Reference flag names accepted as aliases."""

DATACLASSES = (ModelArguments, DataArguments, TrainingArguments)


def read_recipe(path: str) -> dict:
    """A YAML recipe as a dict of known keys (aliases resolved); errors name key and file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Training recipe not found: {path}")
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a training recipe must be a mapping of argument names.")
    known = {f.name for cls in DATACLASSES for f in fields(cls)}
    resolved = {}
    for key, value in recipe.items():
        key = ALIASES.get(key, key)
        if key not in known:
            raise ValueError(f"{path}: unknown training argument {key!r}.")
        resolved[key] = value
    return resolved


def parse_args(
    argv: list[str],
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """`[recipe.yaml] [--key value ...]` -> the three argument dataclasses."""
    recipe = {}
    if argv and not argv[0].startswith("-"):
        recipe, argv = read_recipe(argv[0]), argv[1:]
    argv = [f"--{ALIASES[a[2:]]}" if a.startswith("--") and a[2:] in ALIASES else a for a in argv]
    parser = transformers.HfArgumentParser(DATACLASSES, allow_abbrev=False)
    parser.set_defaults(**recipe)
    model_args, data_args, training_args, extra = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if extra:
        raise ValueError(f"Unknown training arguments: {extra}.")
    return model_args, data_args, training_args


def save_run_config(path: str, model_args, data_args, training_args) -> None:
    """Write every resolved argument to `path` (YAML), so a run can be repeated."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    resolved = {
        "model": asdict(model_args),
        "data": asdict(data_args),
        "training": training_args.to_dict(),
    }
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
