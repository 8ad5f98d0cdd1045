"""LLaVA-Mini configurations: a language backbone's config plus the multimodal fields.

`LlavaMiniConfigMixin` holds the multimodal fields; each backbone family combines it with its own
config class (`LlavaMiniConfig` = mixin + `LlamaConfig`, model_type "llava_mini_llama", the
release's; other families in `llavamini.model.backbones`). Every field of the reference's
`config.json` (docs/compatibility.md K1) is accepted. The ones that shape the model are validated
when the config is built; the ones the reference writes but never reads at inference
(`tune_mm_mlp_adapter`, `mm_projector_lr`, ...) are kept so that a loaded config saves back
unchanged.

The vision encoder is CLIP (the release), SigLIP or an open_clip ViT, by `vision_config`'s
model_type (`llavamini.model.vision_tower`). When config.json has no `vision_config`, it is
resolved offline from `mm_vision_tower` by the loading policy (`llavamini.model.checkpoint`):
at construction when that needs no folder (the release's CLIP, an absolute path, a cached hub
id), else by `resolve_vision_config(checkpoint_dir)`, which `from_pretrained` calls.
"""

from __future__ import annotations

import re

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, PreTrainedConfig

from llavamini.model import checkpoint
from llavamini.model.vision_tower import CLIP_L_336, HAS_CLASS_TOKEN, vision_config_from_dict

COMPRESSOR_TYPES = ("query", "avg_pool", "none")
SELECT_FEATURES = ("patch", "cls_patch")
IMAGE_ASPECT_RATIOS = ("pad", "square")
_INT_FIELDS = {
    "compressor_size": 1,
    "compressor_num_heads": 1,
    "resolution_ratio": 1,
    "prefusion_layer_num": 0,
    "video_chunk_frames": 1,
}
_OPTIONAL_INT_FIELDS = {"video_chunk_frames"}
_PROJECTOR_PATTERN = re.compile(r"^(linear|identity|mlp(\d+)x_gelu)$")


