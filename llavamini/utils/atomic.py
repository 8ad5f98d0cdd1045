"""Crash-safe writes: a file or a folder is either absent, the previous version, or complete.

Everything the project writes and later reads back (checkpoints, `mm_projector.bin`, the final
model folder, merged answer files, judge caches) goes through `atomic_write` or is staged in a
folder that is renamed once complete. A process killed at any moment (SIGKILL, pre-emption,
out-of-memory) then never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Yields a file to write `path`'s new content into; `path` changes only on a clean exit.

    The content goes to a hidden temporary file in `path`'s folder (the same file system, so the
    final `os.replace` is atomic), which is flushed and fsync'ed before it replaces `path`; the
    folder is fsync'ed after, so the rename itself survives a power loss. If the block raises,
    `path` is untouched and the temporary file is removed. `mode` is 'w' or 'wb'.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Process and thread in the name: concurrent writers of one path (the judge's threads) never
    # share a temporary file. `open` rather than `mkstemp` keeps the umask's permissions.
    tmp = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp"
    )
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(path: str) -> None:
    """Make the entries of folder `path` (creations, renames) durable, where the OS allows it."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        # Some file systems (and platforms) refuse fsync on a folder; nothing more can be done.
        pass
    finally:
        os.close(handle)


def fsync_tree(root: str) -> None:
    """fsync every file under `root`, then every folder, deepest first: what other processes
    (DeepSpeed ranks) or libraries wrote there is on disk before `root` is declared complete."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(folder, name), "rb") as file:
                os.fsync(file.fileno())
        fsync_dir(folder)
