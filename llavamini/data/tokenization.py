"""Prompt tokenization with the `<image>` placeholder mapped to `IMAGE_TOKEN_INDEX`."""

from __future__ import annotations

import torch

from llavamini.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


def tokenizer_image_token(
    prompt: str, tokenizer, add_bos: bool = True, return_tensors: str | None = None
) -> list[int] | torch.Tensor:
    """Tokenize `prompt`, each `<image>` becoming one `IMAGE_TOKEN_INDEX`.

    The text between placeholders is tokenized without special tokens; a BOS is prepended when
    `add_bos` and the tokenizer has one, unless the rendered prompt already starts with it (the
    reference's inference scripts produced a double BOS there; see reference.md §3.2).
    """
    ids: list[int] = []
    for i, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    if return_tensors is not None:
        raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}.")
    return ids