@strict
class LlavaMiniConfigMixin(PreTrainedConfig):
    """The multimodal fields, combined with a backbone's config class (see the module docstring).

    Sizes of the new modules all follow from the config: the compressor works at the vision
    tower's width (`vision_config.hidden_size`, which `mm_hidden_size` must equal), the projector
    maps that width to `hidden_size`, and each pre-fusion layer is a decoder layer of this LLM.
    """

    # Vision tower.
    mm_vision_tower: str | None = CLIP_L_336
    """Hub id or folder (absolute, or relative to the checkpoint) of the CLIP vision tower
    (weights are read from it only when the checkpoint itself does not store them)."""
    vision_config: dict | PreTrainedConfig | None = None
    """Architecture of the vision tower (CLIP, SigLIP or open_clip); resolved offline when absent
    (see the module docstring)."""
    mm_vision_select_layer: int = -2
    """Index into the tower's hidden states whose output is used (-2: second to last block)."""
    mm_vision_select_feature: str = "patch"
    """'patch' drops the class token, 'cls_patch' keeps it."""
    mm_hidden_size: int | None = None
    """Width of the vision features; must equal `vision_config.hidden_size` (filled if absent)."""

    # Projector.
    mm_projector_type: str = "mlp2x_gelu"
    """'linear', 'identity' or 'mlp{N}x_gelu' (N linear layers with exact GELU between them)."""

    # Compressor and pre-fusion: the LLaVA-Mini part.
    compressor_type: str = "query"
    """'query' (the paper's cross-attention compressor, checkpoint key `model.compressor`),
    'avg_pool' (the paper's pooling ablation, no parameters) or 'none' (LLaVA-1.5 mode: every
    projected vision token goes to the LLM)."""
    compressor_size: int = 1
    """C: the image is compressed to C x C tokens."""
    compressor_num_heads: int = 8
    """Heads of the compressor's cross-attention (the reference uses 8)."""
    prefusion_layer_num: int = 4
    """Number of pre-fusion decoder layers (0 disables pre-fusion)."""

    video_chunk_frames: int | None = None
    """Video frames encoded together (tower, compressor and pre-fusion); bounds peak memory.
    None chooses by device at run time (`VisionEncoderMixin.video_chunk_size`): one frame on a
    CPU, batches within a memory budget on a GPU."""

    # Image preprocessing (read by `llavamini.data.process_images`).
    image_aspect_ratio: str = "square"
    """'pad' pads to a square with the CLIP mean colour before resizing; 'square' lets the
    processor resize and centre-crop (the reference's default when the flag is not passed)."""
    resolution_ratio: int = 1
    """N: high resolution splits the image into N x N crops plus the global view."""

    # Sequence handling.
    tokenizer_model_max_length: int | None = None
    """Training sequences are truncated to this length after the vision tokens are spliced in."""
    tokenizer_padding_side: str = "right"

    # Written by the reference, accepted for compatibility, validated where a value is unsupported.
    mm_patch_merge_type: str = "flat"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    image_grid_pinpoints: list | str | None = None
    tune_mm_mlp_adapter: bool = False
    freeze_mm_mlp_adapter: bool = False
    mm_projector_lr: float | None = None
    use_mm_proj: bool = True
    unfreeze_mm_vision_tower: bool = False
    max_sequence_length: int | None = None
    s2: bool = False
    s2_scales: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if isinstance(self.vision_config, dict):
            self.vision_config = vision_config_from_dict(self.vision_config)
        if self.vision_config is None:
            self.vision_config = checkpoint.find_vision_config(self.mm_vision_tower, base_dirs=())
        if self.mm_hidden_size is None and self.vision_config is not None:
            self.mm_hidden_size = self.vision_config.hidden_size

    def resolve_vision_config(
        self, checkpoint_dir: str | None, cache_dir: str | None = None
    ) -> None:
        """Resolve `vision_config` with `mm_vision_tower` relative to `checkpoint_dir`, or as a
        hub id in the local HF cache (`cache_dir` if given): see
        `llavamini.model.checkpoint.resolve_vision_config`."""
        checkpoint.resolve_vision_config(self, checkpoint_dir, cache_dir)

    @property
    def num_compressed_tokens(self) -> int:
        """Vision tokens the LLM receives per image (per frame for video) at standard resolution."""
        return self.vision_token_count(parts=1)

    def vision_token_count(self, parts: int, frames: int = 1) -> int:
        """Vision tokens the LLM receives for one image of `parts` parts (1, or N*N crops + the
        global view), or for a video of `frames` such frames."""
        if self.compressor_type != "none":
            return self.compressor_size**2 * frames
        grid = self.vision_config.image_size // self.vision_config.patch_size
        per_part = grid * grid + (self.mm_vision_select_feature == "cls_patch")
        return per_part * parts * frames

    @property
    def vision_has_class_token(self) -> bool:
        return HAS_CLASS_TOKEN[self.vision_config.model_type]

    def validate_multimodal(self):
        """Part of `@strict` validation: every multimodal field, with the field named on error."""
        owner = type(self).__name__
        _check_choice(self, "mm_vision_select_feature", SELECT_FEATURES)
        _check_choice(self, "compressor_type", COMPRESSOR_TYPES)
        _check_choice(self, "image_aspect_ratio", IMAGE_ASPECT_RATIOS)
        _check_choice(self, "tokenizer_padding_side", ("right", "left"))
        _check_choice(self, "mm_patch_merge_type", ("flat",))
        if not _PROJECTOR_PATTERN.match(self.mm_projector_type):
            raise ValueError(
                f"{owner}.mm_projector_type={self.mm_projector_type!r}: expected 'linear', "
                f"'identity' or 'mlp<N>x_gelu' (e.g. 'mlp2x_gelu')."
            )
        for name, minimum in _INT_FIELDS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_INT_FIELDS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{owner}.{name}={value!r}: expected an integer >= {minimum}.")
        for name in ("mm_use_im_start_end", "s2"):
            if getattr(self, name):
                raise ValueError(f"{owner}.{name}=True is not supported by LLaVA-Mini.")
        if self.vision_config is None:
            return  # resolved later by `resolve_vision_config`, which validates again
        vision_width = self.vision_config.hidden_size
        if self.mm_hidden_size != vision_width:
            raise ValueError(
                f"{owner}.mm_hidden_size={self.mm_hidden_size} disagrees with "
                f"vision_config.hidden_size={vision_width}: the projector reads vision features "
                f"of that width."
            )
        if self.mm_projector_type == "identity" and vision_width != self.hidden_size:
            raise ValueError(
                f"{owner}.mm_projector_type='identity' needs vision_config.hidden_size "
                f"({vision_width}) == hidden_size ({self.hidden_size})."
            )
        if self.compressor_type == "query" and vision_width % self.compressor_num_heads:
            raise ValueError(
                f"{owner}.compressor_num_heads={self.compressor_num_heads} does not divide "
                f"the compressor width vision_config.hidden_size={vision_width}."
            )
        if self.mm_vision_select_feature == "cls_patch" and not self.vision_has_class_token:
            raise ValueError(
                f"{owner}.mm_vision_select_feature='cls_patch': the "
                f"{self.vision_config.model_type} encoder has no class token; use 'patch'."
            )
        if self.compressor_type != "none" and self.mm_vision_select_feature != "patch":
            raise ValueError(
                f"{owner}.mm_vision_select_feature must be 'patch' with a compressor: the "
                "compressor reads a square grid of patch features."
            )


@strict
class LlavaMiniConfig(LlavaMiniConfigMixin, LlamaConfig):
    """Configuration of `LlavaMiniForCausalLM`: a `LlamaConfig` (Vicuna, Llama-3.x) plus the
    multimodal fields of `LlavaMiniConfigMixin`; model_type "llava_mini_llama", as released."""

    model_type = "llava_mini_llama"


def head_dim(config) -> int:
    """The LLM's attention head width: `config.head_dim`, else hidden size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_choice(config, name: str, choices: tuple) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(
            f"{type(config).__name__}.{name}={value!r}: expected one of {list(choices)}."
        )
