"""One generation path for chat, serving, evaluation and demos.

Model inputs come from `LlavaMiniProcessor` (`llavamini.model.processing_llavamini`); `generate`
answers such a batch (left-padded, so batched answers equal batch-size-1 answers) and decodes
the answers; `generate_ids` is the same call returning the token ids (analysis reads them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from transformers import BatchFeature

from llavamini.conversation import ChatTemplate, get_template
from llavamini.model.loading import LoadedModel


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, validated when built; temperature 0 means greedy.

    Attributes:
        max_new_tokens: at most this many new tokens (>= 1); None leaves the length to the
            command (`eval run`: the task's, the reference's), which fills it in
            (`with_max_new_tokens`) before generating.
        temperature: 0 for greedy decoding, > 0 to sample.
        top_p: nucleus sampling mass in (0, 1] (sampling only); None for no cut.
        num_beams: beam search width (>= 1).
    """

    max_new_tokens: int | None = field(
        default=128, metadata={"aliases": ["--max_new_tokens"], "help": "answer length limit"}
    )
    temperature: float = field(default=0.0, metadata={"help": "0 means greedy"})
    top_p: float | None = field(
        default=None, metadata={"aliases": ["--top_p"], "help": "nucleus sampling (with T > 0)"}
    )
    num_beams: int = field(
        default=1,
        metadata={"aliases": ["--num_beams"], "help": "beam search (chat: > 1 prints unstreamed)"},
    )

    def __post_init__(self):
        if self.max_new_tokens is not None and (
            not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1
        ):
            raise ValueError(
                f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}."
            )
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature!r}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams must be an integer >= 1, got {self.num_beams!r}.")

    def with_max_new_tokens(self, default: int) -> GenerationSettings:
        """These settings, `max_new_tokens` set to `default` when it is None."""
        if self.max_new_tokens is not None:
            return self
        return dataclasses.replace(self, max_new_tokens=default)

    def to_kwargs(self) -> dict:
        if self.max_new_tokens is None:
            raise ValueError("max_new_tokens is None: fill it in with `with_max_new_tokens`.")
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs["do_sample"] = False
        return kwargs


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


def generate_ids(
    loaded: LoadedModel,
    inputs: BatchFeature,
    settings: GenerationSettings = GenerationSettings(),
    template: ChatTemplate | None = None,
    streamer=None,
) -> torch.LongTensor:
    """The new token ids of each prompt of a processor batch, `(B, new tokens)`: the one call
    of `model.generate` (stop tokens, pad token, decoding settings).

    Args:
        loaded: model and processor.
        inputs: from the processor (`model_inputs`, `__call__` or `apply_chat_template`).
        settings: decoding settings.
        template: gives the stop tokens (default: the processor's conv mode).
        streamer: a transformers streamer (batch of one), for token-by-token output.

    Rows that stop early are padded with the pad token (0 when the tokenizer has none); a row
    that stopped holds its stop token.
    """
    model, processor = loaded.model, loaded.processor
    tokenizer = processor.tokenizer
    return model.generate(
        **inputs.to(model.device),
        eos_token_id=stop_token_ids(tokenizer, template or processor.template),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        streamer=streamer,
        **settings.to_kwargs(),
    )


def generate(
    loaded: LoadedModel,
    inputs: BatchFeature,
    settings: GenerationSettings = GenerationSettings(),
    template: ChatTemplate | None = None,
    streamer=None,
) -> list[str]:
    """Answer each prompt of a processor batch (`generate_ids`, decoded).

    Returns:
        The answers, special tokens removed, stripped.
    """
    output = generate_ids(loaded, inputs, settings, template, streamer)
    texts = loaded.processor.batch_decode(output, skip_special_tokens=True)
    return [text.strip() for text in texts]


@dataclass(frozen=True)
class InputSettings:
    """How a conversation becomes model input: the chat template and video frame sampling.

    Attributes:
        conv_mode: chat template name (None: the checkpoint's, from its tokenizer).
        video_fps: video frames sampled per second (None: the checkpoint processor's, 1).
        video_max_frames: cap on video frames (None: the checkpoint processor's).
    """

    conv_mode: str | None = field(
        default=None,
        metadata={"help": "chat template (default: the checkpoint's, from its tokenizer)"},
    )
    video_fps: float | None = field(
        default=None,
        metadata={
            "help": "video frames per second (default: the checkpoint processor's, 1)",
            "renamed_from": ("--fps",),
        },
    )
    video_max_frames: int | None = field(
        default=None,
        metadata={
            "help": "cap on video frames (default: the checkpoint processor's)",
            "renamed_from": ("--max-frames",),
        },
    )

    def __post_init__(self):
        if self.conv_mode is not None:
            try:
                get_template(self.conv_mode)
            except KeyError as error:
                raise ValueError(error.args[0]) from error
        if self.video_max_frames is not None and self.video_max_frames < 1:
            raise ValueError(f"video_max_frames must be >= 1, got {self.video_max_frames}")
        if self.video_fps is not None and not self.video_fps > 0:
            raise ValueError(f"video_fps must be > 0, got {self.video_fps}")
