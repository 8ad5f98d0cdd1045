"""A sampler that keeps image and text-only samples in separate, length-sorted megabatches.

Unlike the reference's, it drops nothing: the incomplete tail of each modality goes into one
final mixed megabatch. The order depends only on the seed and the epoch, so a resumed run sees
the same batches.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def _megabatches(
    indices: list[int], lengths: list[int], size: int, generator: torch.Generator
) -> list[list[int]]:
    order = torch.randperm(len(indices), generator=generator).tolist()
    shuffled = [indices[i] for i in order]
    chunks = [shuffled[i : i + size] for i in range(0, len(shuffled), size)]
    return [sorted(chunk, key=lambda i: abs(lengths[i]), reverse=True) for chunk in chunks]


def modality_grouped_indices(
    lengths: list[int], megabatch_size: int, generator: torch.Generator
) -> list[int]:
    """A permutation of `range(len(lengths))` in megabatches of `megabatch_size` indices of one
    modality (length > 0: with images or video; < 0: text only), each sorted by length."""
    multimodal = [i for i, length in enumerate(lengths) if length > 0]
    text = [i for i, length in enumerate(lengths) if length <= 0]
    groups = []
    for indices in (multimodal, text):
        if indices:
            groups += _megabatches(indices, lengths, megabatch_size, generator)
    full = [group for group in groups if len(group) == megabatch_size]
    tails = [i for group in groups if len(group) < megabatch_size for i in group]
    order = torch.randperm(len(full), generator=generator).tolist()
    return [i for k in order for i in full[k]] + tails


class ModalityGroupedSampler(Sampler[int]):
    """Yields `modality_grouped_indices` for `lengths`, reshuffled per epoch from `seed`."""

    def __init__(self, lengths: list[int], megabatch_size: int, seed: int = 0):
        self.lengths = lengths
        self.megabatch_size = megabatch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.megabatch_size, generator))
