"""glibc malloc settings for running the model on a CPU.

PyTorch takes CPU tensors from malloc. With glibc's defaults the heap is given back to the
kernel (trimmed) whenever enough free memory gathers at its top, and a forward pass that frees
its activations in that order gives memory back after one layer and faults it in again for the
next: about 100,000 minor page faults per image prefill of CLIP-L/336 under transformers 5,
against almost none under the reference's transformers 4.43 (docs/benchmarks.md). Keeping freed
memory in the process removes them; the price is that the process's resident memory stays at
its peak instead of shrinking after it.

Nothing here runs on import. Building a LLaVA-Mini model (the transformers model by
`from_pretrained` or from a config, the vLLM plug-in's encoder) calls
`keep_freed_memory_for_models()`, so that a plain Python process, a notebook, a Trainer script
or a plug-in runs as fast as the `llavamini` commands; `LLAVAMINI_KEEP_FREED_MEMORY=0` in the
environment turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""`mallopt` parameter numbers (glibc's malloc.h)."""

MMAP_THRESHOLD_BYTES = 2**30
"""Blocks under this come from the heap: glibc's own ceiling for its sliding threshold on 64-bit
(fixing the threshold turns the sliding off, so it is fixed where the sliding would end)."""

TRIM_THRESHOLD_BYTES = 2**31 - 1
"""The largest value `mallopt` takes (a C int): the heap is never trimmed."""

GLIBC_DEFAULT_THRESHOLD_BYTES = 128 * 1024
"""glibc's starting value of both thresholds (`DEFAULT_MMAP_THRESHOLD_MIN`)."""

KEEP_FREED_MEMORY_ENV = "LLAVAMINI_KEEP_FREED_MEMORY"
"""'0' in this environment variable: building a model leaves glibc's settings alone."""


_state = {"kept": False, "open_blocks": 0, "requested": False}
"""Whether `keep_freed_memory` is in force, and the `transient_allocations` blocks open now."""


def set_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """`mallopt` both thresholds; True when glibc took them, False elsewhere (nothing changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(M_MMAP_THRESHOLD, mmap_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1


def keep_freed_memory() -> bool:
    """Make glibc keep freed heap memory in this process instead of trimming it after each free.

    Process-wide and not undone. Returns True when applied, False (changing nothing) where the C
    library is not glibc (macOS, musl) or refuses the settings.
    """
    applied = set_thresholds(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)
    if applied:
        _state["kept"] = True
    else:
        logger.debug("glibc refused the malloc settings (or is not the C library here)")
    return applied


def keep_freed_memory_for_models() -> bool:
    """`keep_freed_memory()`, unless `LLAVAMINI_KEEP_FREED_MEMORY=0` is set: what building a
    LLaVA-Mini model does (process-wide, from then on). Returns whether it was applied."""
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip() == "0":
        logger.debug("%s=0: glibc's malloc settings left as they are", KEEP_FREED_MEMORY_ENV)
        return False
    if _state["open_blocks"]:
        _state["requested"] = True  # applied when the last `transient_allocations` block ends
        return False
    return keep_freed_memory()


@contextlib.contextmanager
def transient_allocations():
    """A block of large transient allocations (quantizing a checkpoint while loading it): glibc's
    default thresholds inside, so each transient is given back when freed instead of piling up
    in a heap that keeps its peak (an 8B model quantized while loading left ~14 GB of freed
    heap beside the model); models built inside defer `keep_freed_memory_for_models` to the
    end. On leaving: the free heap is released, then freed memory is kept again if it was
    before or a model asked for it."""
    if _state["open_blocks"] == 0:
        _state["requested"] = _state["kept"]
        if _state["kept"]:
            set_thresholds(GLIBC_DEFAULT_THRESHOLD_BYTES, GLIBC_DEFAULT_THRESHOLD_BYTES)
            _state["kept"] = False
    _state["open_blocks"] += 1
    try:
        yield
    finally:
        _state["open_blocks"] -= 1
        if _state["open_blocks"] == 0:
            release_freed_memory()
            if _state["requested"]:
                keep_freed_memory()


def release_freed_memory() -> bool:
    """Give the free memory inside glibc's heap back to the kernel once (`malloc_trim(0)`).

    For after a one-off burst of transient allocations, such as quantizing a checkpoint while
    loading it: under `keep_freed_memory` the heap keeps them at their peak (an 8B model loaded
    in 4 bits left ~14 GB of freed heap beside a 9 GB model, and the first forward pass then ran
    out of 24 GB). Returns True when memory was released, False where the C library is not glibc
    or had nothing to release.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    return malloc_trim(0) == 1
