"""Prompt tokenization with `<image>`/`<video>` as `IMAGE_TOKEN_INDEX`, and labels by construction.

Training text is tokenized exactly as inference text (in one piece between placeholders); a token
is supervised when its characters lie inside a supervised span from
`llavamini.conversation.render_with_spans`. A token straddling a span boundary means the labels
cannot be built consistently: that is an error naming the sample, never a silently ignored sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

from llavamini.constants import (
    DEFAULT_IMAGE_TOKEN,
    DEFAULT_VIDEO_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)

PLACEHOLDER = re.compile(f"({re.escape(DEFAULT_IMAGE_TOKEN)}|{re.escape(DEFAULT_VIDEO_TOKEN)})")
"""`<image>` or `<video>`: both mark where vision tokens go."""


def _tokens_with_offsets(text: str, tokenizer) -> Iterator[tuple[int, int, int]]:
    """`(token_id, start, end)` over `text`, each `<image>` or `<video>` yielding one
    `IMAGE_TOKEN_INDEX`. Raises `ValueError` for text that is not valid Unicode."""
    check_encodable(text)
    offset = 0
    for i, chunk in enumerate(PLACEHOLDER.split(text)):
        if i % 2:  # a placeholder
            yield IMAGE_TOKEN_INDEX, offset, offset + len(chunk)
            offset += len(chunk)
            continue
        if chunk:
            encoded = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
            for token_id, (start, end) in zip(
                encoded["input_ids"], encoded["offset_mapping"], strict=True
            ):
                yield token_id, offset + start, offset + end
        offset += len(chunk)


def check_encodable(text: str) -> None:
    """Raise `ValueError` unless `text` can be written as UTF-8.

    A lone surrogate (from invalid UTF-8 decoded with `surrogateescape`, as Python decodes
    command-line arguments, or a `\\udcff` escape in JSON) would otherwise reach the tokenizer,
    which fails with a `TypeError` that names neither the text nor the problem.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        snippet = text[max(0, error.start - 20) : error.end + 20]
        raise ValueError(
            f"The text is not valid Unicode: {error.reason} at character {error.start} (near "
            f"{snippet!r}); send UTF-8 text."
        ) from error


def _needs_bos(ids: list[int], tokenizer, add_bos: bool) -> bool:
    bos = tokenizer.bos_token_id
    return add_bos and bos is not None and (not ids or ids[0] != bos)


def tokenizer_image_token(
    prompt: str, tokenizer, add_bos: bool = True, return_tensors: str | None = None
) -> list[int] | torch.Tensor:
    """Tokenize `prompt`, each `<image>` (or `<video>`) becoming one `IMAGE_TOKEN_INDEX`.

    A BOS is prepended when `add_bos` and the tokenizer has one, unless the rendered prompt
    already starts with it (the reference's inference scripts produced a double BOS there;
    docs/compatibility.md F3).
    """
    ids = [token_id for token_id, _, _ in _tokens_with_offsets(prompt, tokenizer)]
    if _needs_bos(ids, tokenizer, add_bos):
        ids.insert(0, tokenizer.bos_token_id)
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    if return_tensors is not None:
        raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}.")
    return ids


def tokenize_conversation(
    text: str, spans: list[tuple[int, int]], tokenizer, sample_id: str = "?", add_bos: bool = True
) -> tuple[list[int], list[int]]:
    """`(input_ids, labels)` for a rendered conversation; labels are `IGNORE_INDEX` outside the
    supervised `spans`. Raises `ValueError` naming `sample_id` when a token straddles a span
    boundary or when nothing is supervised."""
    ids, labels = [], []
    for token_id, start, end in _tokens_with_offsets(text, tokenizer):
        inside = any(a <= start and end <= b for a, b in spans)
        if not inside and any(start < b and a < end for a, b in spans):
            raise ValueError(
                f"Sample {sample_id}: token {tokenizer.decode([token_id])!r} (characters "
                f"{start}-{end}) straddles the boundary of an answer, so its labels cannot be "
                f"built consistently with this tokenizer and template."
            )
        ids.append(token_id)
        labels.append(token_id if inside and token_id != IMAGE_TOKEN_INDEX else IGNORE_INDEX)
    if spans and all(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"Sample {sample_id}: no answer token is supervised (empty answers?).")
    if _needs_bos(ids, tokenizer, add_bos):
        ids.insert(0, tokenizer.bos_token_id)
        labels.insert(0, IGNORE_INDEX)
    return ids, labels


def tokenize_batch(
    prompts: list[str], visual_counts: list[int], tokenizer, padding_side: str, add_bos: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts with placeholders -> `(input_ids, attention_mask)` rows, padded to the longest on
    `padding_side` ('left' or 'right') with the tokenizer's pad id (0 when it has none).

    Raises `ValueError` naming the sample whose placeholders are not `visual_counts[i]`, the
    number of images and videos it comes with.
    """
    rows = []
    for number, (prompt, count) in enumerate(zip(prompts, visual_counts, strict=True)):
        row = tokenizer_image_token(prompt, tokenizer, add_bos=add_bos)
        if row.count(IMAGE_TOKEN_INDEX) != count:
            raise ValueError(
                f"Sample {number} has {row.count(IMAGE_TOKEN_INDEX)} {DEFAULT_IMAGE_TOKEN}/"
                f"{DEFAULT_VIDEO_TOKEN} placeholders but {count} images and videos."
            )
        rows.append(row)
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = [], []
    for row in rows:
        padding = width - len(row)
        if padding_side == "left":
            ids.append([pad] * padding + row)
            mask.append([0] * padding + [1] * len(row))
        else:
            ids.append(row + [pad] * padding)
            mask.append([1] * len(row) + [0] * padding)
    return ids, mask
