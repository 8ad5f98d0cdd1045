"""The vision side of LLaVA-Mini: tower, compressor, projector and pre-fusion over one image,
video or batch of images -> (vision tokens for the LLM, fused text).

Shape notation: B batch, parts 1 or N*N crops + the global view, L text length, N = grid**2
patches, D_v vision width, D LLM width, V vision tokens per image (C*C with a compressor).
"""

from __future__ import annotations

import torch

from llavamini.model.compressor import build_compressor
from llavamini.model.packing import stitch_crops
from llavamini.model.projector import build_projector
from llavamini.model.reduction import TokenReduction, method_of, reduce_images
from llavamini.model.vision_tower import VisionTower
from llavamini.utils.allocator import keep_freed_memory_for_models

VIDEO_MEMORY_FRACTION = 0.25
"""Share of the free GPU memory one chunk of video frames may take (the rest is left to the LLM's
prefill over every frame's tokens and to other processes)."""
MAX_VIDEO_CHUNK = 32
"""Larger chunks gain nothing measurable on a GPU: one frame is already 577-row matmuls."""


class VisionEncoderMixin:
    """The vision side of LLaVA-Mini: tower, compressor, projector and pre-fusion over one
    image, video or batch of images -> (vision tokens, fused text). Needs the attributes
    `config`, `vision_tower`, `mm_projector`, `compressor`, `prefusion_layers` and `rotary_emb`;
    the transformers model (`LlavaMiniModelMixin`) and the vLLM plug-in's encoder both use it,
    so both compute the same thing.

    `token_reduction` (None: every patch) is a training-free reduction
    (`llavamini.model.reduction`) that a vision-side method applies here, in place of the
    compressor of checkpoints that have none.
    """

    token_reduction: TokenReduction | None = None

    def build_vision_modules(self, config) -> None:
        """Create `vision_tower`, `mm_projector` and `compressor` from `config` (the release's
        module names; widths from the config).

        Also makes glibc keep freed memory from now on (`keep_freed_memory_for_models`: about
        100,000 page faults fewer per image prefill on a CPU; `LLAVAMINI_KEEP_FREED_MEMORY=0`
        turns it off), here, where a process asks for the model, so every process gets it."""
        keep_freed_memory_for_models()
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
        # The projector's dtype, which a quantized CPU load may keep above the text's (float32
        # beside bfloat16: `CPU_FLOAT32_MODULES` in llavamini/model/loading.py).
        vision_dtype = next((p.dtype for p in self.mm_projector.parameters()), text_embeds.dtype)
        reduction = self.token_reduction
        if reduction is not None and method_of(reduction).stage == "vision":
            reduced = reduce_images(self.vision_tower, images, reduction).to(vision_dtype)
            projected = self.mm_projector(reduced).to(text_embeds.dtype)
            return self.fuse(projected, None, text_embeds, keep)
        features = self.vision_tower(images.flatten(0, 1)).to(vision_dtype)
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
        context = self.mm_projector(context).to(text_embeds.dtype)
        compressed = None
        if self.compressor is not None:
            compressed = self.mm_projector(self.compressor(grid_features)).to(text_embeds.dtype)
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

    def encode_sample(
        self, visuals: list[torch.Tensor], text_embeds: torch.Tensor, keep: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The images and videos of one prompt, in placeholder order -> (per visual, its
        `(V_i, D)` vision tokens; the `(L, D)` text fused by each visual and averaged over them,
        in float32, as over a video's frames; the raw text when there is no visual).

        Every visual's pre-fusion reads the whole prompt's text (`keep`), wherever its own
        placeholder is; this is what lets several images, or images in later turns, share one
        prompt.
        """
        encoded = [self.encode_visual(visual, text_embeds, keep) for visual in visuals]
        if not encoded:
            return [], text_embeds
        mean = torch.stack([text.float() for _, text in encoded]).mean(0)
        return [tokens for tokens, _ in encoded], mean.to(text_embeds.dtype)


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
