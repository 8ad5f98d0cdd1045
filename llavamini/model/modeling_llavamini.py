"""LLaVA-Mini: vision features -> compressor + projector -> pre-fusion -> one token per image.

The multimodal model is written once, as mixins over a language backbone's own classes
(`LlavaMiniModelMixin` over its base model, `LlavaMiniForCausalLMMixin` over its causal LM); the
pre-fusion layers are built from the backbone's own decoder-layer class and use its rotary
embedding. This file composes the Llama family (Vicuna, Llama-3.x: the release);
`llavamini.model.backbones` composes Qwen2/Qwen3 and any other transformers causal LM.

The module tree reproduces the released checkpoint's keys (docs/compatibility.md K1):

    model.embed_tokens / model.layers.{i} / model.norm / lm_head     the Llama LLM
    model.vision_tower.vision_tower.vision_model.*                   CLIP (frozen)
    model.mm_projector.{0,2}                                          vision width -> LLM width
    model.compressor.{query,pos_embed,attn.*,ln_q,ln_kv}              C*C query compressor
    model.prefusion_layers.{i}                                        decoder layers like the LLM's

Forward for one image at standard resolution (B batch, L text, N = grid**2 patches, D_v vision
width, D LLM width, Q = C*C compressed tokens):

    F = CLIP(image)                                (B, N, D_v)
    Z = Proj(Compressor(F)),  G = Proj(F)          (B, Q, D), (B, N, D)
    X = PreFusion([G; Z; text embeddings])          causal, over kept text only
    LLM input = text with the placeholder replaced by X at the Z positions, and every other kept
                text position replaced by its fused output

High resolution (`parts = N*N + 1`: row-major crops, then the global view) compresses the stitched
crop map and lets pre-fusion read [projected stitched crops; projected global view]. A video is a
(T, parts, 3, H, W) tensor: frames are encoded in chunks chosen by device, the LLM gets T*Q
tokens in frame order, and the fused text is the mean over frames (in float32).

Reference bugs fixed here (docs/compatibility.md): widths come from the config (F1); text
embeddings are not detached, so `embed_tokens` trains (F4); padding is excluded from pre-fusion
and the splice honours left padding (F5); inference never truncates the prompt (F6); video frames
are batched and keep their gradients (F7); pre-fusion works on transformers 5 (F8).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from llavamini.constants import IMAGE_TOKEN_INDEX
from llavamini.model import checkpoint
from llavamini.model.compressor import QueryCompressor, build_compressor, sincos_pos_embed_2d
from llavamini.model.configuration_llavamini import LlavaMiniConfig, find_vision_tower_folder
from llavamini.model.packing import (
    count_placeholders,
    prefusion_text_keep,
    splice_vision_tokens,
    stitch_crops,
)
from llavamini.model.prefusion import PreFusionLayers
from llavamini.model.projector import build_projector
from llavamini.model.vision_tower import (
    OpenClipVisionModel,
    VisionTower,
    read_open_clip_state_dict,
    read_vision_tower_state_dict,
)

logger = logging.getLogger(__name__)

Images = torch.Tensor | list[torch.Tensor | list[torch.Tensor] | None]


ENCODER_LAYERS = ["CLIPEncoderLayer", "SiglipEncoderLayer"]
"""Vision encoder blocks that device maps must not split (added to each family's own)."""


class LlavaMiniPreTrainedMixin:
    """What every LLaVA-Mini class adds to its backbone's `PreTrainedModel`."""

    # The tower may live outside the checkpoint (`mm_vision_tower`); `from_pretrained` loads it
    # from there and checks it is complete, so transformers need not report it.
    _keys_to_ignore_on_load_missing = [r"^model\.vision_tower\."]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, QueryCompressor):
            with torch.no_grad():
                nn.init.normal_(module.query, std=0.02)
                table = sincos_pos_embed_2d(module.query.shape[1], module.size)
                module.pos_embed.copy_(table.to(module.pos_embed.dtype))


