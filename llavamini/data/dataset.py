"""`SupervisedDataset`: LLaVA-format samples -> `input_ids`, `labels` and pixel tensors.

A sample is `{"id", "image" | "video" (a path or a list of paths, relative to its image folder),
"conversations": [{"from": "human" | "gpt", "value": ...}, ...]}`; text-only samples have no
media. Samples are read lazily: media are decoded and text tokenized in `__getitem__`.

Bad samples (missing or undecodable media, malformed conversations, labels that cannot be built,
over-length sequences) raise `BadSampleError` naming the sample and its file. With
`on_bad_sample="skip"` they are logged and become a `SkippedSample`, which the collator drops from
the batch and names under `SKIPPED_KEY` (so the trainer counts skips made in DataLoader worker
processes too); a bad sample is never replaced by another sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from llavamini.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN
from llavamini.conversation import ChatTemplate, render_with_spans
from llavamini.data.tokenization import tokenize_conversation
from llavamini.utils.paths import join_inside

logger = logging.getLogger(__name__)

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class BadSampleError(ValueError):
    """A sample that cannot be trained on; the message names it, its file and the problem.

    `kind` is one of `PROBLEM_KINDS`.
    """

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SkippedSample:
    """What `SupervisedDataset[i]` is for a bad sample under `on_bad_sample="skip"`."""

    name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


SKIPPED_KEY = "skipped_samples"
"""Batch key of the samples the collator left out (`str(SkippedSample)`s); absent if none."""

PROBLEM_KINDS = (
    "missing media",
    "undecodable media",
    "malformed conversation",
    "inconsistent labels",
    "over-length",
)


def sample_name(record: dict, index: int) -> str:
    return f"{record.get('id', index)!s} ({record.get('_source', '?')}, sample #{index})"


def media_paths(record: dict) -> list[tuple[str, str]]:
    """`(kind, path)` of the sample's media, images first, in listed order.

    Raises `ValueError` when an entry is not a file name (a string, or a list of them) or
    names a file outside the sample's image folder.
    """
    paths = []
    folder = record.get("_folder", "")
    for kind in ("image", "video"):
        value = record.get(kind)
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str):
                raise ValueError(
                    f"'{kind}' must be a file name or a list of them, got "
                    f"{type(item).__name__} {item!r}"
                )
            path = join_inside(folder, item, "--image-folder") if folder else item
            paths.append((kind, path))
    return paths


def sample_media(record: dict, name: str) -> list[tuple[str, str]]:
    """`media_paths(record)`, its `ValueError` raised as a 'missing media' `BadSampleError`
    naming the sample `name`."""
    try:
        return media_paths(record)
    except ValueError as error:
        raise BadSampleError(f"Sample {name}: {error}", "missing media") from error


def image_first(text: str) -> str:
    """`text` with its `<image>` placeholders removed, stripped, after one `<image>\n` (where
    the reference puts a sample's one image)."""
    return DEFAULT_IMAGE_TOKEN + "\n" + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()


def conversation_messages(record: dict, template: ChatTemplate, num_visuals: int) -> list:
    """The sample's turns as `(role, text)`, with its placeholders normalised.

    With one image or video, every placeholder is removed from the turn holding it and one
    `<image>\\n` is put at the start of that turn (as the reference). With several, `<video>`
    becomes `<image>` in place. The 'plain' template (stage 1) keeps only `<image>` as the
    question. Raises `ValueError` describing what is malformed.
    """
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("'conversations' must be a non-empty list of turns")
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            raise ValueError(f"turn {number} needs 'from' in {sorted(ROLES)}")
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {number} needs a string 'value'")
        role = ROLES[turn["from"]]
        expected = "user" if number % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turn {number} is from {role}; turns must alternate, user first")
        messages.append((role, turn["value"].replace(DEFAULT_VIDEO_TOKEN, DEFAULT_IMAGE_TOKEN)))
    if messages[-1][0] != "assistant":
        raise ValueError("the last turn must be the assistant's answer")
    placeholders = sum(text.count(DEFAULT_IMAGE_TOKEN) for _, text in messages)
    if num_visuals == 0 and placeholders:
        raise ValueError(f"{placeholders} <image>/<video> placeholders but no image or video")
    if num_visuals > 1 and placeholders != num_visuals:
        raise ValueError(f"{placeholders} placeholders for {num_visuals} images/videos")
    if num_visuals == 1:
        if placeholders == 0:
            raise ValueError("an image or video but no <image>/<video> placeholder in the text")
        messages = [
            (role, image_first(text)) if DEFAULT_IMAGE_TOKEN in text else (role, text)
            for role, text in messages
        ]
    if template.name == "plain":
        if len(messages) != 2 or num_visuals != 1:
            raise ValueError("the 'plain' template takes one image and one caption turn")
        messages = [("user", DEFAULT_IMAGE_TOKEN), messages[1]]
    return messages


def prepare_text(
    record: dict, name: str, template: ChatTemplate, tokenizer, num_visuals: int
) -> tuple[list[int], list[int]]:
    """`(input_ids, labels)` of a record; raises `BadSampleError` naming the sample."""
    try:
        messages = conversation_messages(record, template, num_visuals)
    except ValueError as error:
        raise BadSampleError(f"Sample {name}: {error}", "malformed conversation") from error
    text, spans = render_with_spans(template, messages, tokenizer=tokenizer)
    try:
        return tokenize_conversation(text, spans, tokenizer, name)
    except ValueError as error:
        raise BadSampleError(str(error), "inconsistent labels") from error


def check_length(name: str, length: int, max_length: int) -> None:
    if length > max_length:
        raise BadSampleError(
            f"Sample {name}: {length} tokens (vision tokens included) exceed max_length "
            f"{max_length}.",
            "over-length",
        )


@dataclass
class SupervisedDataset(torch.utils.data.Dataset):
    """LLaVA-format records (from `llavamini.data.mixture.load_records`) for training.

    Attributes:
        records: the samples, tagged with `_folder` and `_source`.
        processor: the run's `LlavaMiniProcessor`: images and videos are processed by it (the
            frame policy of inference included), text tokenized by its tokenizer.
        template: the chat template the conversations are written in.
        model_config: the `LlavaMiniConfig` (vision tokens per image).
        max_length: longest sequence the LLM may receive (vision tokens included).
        on_bad_sample: 'raise' (default) or 'skip'.
    """

    records: list[dict]
    processor: object
    template: ChatTemplate
    model_config: object
    max_length: int
    on_bad_sample: str = "raise"
    skipped: int = field(default=0, init=False)

    def __post_init__(self):
        if self.on_bad_sample not in ("raise", "skip"):
            raise ValueError(
                f"on_bad_sample must be 'raise' or 'skip', got {self.on_bad_sample!r}."
            )

    def __len__(self) -> int:
        return len(self.records)

    def modality_lengths(self) -> list[int]:
        """Approximate length of each sample (words), negative for text-only samples: what the
        modality-grouped sampler sorts by, computed without reading any media."""
        lengths = []
        for record in self.records:
            words = sum(len(str(t.get("value", "")).split()) for t in record["conversations"])
            has_media = any(record.get(kind) not in (None, []) for kind in ("image", "video"))
            lengths.append(words if has_media else -max(words, 1))
        return lengths

    def __getitem__(self, index: int) -> dict | SkippedSample:
        try:
            return self.build(index)
        except BadSampleError as error:
            if self.on_bad_sample == "raise":
                raise
            self.skipped += 1
            logger.warning(
                "Skipping bad sample (%d so far in this process): %s", self.skipped, error
            )
            return SkippedSample(sample_name(self.records[index], index), error.kind)

    def build(self, index: int) -> dict:
        """The training example of record `index`; raises `BadSampleError`."""
        record = self.records[index]
        name = sample_name(record, index)
        visuals = []
        for kind, path in sample_media(record, name):
            try:
                visuals.append(self.load_media(kind, path))
            except FileNotFoundError as error:
                raise BadSampleError(f"Sample {name}: {error}", "missing media") from error
            except (ValueError, OSError) as error:
                raise BadSampleError(f"Sample {name}: {error}", "undecodable media") from error
        input_ids, labels = prepare_text(
            record, name, self.template, self.processor.tokenizer, len(visuals)
        )
        length = len(input_ids) - len(visuals) + sum(self.vision_tokens(v) for v in visuals)
        check_length(name, length, self.max_length)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "visuals": visuals,
        }

    def load_media(self, kind: str, path: str) -> torch.Tensor:
        """An image -> `(parts, 3, H, W)`; a video -> `(T, parts, 3, H, W)`."""
        return self.processor.process(kind, path)

    def vision_tokens(self, visual: torch.Tensor) -> int:
        if visual.dim() == 5:
            return self.model_config.vision_token_count(visual.shape[1], frames=visual.shape[0])
        return self.model_config.vision_token_count(visual.shape[0])


