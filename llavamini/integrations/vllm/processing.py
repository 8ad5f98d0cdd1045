"""vLLM's multimodal processing for LLaVA-Mini: a prompt and its images and videos -> the
engine's token ids, one item's tensors, its hash and its placeholder range.

vLLM hands `LlavaMiniMultiModalProcessor.apply` the prompt already tokenized as plain text (an
`<image>` / `<video>` placeholder is then a few ordinary tokens). The prompt is decoded and
given with its media to `LlavaMiniProcessor` itself (text between placeholders tokenized in one
piece, a placeholder becoming `IMAGE_TOKEN_INDEX`, BOS prepended when missing), so the ids and
pixels are the transformers model's. Its k-th `<image>` takes the k-th image and its k-th
`<video>` the k-th video; several of each, in any turn, are allowed.

The engine's prompt is that prompt with each placeholder replaced by one filler token per vision
token (C*C for an image, T*C*C for a T-frame video). All visuals of the prompt travel as *one*
multimodal item (of modality 'video' when any is a video, else 'image') whose placeholder range
is the whole prompt: pre-fusion rewrites every kept text position from every visual and the
whole text, so `embed_multimodal` returns an embedding for each position, and no position
belongs to one visual alone. The item carries the prompt ids (`prompt_ids`) and its hash mixes
them in: two prompts on one image are different items for vLLM's encoder cache and prefix cache.

Videos follow the project's frame policy, as `llavamini chat` and `llavamini serve` sample them:
a `video_url` part arrives with its file's bytes, which are decoded again at `video_fps` (1)
frames per second, capped at `video_max_frames` (`MAX_VIDEO_FRAMES`), by
`llavamini.data.video.load_video`, whatever frames vLLM's own loader sampled; decoded frames
(`LLM.generate(..., multi_modal_data={"video": frames})`) and JPEG frame lists are taken as
sampled. Both settings may be changed per server or request with `mm_processor_kwargs`.
"""

from __future__ import annotations

import functools
import os
import tempfile
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
from vllm.multimodal.media import MediaWithBytes
from vllm.multimodal.parse import ProcessorBatchItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
)
from vllm.multimodal.processing.inputs import ProcessorInputs

from llavamini.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN, IMAGE_TOKEN_INDEX
from llavamini.data.video import MAX_VIDEO_FRAMES, load_video
from llavamini.model.processing_llavamini import LlavaMiniProcessor, check_video_policy

PIXEL_FIELD = "pixel_values"
"""The item's pixels: its visuals in placeholder order, stacked along one frame axis (an image
is one row, a T-frame video T rows), `(F, parts, 3, H, W)` float32."""

FRAMES_FIELD = "visual_frames"
"""The item's visuals as rows of `PIXEL_FIELD`: `(N,)` long, 0 for an image (one row, encoded
as an image), T for a T-frame video."""

PROMPT_FIELD = "prompt_ids"
"""The item's prompt ids, `IMAGE_TOKEN_INDEX` at each placeholder, `(L,)` long."""

