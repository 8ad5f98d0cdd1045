"""vLLM's multimodal processing for LLaVA-Mini: a prompt and its one image or video -> the engine's
token ids, the item's tensors, its hash and its placeholder range.

vLLM hands `LlavaMiniMultiModalProcessor.apply` the prompt already tokenized as plain text (an
`<image>` / `<video>` placeholder is then a few ordinary tokens). The prompt is decoded and
tokenized again exactly as `LlavaMiniProcessor` does it (text between placeholders in one piece,
a placeholder becoming `IMAGE_TOKEN_INDEX`, BOS prepended when missing), so the ids are the
transformers model's.

The engine's prompt is that prompt with the placeholder replaced by one filler token per vision
token (C*C for an image, T*C*C for a T-frame video), and the multimodal item's placeholder range
is the whole prompt: pre-fusion rewrites every kept text position as well as the vision
positions, so `embed_multimodal` returns an embedding for each of them. The item carries the
prompt ids (`prompt_ids`) and its hash mixes them in: two prompts on one image are different
items for vLLM's encoder cache and prefix cache.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.inputs.engine import mm_input
from vllm.multimodal.hasher import MultiModalHasher
from vllm.multimodal.inputs import (
    MultiModalFieldConfig,
    MultiModalKwargsItems,
    PlaceholderRange,
)
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
)
from vllm.multimodal.processing.inputs import ProcessorInputs

from llavamini.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN, IMAGE_TOKEN_INDEX
from llavamini.data.tokenization import tokenizer_image_token
from llavamini.model.processing_llavamini import LlavaMiniProcessor

PIXEL_FIELDS = {"image": "pixel_values", "video": "video_pixel_values"}
"""Name of the pixel tensor of an item, by modality (separate names: a batch of images
`(N, parts, 3, H, W)` must not be mistaken for one video `(T, parts, 3, H, W)`)."""

PROMPT_FIELD = "prompt_ids"
"""The item's prompt ids, `IMAGE_TOKEN_INDEX` at the placeholder, `(L,)` long."""

DUMMY_VIDEO_FRAMES = 4
"""Frames of the video used to profile the engine (the encoder's memory grows with frames; it
runs in chunks of `video_chunk_frames`)."""


