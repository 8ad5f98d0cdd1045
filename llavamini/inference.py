"""One generation path for chat, serving, evaluation and demos.

`load_visual` turns an image or video file into the model's pixel tensor; `generate` answers a
batch of rendered prompts (left-padded, so batched answers equal batch-size-1 answers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llavamini.conversation import ChatTemplate
from llavamini.data import (
    load_image,
    load_video,
    process_images,
    process_video,
    tokenizer_image_token,
)
from llavamini.model.loading import LoadedModel

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1

    def to_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs["do_sample"] = False
        return kwargs


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def load_visual(
    path: str, loaded: LoadedModel, fps: float = 1.0, max_frames: int | None = None
) -> torch.Tensor:
    """An image file -> `(parts, 3, H, W)`; a video file -> `(T, parts, 3, H, W)`."""
    config = loaded.model.config
    if is_video(path):
        frames = load_video(path, fps=fps, max_frames=max_frames)
        return process_video(frames, loaded.image_processor, config)
    return process_images([load_image(path)], loaded.image_processor, config)[0]


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered prompts -> left-padded `(input_ids, attention_mask)`, `<image>` as -200."""
    rows = [tokenizer_image_token(prompt, tokenizer) for prompt in prompts]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return input_ids, attention_mask


def stop_token_ids(tokenizer, template: ChatTemplate) -> list[int]:
    """Token ids that end an answer: the template's stop strings that are single tokens, and EOS."""
    ids = []
    for text in template.stop_strings:
        token_id = tokenizer.convert_tokens_to_ids(text)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.append(token_id)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate(
    loaded: LoadedModel,
    prompts: list[str],
    visuals: list[list[torch.Tensor]],
    template: ChatTemplate,
    settings: GenerationSettings = GenerationSettings(),
    streamer=None,
) -> list[str]:
    """Answer each rendered prompt with its visuals (one per `<image>`, in order).

    Args:
        loaded: model, tokenizer and image processor.
        prompts: prompt strings rendered with `template`.
        visuals: per prompt, the pixel tensors from `load_visual` (an empty list for text only).
        template: gives the stop tokens.
        settings: decoding settings.
        streamer: a transformers streamer (batch of one), for token-by-token output.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids, attention_mask = encode_prompts(tokenizer, prompts)
    device = model.device
    images = None
    if any(visuals):
        images = [[v.to(device, model.dtype) for v in sample] for sample in visuals]
    output = model.generate(
        inputs=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        images=images,
        eos_token_id=stop_token_ids(tokenizer, template),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        streamer=streamer,
        **settings.to_kwargs(),
    )
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in output]