@dataclass
class DataCollator:
    """Right-pads a batch; images are stacked into one `(B, parts, 3, H, W)` tensor when every
    sample has exactly one image of the same shape (the batched path), else passed as a list of
    per-sample visuals. Samples dropped by `on_bad_sample="skip"` (`SkippedSample`, or None)
    are left out, and named under `SKIPPED_KEY`."""

    pad_token_id: int

    def __call__(self, examples: list[dict | SkippedSample | None]) -> dict:
        skipped = [str(example) for example in examples if isinstance(example, SkippedSample)]
        examples = [example for example in examples if isinstance(example, dict)]
        if not examples:
            return {"empty_batch": True, **({SKIPPED_KEY: skipped} if skipped else {})}
        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = example["input_ids"]
            labels[row, :length] = example["labels"]
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        visuals = [example["visuals"] for example in examples]
        if any(visuals):
            batch["images"] = stack_if_uniform(visuals)
        if skipped:
            batch[SKIPPED_KEY] = skipped
        return batch


def stack_if_uniform(visuals: list[list[torch.Tensor]]) -> torch.Tensor | list:
    """One tensor when every sample has one image `(parts, 3, H, W)` of one shape, else the list."""
    singles = [v[0] for v in visuals if len(v) == 1 and v[0].dim() == 4]
    if len(singles) == len(visuals) and len({tuple(v.shape) for v in singles}) == 1:
        return torch.stack(singles)
    return visuals
