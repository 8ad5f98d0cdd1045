"""LLaVA-Mini for vLLM: vLLM's own Llama / Qwen2 / Qwen3 as the LLM (paged KV cache, tensor
parallelism, continuous batching), plus the vision side and pre-fusion.

The vision side (CLIP/SigLIP tower, projector, compressor) and pre-fusion run once per prompt,
in `embed_multimodal`, as `LlavaMiniEncoder`: the very modules and methods of the transformers
model (`llavamini.model`), so their arithmetic is the reference's. Pre-fusion needs no KV cache
(it reads the whole prompt at once), which is why it stays a transformers decoder layer; only
the LLM, where serving time goes, is vLLM's.

Checkpoint keys are the release's (docs/compatibility.md K1): `model.embed_tokens`,
`model.layers.*`, `model.norm`, `lm_head` go to the LLM under their own names;
`model.vision_tower.*`, `model.mm_projector.*`, `model.compressor.*`, `model.prefusion_layers.*`
to the encoder.

Shapes: L prompt length with placeholder, L' = L - 1 + V the engine's prompt length (V vision
tokens), D LLM width.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Iterable

import torch
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from llavamini.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN
from llavamini.integrations.vllm.processing import (
    FRAMES_FIELD,
    PIXEL_FIELD,
    PROMPT_FIELD,
    LlavaMiniDummyInputsBuilder,
    LlavaMiniMultiModalProcessor,
    LlavaMiniProcessingInfo,
)
from llavamini.model.backbones import MODEL_TYPE_PREFIX
from llavamini.model.checkpoint import vision_tower_state_dict
from llavamini.model.modules import COMPONENTS, MODEL, VISION_TOWER
from llavamini.model.packing import prefusion_text_keep, splice_vision_tokens
from llavamini.model.prefusion import PreFusionLayers
from llavamini.model.vision_encoder import VisionEncoderMixin
from llavamini.model.vision_tower import ENCODER_PREFIX

logger = logging.getLogger(__name__)

ENCODER_PREFIXES = tuple(f"{attribute}." for attribute in COMPONENTS.values())
"""Checkpoint keys (after `model.`) that belong to `LlavaMiniEncoder`."""


def backbone_classes(config) -> tuple[str, type[nn.Module], type[nn.Module]]:
    """For a LLaVA-Mini config: vLLM's architecture name of its LLM ("LlamaForCausalLM"), and
    transformers' decoder-layer and rotary-embedding classes of that family, which pre-fusion
    is built from (as the transformers model builds it)."""
    base_config = CONFIG_MAPPING[config.model_type.removeprefix(MODEL_TYPE_PREFIX)]
    base_model = MODEL_MAPPING[base_config]
    module = importlib.import_module(base_model.__module__)
    name = base_model.__name__.removesuffix("Model")
    architecture = MODEL_FOR_CAUSAL_LM_MAPPING[base_config].__name__
    layer_class = getattr(module, f"{name}DecoderLayer")
    return architecture, layer_class, getattr(module, f"{name}RotaryEmbedding")


class LlavaMiniEncoder(VisionEncoderMixin, nn.Module):
    """Vision tower, projector, compressor and pre-fusion of one LLaVA-Mini: a visual and its
    prompt's text embeddings -> (vision tokens, fused text).

    Its methods are the transformers model's own (`VisionEncoderMixin`), over the same module
    names, so it computes exactly what the transformers model computes.
    """

    def __init__(self, config):
        super().__init__()
        config = copy.deepcopy(config)
        # Pre-fusion runs transformers layers: give them transformers' default attention.
        config._attn_implementation = "sdpa"
        config.validate_multimodal()
        self.config = config
        _, layer_class, rotary_class = backbone_classes(config)
        self.build_vision_modules(config)
        self.rotary_emb = rotary_class(config=config)
        self.prefusion_layers = PreFusionLayers(
            config, config.prefusion_layer_num, layer_class=layer_class
        )

    def load_checkpoint_weights(
        self, weights: dict[str, torch.Tensor], checkpoint_dir: str
    ) -> set[str]:
        """Load `weights` (named as this module's parameters); the vision tower from the
        `mm_vision_tower` folder when the checkpoint does not store it. Returns the names of
        the parameters loaded; raises `ValueError` naming any parameter left unloaded."""
        own = dict(self.named_parameters())
        tower = {n for n in own if n.startswith(f"{VISION_TOWER}.")}
        if not tower & set(weights):
            # The tower's own tensors, named as in the encoder itself.
            prefix = f"{VISION_TOWER}.{ENCODER_PREFIX}"
            _, tower_weights = vision_tower_state_dict(self.config, checkpoint_dir)
            weights.update({prefix + k: v for k, v in tower_weights.items()})
        unexpected = sorted(set(weights) - set(own))
        missing = sorted(set(own) - set(weights))
        if unexpected or missing:
            raise ValueError(
                f"LLaVA-Mini encoder weights do not match the config: missing {missing[:20]}, "
                f"unexpected {unexpected[:20]}."
            )
        with torch.no_grad():
            for name, tensor in weights.items():
                own[name].copy_(tensor.to(own[name].dtype))
        return set(weights)


@MULTIMODAL_REGISTRY.register_processor(
    LlavaMiniMultiModalProcessor,
    info=LlavaMiniProcessingInfo,
    dummy_inputs=LlavaMiniDummyInputsBuilder,
)
class LlavaMiniForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """LLaVA-Mini in vLLM: any images and videos per prompt, as one item (`processing.py`)."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return DEFAULT_IMAGE_TOKEN
        if modality.startswith("video"):
            return DEFAULT_VIDEO_TOKEN
        raise ValueError(f"LLaVA-Mini takes images and videos, not {modality!r}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.checkpoint_dir = vllm_config.model_config.model
        if config.vision_config is None:
            config.resolve_vision_config(self.checkpoint_dir)
        self.config = config
        architecture, _, _ = backbone_classes(config)
        with self._mark_tower_model(vllm_config, {"image", "video"}):
            self.encoder = LlavaMiniEncoder(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[architecture],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        """The items of one modality -> per item, `(L', D)` embeddings of its whole prompt.

        kwargs (`processing.py`), batched by vLLM into one tensor or a list: `pixel_values`
        (each `(F, parts, 3, H, W)`, the prompt's visuals along one frame axis),
        `visual_frames` (each `(N,)`: 0 for an image, T for a T-frame video) and `prompt_ids`
        (each `(L,)`, a placeholder as `IMAGE_TOKEN_INDEX`).
        """
        pixels = kwargs.get(PIXEL_FIELD)
        if pixels is None:
            return []
        return [
            self.embed_prompt(split_visuals(item, frames), ids)
            for item, frames, ids in zip(
                _items(pixels),
                _items(kwargs[FRAMES_FIELD]),
                _items(kwargs[PROMPT_FIELD]),
                strict=True,
            )
        ]

    def embed_prompt(self, visuals: list[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        """A prompt's visuals (images `(parts, 3, H, W)`, videos `(T, parts, 3, H, W)`, in
        placeholder order) and its ids `(L,)` -> the LLM's input `(L', D)`: the text fused by
        every visual and averaged over them, with each visual's tokens at its placeholder, as
        the transformers model computes it (`encode_sample`, `splice_vision_tokens`)."""
        tower = next(self.encoder.vision_tower.parameters())
        ids = ids.to(device=tower.device, dtype=torch.long)
        text = self.language_model.embed_input_ids(ids.clamp(min=0))
        real = torch.ones_like(ids)[None]
        keep = prefusion_text_keep(ids[None], real, None)[0]
        visuals = [visual.to(tower.device, tower.dtype) for visual in visuals]
        vision, fused = self.encoder.encode_sample(visuals, text, keep)
        spliced = splice_vision_tokens(fused[None], ids[None], real, None, [vision], "right")
        return spliced.inputs_embeds[0].to(text.dtype)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Release-format weights -> the LLM (its own key names) and the encoder."""
        encoder_weights = {}

        def llm_weights():
            for name, tensor in weights:
                inner = name.removeprefix(f"{MODEL}.")
                if name.startswith(f"{MODEL}.") and inner.startswith(ENCODER_PREFIXES):
                    encoder_weights[inner] = tensor
                else:
                    yield name, tensor

        loaded = {f"language_model.{n}" for n in self.language_model.load_weights(llm_weights())}
        loaded |= {
            f"encoder.{n}"
            for n in self.encoder.load_checkpoint_weights(encoder_weights, self.checkpoint_dir)
        }
        return loaded


def _items(batched) -> list[torch.Tensor]:
    """vLLM's batch of a field (a stacked tensor, or a list when shapes differ) -> its items."""
    if isinstance(batched, torch.Tensor):
        return list(batched.unbind(0))
    return list(batched)


def split_visuals(pixels: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
    """One item's `(F, parts, 3, H, W)` pixels and `(N,)` frame counts -> its N visuals: an
    image (count 0) `(parts, 3, H, W)`, a video (count T) `(T, parts, 3, H, W)`."""
    visuals, row = [], 0
    for count in frames.tolist():
        if count == 0:
            visuals.append(pixels[row])
            row += 1
        else:
            visuals.append(pixels[row : row + count])
            row += count
    return visuals
