"""`keep_freed_memory`: freed heap memory stays in the process, so a forward pass's transient
tensors are not given back to the kernel and faulted in again; building a model applies it.
Checked in a fresh process (the setting is process-wide) through glibc's own accounting
(`mallinfo2`)."""

import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest

HEAP_PROGRAM = """
import ctypes, json, torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
{setup}
heap, mapped = [], []
for _ in range(10):  # a layer's transients: three 16 MiB activations, freed newest first
    a, b, c = torch.ones(4 * 2**20), torch.ones(4 * 2**20), torch.ones(4 * 2**20)
    mapped.append(libc.mallinfo2().hblkhd)
    del c, b, a
    heap.append(libc.mallinfo2().arena)
print(json.dumps({{"applied": applied, "heap": heap, "mapped": mapped}}))
"""
"""Prints glibc's heap and mmapped bytes around ten rounds of a layer's transient tensors, after
`setup` (which sets `applied`)."""

BUILD_A_MODEL = """
from llavamini import LlavaMiniForCausalLM
from llavamini.apps.tiny import tiny_config
LlavaMiniForCausalLM(tiny_config(64, 28))
applied = None
"""
"""A plain process's way: build a model, call nothing else."""


def heap_rounds(setup: str, env: dict | None = None) -> dict:
    """`HEAP_PROGRAM` after `setup`, in a fresh process (the setting is process-wide)."""
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", HEAP_PROGRAM.format(setup=setup)],
        capture_output=True, text=True, check=True, env=environment,
    )  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])


def freed_memory_kept(result: dict) -> bool:
    """Never trimmed: the heap does not shrink after the frees (with glibc's defaults it gives
    the freed 48 MiB at its top back, and the next layer faults them in again), and 16 MiB blocks
    come from the heap, not from mmap (unmapped again on every free)."""
    heap, mapped = result["heap"], result["mapped"]
    return (
        heap == sorted(heap)
        and heap[0] >= 48 * 2**20
        and len(set(mapped)) == 1
        and mapped[0] < 48 * 2**20
    )


def has_mallinfo2() -> bool:
    return hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc >= 2.33


needs_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not has_mallinfo2(),
    reason="keep_freed_memory tunes glibc's malloc (checked with mallinfo2, glibc >= 2.33)",
)


@needs_glibc
def test_freed_activations_stay_in_the_heap():
    setup = "from llavamini.utils.allocator import keep_freed_memory\napplied = keep_freed_memory()"
    result = heap_rounds(setup)
    assert result["applied"] is True
    assert freed_memory_kept(result), result


@needs_glibc
def test_building_a_model_keeps_freed_memory_unless_turned_off():
    """From a plain process, building the model is enough; LLAVAMINI_KEEP_FREED_MEMORY=0 leaves
    glibc's defaults, which give the freed memory back."""
    assert freed_memory_kept(heap_rounds(BUILD_A_MODEL))
    result = heap_rounds(BUILD_A_MODEL, {"LLAVAMINI_KEEP_FREED_MEMORY": "0"})
    assert not freed_memory_kept(result), result


RELEASE_PROGRAM = """
import json, os, torch
from llavamini.utils.allocator import keep_freed_memory, release_freed_memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

keep_freed_memory()
kept = torch.ones(1024)  # a small live tensor above the freed ones: the heap cannot shrink
blocks = [torch.ones(4 * 2**20) for _ in range(12)]  # 192 MiB of transients
last = torch.ones(1024)
del blocks
before = rss()
released = release_freed_memory()
print(json.dumps({"released": released, "before": before, "after": rss()}))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="release_freed_memory calls glibc's malloc_trim",
)
def test_released_memory_leaves_the_process():
    """Freed heap memory that `keep_freed_memory` keeps is given back by `release_freed_memory`
    (what a quantized load does once its transients are gone)."""
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_PROGRAM], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["released"] is True
    assert result["before"] - result["after"] > 150 * 2**20, result


INSIDE_A_TRANSIENT_BLOCK = """
from llavamini import LlavaMiniForCausalLM
from llavamini.apps.tiny import tiny_config
from llavamini.utils.allocator import keep_freed_memory, transient_allocations
keep_freed_memory()
block = transient_allocations()
block.__enter__()
LlavaMiniForCausalLM(tiny_config(64, 28))
{after}
applied = None
"""
"""Freed memory kept, then a block of transients (a quantized load) that builds a model."""


@needs_glibc
def test_transient_block_gives_memory_back_then_keeps_it_again():
    """Inside `transient_allocations` glibc's defaults hold even when a model is built there
    (its transients are given back); once the block ends, freed memory is kept again."""
    inside = heap_rounds(INSIDE_A_TRANSIENT_BLOCK.format(after=""))
    # The three 16 MiB activations are mapped while alive, so unmapped again when freed.
    assert min(inside["mapped"]) >= 48 * 2**20 and not freed_memory_kept(inside), inside
    after = heap_rounds(INSIDE_A_TRANSIENT_BLOCK.format(after="block.__exit__(None, None, None)"))
    assert freed_memory_kept(after), after