class VisionEncoderMixin:
    """The vision side of LLaVA-Mini: tower, compressor, projector and pre-fusion over one
    image, video or batch of images -> (vision tokens, fused text). Needs the attributes
    `config`, `vision_tower`, `mm_projector`, `compressor`, `prefusion_layers` and `rotary_emb`;
    the transformers model (`LlavaMiniModelMixin`) and the vLLM plug-in's encoder both use it,
    so both compute the same thing."""

    def build_vision_modules(self, config) -> None:
        """Create `vision_tower`, `mm_projector` and `compressor` from `config` (the release's
        module names; widths from the config)."""
        self.vision_tower = VisionTower(
            config.vision_config, config.mm_vision_select_layer, config.mm_vision_select_feature
        )
        self.mm_projector = build_projector(
            config.mm_projector_type, config.vision_config.hidden_size, config.hidden_size
        )
        self.compressor = build_compressor(config)

    def encode_images(
        self, images: torch.Tensor, text_embeds: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image per sample -> (vision tokens for the LLM, fused text).

        Args:
            images: `(B, parts, 3, H, W)`; parts 1, or N*N crops + the global view.
            text_embeds: `(B, L, D)` raw embeddings of the prompt.
            keep: `(B, L)` bool, the text positions pre-fusion reads.

        Returns:
            `(B, V, D)` vision tokens (V = C*C with a compressor, else every projected token)
            and `(B, L, D)` text embeddings (fused where `keep`, raw elsewhere).
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(
                f"images must be (batch, parts, 3, H, W), got shape {tuple(images.shape)}."
            )
        size = self.config.vision_config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"images must be {size}x{size} (vision_config.image_size), got "
                f"{tuple(images.shape[-2:])}: preprocess them with llavamini.data.process_images."
            )
        batch, parts = images.shape[:2]
        features = self.vision_tower(images.flatten(0, 1)).to(text_embeds.dtype)
        features = features.unflatten(0, (batch, parts))  # (B, parts, N, D_v)
        if parts == 1:
            grid_features = context = features[:, 0]
        else:
            crops = round((parts - 1) ** 0.5)
            if crops * crops + 1 != parts:
                raise ValueError(
                    f"images has {parts} parts per image: expected 1, or N*N crops + 1 global view."
                )
            grid_features = stitch_crops(features[:, :-1], self.vision_tower.grid_size)
            context = torch.cat([grid_features, features[:, -1]], dim=1)
        context = self.mm_projector(context)
        compressed = None
        if self.compressor is not None:
            compressed = self.mm_projector(self.compressor(grid_features))
        return self.fuse(context, compressed, text_embeds, keep)

    def fuse(
        self,
        context: torch.Tensor,
        compressed: torch.Tensor | None,
        text_embeds: torch.Tensor,
        keep: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-fusion over `[context; compressed; text]` -> (vision tokens, fused text).

        Without a compressor the context tokens themselves are the vision tokens (LLaVA-1.5 mode,
        or pre-fusion without compression); without pre-fusion nothing is fused.
        """
        vision = context if compressed is None else compressed
        if len(self.prefusion_layers) == 0:
            return vision, text_embeds
        prefix = context if compressed is None else torch.cat([context, compressed], dim=1)
        sequence = torch.cat([prefix, text_embeds], dim=1)
        keep_all = torch.cat([keep.new_ones(prefix.shape[:2]), keep], dim=1)
        unread = prefix.shape[1] - vision.shape[1]  # the context, when compressed tokens exist
        fused = self.prefusion_layers(sequence, keep_all, self.rotary_emb, unread=unread)
        count = vision.shape[1]
        # A view: `encode_video` copies each chunk's tokens into its output, so no chunk's
        # pre-fusion output outlives its chunk.
        vision_out = fused[:, :count]
        text_out = torch.where(keep.unsqueeze(-1), fused[:, count:], text_embeds)
        return vision_out, text_out

    def encode_video(
        self, frames: torch.Tensor, text_embeds: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One video -> (T*V vision tokens in frame order, text fused and averaged over frames).

        Args:
            frames: `(T, parts, 3, H, W)`.
            text_embeds: `(L, D)`; keep: `(L,)`.

        Frames go through the tower, compressor and pre-fusion in chunks of
        `video_chunk_size` frames, so peak memory is that of one chunk whatever T is (the
        vision tokens are written into one preallocated `(T*V, D)` output); the result equals
        frame-by-frame encoding.
        """
        count = frames.shape[0]
        chunk = self.video_chunk_size(frames)
        vision_out, text_sum = None, torch.zeros_like(text_embeds, dtype=torch.float32)
        for start in range(0, count, chunk):
            part = frames[start : start + chunk]
            n = part.shape[0]
            vision, text = self.encode_images(
                part, text_embeds.expand(n, -1, -1), keep.expand(n, -1)
            )
            per_frame = vision.shape[1]
            if vision_out is None:
                vision_out = vision.new_empty(count * per_frame, vision.shape[-1])
            vision_out[start * per_frame : (start + n) * per_frame] = vision.flatten(0, 1)
            text_sum = text_sum + text.float().sum(dim=0)
        return vision_out, (text_sum / count).to(text_embeds.dtype)

    def video_chunk_size(self, frames: torch.Tensor) -> int:
        """Frames per chunk for `encode_video`: `config.video_chunk_frames` when set, else one
        frame off CUDA and, on CUDA, as many as fit in `VIDEO_MEMORY_FRACTION` of the free memory
        (at most `MAX_VIDEO_CHUNK`).

        On a CPU one frame already gives every matmul hundreds of rows (577 for CLIP-L/336), so
        batching frames gains no speed and only multiplies the activations held at once.
        """
        if self.config.video_chunk_frames is not None:
            return self.config.video_chunk_frames
        if frames.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(frames.device)
        per_frame = frame_activation_bytes(self.config, frames.shape[1], frames.element_size())
        fit = int(free * VIDEO_MEMORY_FRACTION) // per_frame
        return max(1, min(MAX_VIDEO_CHUNK, fit, frames.shape[0]))

    def encode_visual(
        self, visual: torch.Tensor, text_embeds: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image `(parts, 3, H, W)` or video `(T, parts, 3, H, W)` of one sample ->
        (`(V, D)` vision tokens, `(L, D)` fused text)."""
        if visual.dim() == 5:
            return self.encode_video(visual, text_embeds, keep)
        if visual.dim() != 4:
            raise ValueError(
                f"An image must be (parts, 3, H, W) and a video (T, parts, 3, H, W), got shape "
                f"{tuple(visual.shape)}."
            )
        vision, text = self.encode_images(visual[None], text_embeds[None], keep[None])
        return vision[0], text[0]


class LlavaMiniModelMixin(VisionEncoderMixin, LlavaMiniPreTrainedMixin):
    """A backbone's base model (embeddings, decoder layers, norm, rotary embedding) plus the
    vision tower, projector, compressor and pre-fusion layers."""

    def __init__(self, config):
        super().__init__(config)
        if config.vision_config is None:
            raise ValueError(
                f"{type(config).__name__}.vision_config is unresolved (mm_vision_tower="
                f"{config.mm_vision_tower!r}): load with from_pretrained, or call "
                f"config.resolve_vision_config(checkpoint_dir) first."
            )
        config.validate_multimodal()
        self.build_vision_modules(config)
        if not isinstance(getattr(self, "rotary_emb", None), nn.Module):
            raise ValueError(
                f"{type(self).__name__}: the backbone has no shared rotary embedding "
                f"(`rotary_emb`), which pre-fusion needs; supported backbones share one (Llama, "
                f"Qwen2, Qwen3, Mistral, ...)."
            )
        self.prefusion_layers = PreFusionLayers(
            config, config.prefusion_layer_num, layer_class=type(self.layers[0])
        )
        self.post_init()

    def embed_multimodal(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: Images,
        padding_side: str | None = None,
        return_vision_mask: bool = False,
    ) -> tuple:
        """Token ids with placeholders + images -> what the LLM receives.

        Args:
            input_ids: `(B, L)` with one `IMAGE_TOKEN_INDEX` per image or video.
            attention_mask: `(B, L)` or None (no padding).
            labels: `(B, L)` in training, else None.
            images: a `(B, parts, 3, H, W)` tensor (one image per sample, encoded as one batch),
                or a list of B items: a `(parts, 3, H, W)` image, a `(T, parts, 3, H, W)` video,
                None (text-only: no placeholder, no pre-fusion), or a list of images and videos
                for a sample with several placeholders (filled in order; the fused text is the
                mean over its visuals, as over a video's frames).
            padding_side: of the output; by default that of the input (left if any row starts
                with padding).
            return_vision_mask: also return the `(B, L')` mask of the vision positions.

        Returns:
            `inputs_embeds (B, L', D)`, `attention_mask (B, L')`, `labels (B, L')` or None,
            `position_ids (B, L')` (and `vision_mask (B, L')`): see `SplicedInputs`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        images = self._to_vision_device(images)
        if padding_side is None:
            padding_side = "left" if bool((attention_mask[:, 0] == 0).any()) else "right"
        text_embeds = self.embed_tokens(input_ids.clamp(min=0))
        keep = prefusion_text_keep(input_ids, attention_mask, labels)
        visuals = visuals_per_sample(images)
        check_placeholders(input_ids, attention_mask, visuals)

        if isinstance(images, torch.Tensor):
            vision, text_embeds = self.encode_images(images, text_embeds, keep)
            vision_tokens = [[tokens] for tokens in vision]
        else:
            vision_tokens, fused = [], []
            for b, sample_visuals in enumerate(visuals):
                encoded = [self.encode_visual(v, text_embeds[b], keep[b]) for v in sample_visuals]
                vision_tokens.append([tokens for tokens, _ in encoded])
                if encoded:
                    mean = torch.stack([text.float() for _, text in encoded]).mean(0)
                    fused.append(mean.to(text_embeds.dtype))
                else:
                    fused.append(text_embeds[b])
            text_embeds = torch.stack(fused)

        max_length = self.config.tokenizer_model_max_length if labels is not None else None
        spliced = splice_vision_tokens(
            text_embeds, input_ids, attention_mask, labels, vision_tokens, padding_side, max_length
        )
        return spliced if return_vision_mask else spliced[:4]


    def _to_vision_device(self, images: Images) -> Images:
        """`images` (any form `embed_multimodal` takes) on the vision tower's device and in its
        dtype, as the processor returns float32 pixels on the CPU."""
        reference = next(self.vision_tower.parameters())
        if isinstance(images, torch.Tensor):
            return images.to(reference.device, reference.dtype)
        return [
            [v.to(reference.device, reference.dtype) for v in item]
            if isinstance(item, (list, tuple))
            else (item.to(reference.device, reference.dtype) if item is not None else None)
            for item in images
        ]


VIDEO_MEMORY_FRACTION = 0.25
"""Share of the free GPU memory one chunk of video frames may take (the rest is left to the LLM's
prefill over every frame's tokens and to other processes)."""
MAX_VIDEO_CHUNK = 32
"""Larger chunks gain nothing measurable on a GPU: one frame is already 577-row matmuls."""


def frame_activation_bytes(config, parts: int, element_size: int) -> int:
    """An upper estimate of the activations one video frame holds at once in `encode_video`
    without gradients: the widest tensors of a vision block (MLP input and output, attention
    scores in case the kernel materialises them) and of a pre-fusion layer, with a factor 2 for
    the allocator's slack."""
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    heads = vision.num_attention_heads
    vision_elems = tokens * (vision.intermediate_size + 4 * vision.hidden_size) + heads * tokens**2
    rows = tokens + 1 + (config.tokenizer_model_max_length or 2048)
    fusion_elems = rows * (config.intermediate_size + 4 * config.hidden_size)
    return 2 * parts * (vision_elems + fusion_elems) * element_size


def visuals_per_sample(images: Images) -> list[list[torch.Tensor]]:
    """The visuals of each sample, in placeholder order (see `embed_multimodal` for the forms)."""
    if isinstance(images, torch.Tensor):
        return [[image] for image in images]
    per_sample = []
    for item in images:
        if item is None:
            per_sample.append([])
        elif isinstance(item, torch.Tensor):
            per_sample.append([item])
        else:
            per_sample.append(list(item))
    return per_sample


def check_placeholders(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, visuals: list[list[torch.Tensor]]
) -> None:
    """Raise unless every sample has exactly one placeholder per image or video."""
    counts = count_placeholders(input_ids, attention_mask)
    if len(visuals) != len(counts):
        raise ValueError(
            f"Got images for {len(visuals)} samples but a batch of {len(counts)} samples."
        )
    for b, (found, sample_visuals) in enumerate(zip(counts, visuals, strict=True)):
        if found != len(sample_visuals):
            raise ValueError(
                f"Sample {b} has {found} image placeholders (IMAGE_TOKEN_INDEX="
                f"{IMAGE_TOKEN_INDEX}) but {len(sample_visuals)} images or videos: each image or "
                f"video needs exactly one placeholder, and a text-only sample none."
            )


class LlavaMiniForCausalLMMixin(LlavaMiniPreTrainedMixin):
    """LLaVA-Mini for generation: `model(input_ids, attention_mask, images=..., labels=...)` and
    `model.generate(inputs=input_ids, images=..., ...)` (which returns only the new tokens).

    A family sets `multimodal_model_class`, its `LlavaMiniModelMixin` class.
    """

    multimodal_model_class: type

    def __init__(self, config):
        # The backbone's causal-LM __init__ would build its plain base model first.
        PreTrainedModel.__init__(self, config)
        self.model = self.multimodal_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        images: Images | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """As the backbone's `forward`, plus `images` (see `LlavaMiniModelMixin.embed_multimodal`).

        With images, the logits, labels and attention mask all follow the spliced sequence.
        """
        if images is not None and inputs_embeds is None:
            inputs_embeds, attention_mask, labels, position_ids = self.model.embed_multimodal(
                input_ids, attention_mask, labels, images
            )
            input_ids = None
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: Images | None = None,
        attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Greedy or sampled generation from a prompt with placeholders; returns only new tokens.

        The prompt ids come as `inputs` or `input_ids` (so `generate(**processor(...))` works),
        with or without `images`. The prompt (with its images) is embedded once, left-padded,
        and handed to `GenerationMixin.generate` as `inputs_embeds`; decode steps are plain
        decoder steps with the KV cache.
        """
        if inputs is not None and input_ids is not None:
            raise ValueError("Pass the prompt ids as `inputs` or as `input_ids`, not both.")
        inputs = input_ids if inputs is None else inputs
        if inputs is None:
            return super().generate(attention_mask=attention_mask, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(inputs)
        if images is None:
            inputs_embeds = self.model.embed_tokens(inputs)
        else:
            inputs_embeds, attention_mask, _, _ = self.model.embed_multimodal(
                inputs, attention_mask, None, images, padding_side="left"
            )
        limit = self.config.max_position_embeddings
        new_tokens = kwargs.get("max_new_tokens") or 0
        if inputs_embeds.shape[1] + new_tokens > limit:
            raise ValueError(
                f"The prompt is {inputs_embeds.shape[1]} tokens long (vision tokens included); "
                f"with max_new_tokens={new_tokens} it exceeds the model's context of {limit} "
                f"tokens (max_position_embeddings)."
            )
        return super().generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, strict about keys, with the vision tower resolved
        offline.

        The tower's architecture and weights come from the checkpoint when it stores them
        (`model.vision_tower.vision_tower.*`), else from the `mm_vision_tower` folder (absolute,
        relative to the checkpoint, or relative to the working directory) or the local HF cache.
        Any missing or unexpected key raises a `ValueError` listing them; pass `strict=False` to
        get the usual warning instead (to start training from a plain LLM, say).
        """
        strict = kwargs.pop("strict", True)
        output_loading_info = kwargs.pop("output_loading_info", False)
        hub_kwargs = {
            k: kwargs[k]
            for k in ("cache_dir", "revision", "local_files_only", "token", "subfolder")
            if k in kwargs
        }
        checkpoint_dir = checkpoint.resolve_checkpoint_dir(
            str(pretrained_model_name_or_path), **hub_kwargs
        )
        config = kwargs.pop("config", None)
        if config is None:
            config = cls.config_class.from_pretrained(checkpoint_dir)
        cache_dir = hub_kwargs.get("cache_dir")
        config.resolve_vision_config(checkpoint_dir, cache_dir)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path,
            *model_args,
            config=config,
            output_loading_info=True,
            **kwargs,
        )
        keys = checkpoint.stored_keys(checkpoint_dir)
        missing = set(info["missing_keys"])
        prefix = checkpoint.VISION_ENCODER_PREFIX
        tower_keys = {k for k in model.state_dict() if k.startswith(prefix)}
        if keys is not None and keys & tower_keys:
            missing |= tower_keys - keys
        else:
            model.load_vision_tower(checkpoint_dir, cache_dir)
        unexpected = set(info["unexpected_keys"])
        if strict and (missing or unexpected):
            raise ValueError(
                f"Checkpoint {pretrained_model_name_or_path} does not match {cls.__name__}: "
                f"{len(missing)} missing keys {sorted(missing)[:50]}, {len(unexpected)} unexpected "
                f"keys {sorted(unexpected)[:50]}. Check compressor_size, prefusion_layer_num and "
                f"compressor_type in its config.json."
            )
        info["missing_keys"], info["unexpected_keys"] = missing, unexpected
        return (model, info) if output_loading_info else model

    def load_vision_tower(
        self, checkpoint_dir: str | None = None, cache_dir: str | None = None
    ) -> str:
        """Load the vision weights from the `mm_vision_tower` folder or the local HF cache (an
        open_clip tower: from `vision_config.pretrained`), never the network. Returns where they
        came from; raises `FileNotFoundError` naming where it looked."""
        encoder = self.model.vision_tower.encoder
        if isinstance(encoder, OpenClipVisionModel):
            source = self.config.vision_config.pretrained
            if not source:
                raise FileNotFoundError(
                    "The checkpoint does not store the open_clip tower and "
                    "vision_config.pretrained names no local open_clip checkpoint file."
                )
            state_dict = read_open_clip_state_dict(source)
        else:
            mm_vision_tower = self.config.mm_vision_tower
            base_dirs = tuple(d for d in (checkpoint_dir, ".") if d)
            source = find_vision_tower_folder(mm_vision_tower, base_dirs, cache_dir)
            if source is None:
                raise FileNotFoundError(
                    f"The checkpoint does not store the vision tower and mm_vision_tower="
                    f"{mm_vision_tower!r} was not found offline: looked in {list(base_dirs)} for "
                    f"that folder and in the local Hugging Face cache for that hub id. Download "
                    f"it once (hf download {mm_vision_tower}) or point mm_vision_tower at a folder."
                )
            state_dict = read_vision_tower_state_dict(source)
        with checkpoint.gathered(list(encoder.parameters())):  # whole under ZeRO-3 too
            result = encoder.load_state_dict(state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"Vision tower weights in {source} do not match vision_config: missing "
                f"{result.missing_keys[:20]}, unexpected {result.unexpected_keys[:20]}."
            )
        logger.info("Loaded the vision tower from %s", source)
        return source


class LlavaMiniModel(LlavaMiniModelMixin, LlamaModel):
    """The Llama decoder plus the vision tower, projector, compressor and pre-fusion layers."""

    config_class = LlavaMiniConfig
    config: LlavaMiniConfig
    _no_split_modules = ["LlamaDecoderLayer", *ENCODER_LAYERS]


class LlavaMiniForCausalLM(LlavaMiniForCausalLMMixin, LlamaForCausalLM):
    """LLaVA-Mini on a Llama backbone (Vicuna, Llama-3.x): the released model's class."""

    config_class = LlavaMiniConfig
    config: LlavaMiniConfig
    multimodal_model_class = LlavaMiniModel
    _no_split_modules = ["LlamaDecoderLayer", *ENCODER_LAYERS]


LlavaMiniLlamaForCausalLM = LlavaMiniForCausalLM
"""The reference's class name (kept for `architectures` in released config.json files)."""