VIDEO_POLICY_KWARGS = ("video_fps", "video_max_frames")
"""The `mm_processor_kwargs` this processor takes: `LlavaMiniProcessor`'s frame policy (the
defaults are `llavamini chat`'s: the checkpoint's fps, `MAX_VIDEO_FRAMES`)."""

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
        # Any number per prompt (vLLM's --limit-mm-per-prompt applies): they become one item.
        return {"image": None, "video": None}

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
    """A prompt with its images and videos -> the engine's input (module docstring)."""

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs):
        return _fields_config(item_modality(hf_inputs[FRAMES_FIELD]))

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
        """Tokenize the prompt and preprocess its images and videos with `LlavaMiniProcessor`,
        and build the engine's prompt, the one item's tensors, its hash and placeholder range.

        Raises `ValueError` when the placeholders and the media disagree (naming both counts),
        for embeddings or other modalities given instead of media, for a video that cannot be
        decoded, and for unknown or invalid `mm_processor_kwargs`.
        """
        processor = self._processor(inputs.hf_processor_mm_kwargs)
        config = self.info.get_hf_config()
        items = inputs.mm_data_items
        counts = {m: c for m, c in items.get_all_counts().items() if c}
        other = sorted(set(counts) - {"image", "video"})
        if other:
            raise ValueError(f"LLaVA-Mini takes images and videos, not {other}.")
        text = processor.tokenizer.decode(inputs.prompt, skip_special_tokens=False)
        # The processor's own call: placeholders matched to media (ValueError naming both counts
        # when they differ), media processed, the text tokenized with BOS, as in chat.
        batch = processor(
            text=text,
            images=[_media_sources(items, "image", processor)],
            videos=[_media_sources(items, "video", processor)],
            return_tensors=None,
        )
        ids = batch["input_ids"][0]
        if "images" not in batch:
            return mm_input(
                prompt_token_ids=ids,
                mm_kwargs=MultiModalKwargsItems({}),
                mm_hashes={},
                mm_placeholders={},
            )

        visuals = batch["images"][0]
        prompt_ids, at = [], 0
        filler = processor.tokenizer.pad_token_id or 0
        for visual in visuals:
            place = ids.index(IMAGE_TOKEN_INDEX, at)
            frames = visual.shape[0] if visual.dim() == 5 else 1
            count = vision_token_count(config, visual.shape[-4], frames=frames)
            prompt_ids += ids[at:place] + [filler] * count
            at = place + 1
        prompt_ids += ids[at:]

        frame_counts = [visual.shape[0] if visual.dim() == 5 else 0 for visual in visuals]
        pixels = torch.cat([v if v.dim() == 5 else v[None] for v in visuals])
        modality = item_modality(frame_counts)
        hf_inputs = BatchFeature(
            {
                PIXEL_FIELD: pixels[None],
                FRAMES_FIELD: torch.tensor([frame_counts]),
                PROMPT_FIELD: torch.tensor([ids]),
            }
        )
        mm_kwargs = MultiModalKwargsItems.from_hf_inputs(hf_inputs, _fields_config(modality))
        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
        media_hashes = inputs.get_mm_hashes(self.info.model_id, algorithm)
        taken = {kind: iter(media_hashes.get(kind, [])) for kind in ("image", "video")}
        item_hash = MultiModalHasher.hash_kwargs(
            algorithm,
            media=[next(taken["video" if count else "image"]) for count in frame_counts],
            prompt=np.asarray(ids, dtype=np.int64),
            policy=f"{processor.video_fps} fps, at most {processor.video_max_frames} frames",
        )
        return mm_input(
            prompt_token_ids=prompt_ids,
            mm_kwargs=mm_kwargs,
            mm_hashes={modality: [item_hash]},
            mm_placeholders={modality: [PlaceholderRange(offset=0, length=len(prompt_ids))]},
        )

    def _processor(self, mm_kwargs: Mapping[str, object]) -> LlavaMiniProcessor:
        """The checkpoint's processor with the video policy of `llavamini chat` (the checkpoint's
        fps, at most `MAX_VIDEO_FRAMES` frames), as changed by `mm_kwargs`."""
        unknown = sorted(set(mm_kwargs) - set(VIDEO_POLICY_KWARGS))
        if unknown:
            raise ValueError(
                f"LLaVA-Mini's mm_processor_kwargs are {list(VIDEO_POLICY_KWARGS)}, got {unknown}."
            )
        processor = self.info.get_hf_processor()
        fps = mm_kwargs.get("video_fps", processor.video_fps)
        max_frames = mm_kwargs.get("video_max_frames", MAX_VIDEO_FRAMES)
        if not isinstance(fps, (int, float)) or (
            max_frames is not None and not isinstance(max_frames, int)
        ):
            raise ValueError(
                f"video_fps must be a number and video_max_frames an integer or null, got "
                f"{fps!r} and {max_frames!r}."
            )
        check_video_policy(fps, max_frames)
        return processor.with_video_policy(fps, max_frames)


