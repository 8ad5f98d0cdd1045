"""Split a question list over processes (`--num-chunks N --chunk-idx I`).

Every question lands in exactly one chunk, for any list length and any N (chunks may be empty
when there are fewer questions than chunks).

- `contiguous` (default, like LLaVA's `get_chunk`): chunk I is the slice
  `[I * n // N, (I + 1) * n // N)`, so chunk sizes differ by at most one and concatenating the
  chunks in order gives the question file's order.
- `strided`: chunk I holds questions I, I + N, I + 2N, ...: useful when question cost grows
  along the file (e.g. videos sorted by length), to balance the GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

Item = TypeVar("Item")

SHARD_MODES = ("contiguous", "strided")


def chunk_indices(total: int, num_chunks: int, chunk_idx: int, mode: str = "contiguous") -> range:
    """Positions of chunk `chunk_idx` of `num_chunks` in a list of `total` items."""
    if num_chunks < 1:
        raise ValueError(f"--num-chunks must be at least 1, got {num_chunks}.")
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx must be in [0, {num_chunks - 1}], got {chunk_idx}.")
    if mode == "contiguous":
        return range(total * chunk_idx // num_chunks, total * (chunk_idx + 1) // num_chunks)
    if mode == "strided":
        return range(chunk_idx, total, num_chunks)
    raise ValueError(f"Unknown shard mode {mode!r}; known: {list(SHARD_MODES)}.")


def get_chunk(
    items: Sequence[Item], num_chunks: int, chunk_idx: int, mode: str = "contiguous"
) -> list[Item]:
    """The items of chunk `chunk_idx` of `num_chunks`, in their original order."""
    return [items[i] for i in chunk_indices(len(items), num_chunks, chunk_idx, mode)]
