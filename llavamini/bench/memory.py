"""Peak memory of a call: the memory it allocates above what was allocated before it (so not
the weights), on CUDA from the allocator's counter, on the CPU by tracking the tensors operators
create (`TensorPeak`); and the process's peak resident set size.
"""

from __future__ import annotations

import resource
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


class TensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages that operators create while active (activations, KV
    cache; not the weights or inputs made before), on any device.

    Each storage is counted once (views share it) from the operator that returns it until it is
    freed. Scratch memory a kernel allocates and frees internally is not seen. Costs a few
    microseconds per operator: for memory runs, never for timed ones."""

    def __init__(self):
        super().__init__()
        self.live_bytes = self.peak_bytes = 0
        self._sizes = WeakIdKeyDictionary()
        self._refs: set[weakref.ref] = set()

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[storage] = size
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

        def release(ref: weakref.ref, size: int = size) -> None:
            self.live_bytes -= size
            self._refs.discard(ref)

        self._refs.add(weakref.ref(storage, release))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        # Views and in-place results share an input's storage (a weight's transpose, say):
        # only storages no input holds are new memory.
        inputs = {x.untyped_storage().data_ptr() for x in tree_leaves((args, kwargs)) if _stored(x)}
        for leaf in tree_leaves(output):
            if _stored(leaf) and leaf.untyped_storage().data_ptr() not in inputs:
                self._track(leaf)
        return output


def _stored(leaf) -> bool:
    """A tensor with a storage to count: not on meta, not opaque (MKL-packed weights of
    `llavamini.model.packed_linear`: weights, not activations)."""
    return isinstance(leaf, torch.Tensor) and leaf.device.type != "meta" and not leaf.is_mkldnn


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict that gets `peak_bytes` on exit: memory above what was allocated at entry.

    CUDA: `torch.cuda.max_memory_allocated` (the allocator's own counter). CPU: `TensorPeak`
    (the CPU allocator keeps no peak counter, and the resident set size of a process does not
    drop when the C library keeps freed pages)."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - start
        return
    with TensorPeak() as tracker:
        yield result
    result["peak_bytes"] = tracker.peak_bytes


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