def item_modality(frame_counts) -> str:
    """The modality of the item of a prompt's visuals (`FRAMES_FIELD`, a list or a tensor of any
    shape): 'video' when any visual is a video, else 'image'."""
    return "video" if bool(torch.as_tensor(frame_counts).gt(0).any()) else "image"


def _fields_config(modality: str) -> dict[str, MultiModalFieldConfig]:
    return {
        name: MultiModalFieldConfig.batched(modality)
        for name in (PIXEL_FIELD, FRAMES_FIELD, PROMPT_FIELD)
    }


def _media_sources(items, modality: str, processor: LlavaMiniProcessor) -> list:
    """The sources of a prompt's images or videos as `LlavaMiniProcessor.process` takes them: PIL
    images; a video's frames, sampled by the project's policy when it came as a file."""
    if modality not in items:
        return []
    batch = items[modality]
    if not isinstance(batch, ProcessorBatchItems):
        raise ValueError(
            f"LLaVA-Mini on vLLM takes {modality}s as media, not as embeddings "
            f"({type(batch).__name__}): send the {modality} itself."
        )
    sources = []
    for index in range(batch.get_count()):
        item = batch.get(index)
        if item is None:
            raise ValueError(
                f"{modality} {index} came as a cached id without its data: LLaVA-Mini's item "
                f"covers the whole prompt, so send the {modality} itself."
            )
        if modality == "video":
            item = _video_frames(batch, index, processor)
        sources.append(item)
    return sources


def _video_frames(batch, index: int, processor: LlavaMiniProcessor) -> np.ndarray:
    """Video `index` of vLLM's video items -> `(T, H, W, 3)` uint8 frames: a video file's
    (a `video_url`, whose bytes vLLM keeps) decoded again by the project's policy
    (`processor.video_fps`, `processor.video_max_frames`); decoded frames and JPEG frame lists
    as they are, already sampled."""
    raw = batch.data[index]
    metadata = raw[1] if isinstance(raw, tuple) else None
    if isinstance(batch.metadata, list) and metadata is None:
        metadata = batch.metadata[index]
    from_file = isinstance(raw, MediaWithBytes) or (
        isinstance(raw, tuple) and isinstance(raw[0], MediaWithBytes)
    )
    if from_file and (metadata or {}).get("video_backend") != "jpeg_sequence":
        wrapped = raw if isinstance(raw, MediaWithBytes) else raw[0]
        return load_video_bytes(
            wrapped.original_bytes, processor.video_fps, processor.video_max_frames
        )
    video = batch.get(index)
    if isinstance(video, tuple):
        video = video[0]
    if isinstance(video, torch.Tensor):
        video = video.numpy()
    if isinstance(video, list):
        video = np.stack(
            [
                np.asarray(frame.convert("RGB")) if hasattr(frame, "convert") else np.asarray(frame)
                for frame in video
            ]
        )
    return np.asarray(video, dtype=np.uint8)


def load_video_bytes(data: bytes, fps: float, max_frames: int | None) -> np.ndarray:
    """A video file's bytes -> its frames sampled as `llavamini chat` samples a file
    (`llavamini.data.video.load_video`: same decoder, same frame indices). Raises `ValueError`
    naming the `video_url` (never the temporary file) when no frame can be decoded."""
    descriptor, path = tempfile.mkstemp(prefix="llavamini-video-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        return load_video(path, fps, max_frames)
    except ValueError as error:
        message = str(error).replace(path, "the video_url's file")
        raise ValueError(
            f"{message} ({len(data)} bytes); send an MP4, WebM, MKV, AVI or MOV file."
        ) from error
    finally:
        os.unlink(path)