def vision_token_count(config, parts: int, frames: int = 1) -> int:
    """Vision tokens the LLM receives for one image of `parts` parts (1, or N*N crops + the
    global view) or a `frames`-frame video: C*C per frame with a compressor, else every
    projected token (a `(N*g)**2` stitched crop map plus the global view's `g**2`)."""
    if config.compressor_type != "none":
        return frames * config.compressor_size**2
    vision = config.vision_config
    per_part = (vision.image_size // vision.patch_size) ** 2
    if config.mm_vision_select_feature == "cls_patch":
        per_part += 1
    return frames * parts * per_part


class LlavaMiniProcessingInfo(BaseProcessingInfo):
    """What vLLM asks about the model's inputs: the processor, limits, token budget."""

    def get_hf_config(self):
        config = self.ctx.get_hf_config()
        if config.vision_config is None:
            config.resolve_vision_config(self.ctx.model_config.model)
        return config

    def get_hf_processor(self, **kwargs: object) -> LlavaMiniProcessor:
        return _load_processor(self.ctx.model_config.model)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        # One visual per prompt: its item stands for the whole prompt (module docstring).
        return {"image": 1, "video": 1}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        # An item's embeddings cover the whole prompt, so the encoder cache and budget must hold
        # a prompt of the model's full length.
        return {modality: seq_len for modality in ("image", "video")}


@functools.lru_cache(maxsize=4)
def _load_processor(model: str) -> LlavaMiniProcessor:
    return LlavaMiniProcessor.from_pretrained(model)


class LlavaMiniDummyInputsBuilder(BaseDummyInputsBuilder[LlavaMiniProcessingInfo]):
    """Prompts and media vLLM profiles the engine with."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        placeholders = DEFAULT_IMAGE_TOKEN * mm_counts.get("image", 0)
        placeholders += DEFAULT_VIDEO_TOKEN * mm_counts.get("video", 0)
        return placeholders + "\nDescribe it."

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: Mapping[str, MultiModalDummyOptions] | None = None,
    ) -> MultiModalDataDict:
        size = self.info.get_hf_config().vision_config.image_size
        data: MultiModalDataDict = {}
        if mm_counts.get("image", 0):
            data["image"] = self._get_dummy_images(
                width=size, height=size, num_images=mm_counts["image"]
            )
        if mm_counts.get("video", 0):
            frames = np.zeros((DUMMY_VIDEO_FRAMES, size, size, 3), dtype=np.uint8)
            data["video"] = [frames] * mm_counts["video"]
        return data


class LlavaMiniMultiModalProcessor(BaseMultiModalProcessor[LlavaMiniProcessingInfo]):
    """A prompt with one image or video -> the engine's input (module docstring)."""

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs):
        modality = "video" if PIXEL_FIELDS["video"] in hf_inputs else "image"
        return {
            PIXEL_FIELDS[modality]: MultiModalFieldConfig.batched(modality),
            PROMPT_FIELD: MultiModalFieldConfig.batched(modality),
        }

    def get_dummy_mm_inputs(self, mm_counts: Mapping[str, int], **kwargs):
        """vLLM's warm-up asks for one item of every modality in one prompt, which this model
        does not take: a prompt with one video (the larger item) stands for it."""
        wanted = {m: c for m, c in mm_counts.items() if c}
        if len(wanted) > 1 or sum(wanted.values()) > 1:
            wanted = {"video" if "video" in wanted else next(iter(wanted)): 1}
        return super().get_dummy_mm_inputs(wanted, **kwargs)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        return []  # `apply` places the vision tokens itself

    def apply(self, inputs: ProcessorInputs, timing_ctx=None):
        """Tokenize the prompt as `LlavaMiniProcessor` does, preprocess its visual, and build
        the engine's prompt, item tensors, hash and placeholder range.

        Raises `ValueError` when the prompt has more than one image or video, or when its
        placeholders and media disagree.
        """
        processor = self.info.get_hf_processor()
        config = self.info.get_hf_config()
        items = inputs.mm_data_items
        counts = {m: c for m, c in items.get_all_counts().items() if c}
        if sum(counts.values()) > 1:
            raise ValueError(
                f"LLaVA-Mini on vLLM takes one image or video per prompt, got {counts}."
            )
        text = processor.tokenizer.decode(inputs.prompt, skip_special_tokens=False)
        ids = tokenizer_image_token(text, processor.tokenizer, add_bos=True)
        placeholders = ids.count(IMAGE_TOKEN_INDEX)
        if placeholders != sum(counts.values()):
            raise ValueError(
                f"The prompt has {placeholders} {DEFAULT_IMAGE_TOKEN}/{DEFAULT_VIDEO_TOKEN} "
                f"placeholders but {sum(counts.values())} images or videos."
            )
        if not counts:
            return mm_input(prompt_token_ids=ids, mm_kwargs=MultiModalKwargsItems({}),
                            mm_hashes={}, mm_placeholders={})  # fmt: skip

        (modality,) = counts
        source = items[modality].get(0)
        if modality == "image":
            pixels = processor.process_image(source)  # (parts, 3, H, W)
            count = vision_token_count(config, pixels.shape[0])
        else:
            pixels = processor.process_video(_video_frames(source))  # (T, parts, 3, H, W)
            count = vision_token_count(config, pixels.shape[1], frames=pixels.shape[0])
        at = ids.index(IMAGE_TOKEN_INDEX)
        filler = processor.tokenizer.pad_token_id or 0
        prompt_ids = ids[:at] + [filler] * count + ids[at + 1 :]

        hf_inputs = BatchFeature(
            {PIXEL_FIELDS[modality]: pixels[None], PROMPT_FIELD: torch.tensor([ids])}
        )
        mm_kwargs = MultiModalKwargsItems.from_hf_inputs(
            hf_inputs, self._get_mm_fields_config(hf_inputs, {})
        )
        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
        (media_hash,) = inputs.get_mm_hashes(self.info.model_id, algorithm)[modality]
        item_hash = MultiModalHasher.hash_kwargs(
            algorithm, media=media_hash, prompt=np.asarray(ids, dtype=np.int64)
        )
        return mm_input(
            prompt_token_ids=prompt_ids,
            mm_kwargs=mm_kwargs,
            mm_hashes={modality: [item_hash]},
            mm_placeholders={modality: [PlaceholderRange(offset=0, length=len(prompt_ids))]},
        )


def _video_frames(video) -> np.ndarray:
    """vLLM's video item (frames, or `(frames, metadata)` when vLLM decoded the file) ->
    `(T, H, W, 3)` uint8 frames, taken as sampled."""
    if isinstance(video, tuple):
        video = video[0]
    if isinstance(video, torch.Tensor):
        video = video.numpy()
    if isinstance(video, list):
        video = np.stack([np.asarray(frame.convert("RGB")) if hasattr(frame, "convert")
                          else np.asarray(frame) for frame in video])  # fmt: skip
    return np.asarray(video, dtype=np.uint8)
