"""Crash-safe checkpoints: staged in a hidden folder, declared complete, then renamed.

A save of step N is written (by every rank) to `<run>/.checkpoint-N.partial/checkpoint-N`. Once
all ranks are done, the saving rank fsyncs it, writes `checkpoint_complete.json` (every file and
its size) and renames it to `<run>/checkpoint-N`. A process killed at any moment therefore leaves
the previous checkpoints intact, and at most a `.checkpoint-N.partial` folder, which
`resume_from_checkpoint: auto` reports and the next save removes. Old checkpoints are removed
the same way round: renamed to a hidden name first, then deleted.

A `checkpoint-N` folder is complete when every file its `checkpoint_complete.json` lists is there
with its size; one written before this scheme (no such file) when it has `trainer_state.json`,
which the Trainer writes after everything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from llavamini.utils.atomic import atomic_write, fsync_dir, fsync_tree

logger = logging.getLogger(__name__)

COMPLETE_FILE = "checkpoint_complete.json"
"""Written last into a checkpoint: `{"global_step": N, "files": {relative path: bytes}}`."""

TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
UNFINISHED_NAME = re.compile(rf"^\.{PREFIX_CHECKPOINT_DIR}-(\d+)\.partial$")
WEIGHT_FILE = re.compile(
    r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$"
)
"""Weight files and indexes `save_pretrained` writes (shards included)."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def unfinished_dir(run_dir: str, step: int) -> str:
    """The hidden folder under which the save of `step` is staged (or an old one is deleted)."""
    return os.path.join(run_dir, f".{checkpoint_name(step)}.partial")


def mark_complete(folder: str, step: int) -> None:
    """Flush everything under `folder` to disk, then record its files: the completion marker."""
    fsync_tree(folder)
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = os.path.getsize(path)
    with atomic_write(os.path.join(folder, COMPLETE_FILE)) as file:
        json.dump({"global_step": step, "files": files}, file, indent=1)


def missing_parts(folder: str) -> list[str]:
    """What keeps checkpoint `folder` from being complete (empty when it is complete)."""
    if not os.path.isdir(folder):
        return ["the folder itself"]
    marker = os.path.join(folder, COMPLETE_FILE)
    if not os.path.isfile(marker):
        if os.path.isfile(os.path.join(folder, TRAINER_STATE_FILE)):
            return []  # written before completion markers; the Trainer writes this file last
        return [f"{COMPLETE_FILE} and {TRAINER_STATE_FILE} (the save did not finish)"]
    try:
        with open(marker, encoding="utf-8") as file:
            files = json.load(file)["files"]
    except (OSError, ValueError, KeyError) as error:
        return [f"a readable {COMPLETE_FILE} ({error})"]
    missing = []
    for name, size in sorted(files.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            missing.append(name)
        elif os.path.getsize(path) != size:
            missing.append(f"{name} ({os.path.getsize(path)} of {size} bytes)")
    return missing


def publish_checkpoint(staged: str, final: str) -> None:
    """Rename the complete checkpoint `staged` to `final` (replacing an incomplete `final` left by
    an earlier run), then remove `staged`'s now empty staging folder."""
    staging = os.path.dirname(staged)
    if os.path.lexists(final):
        # A rename cannot replace a non-empty folder: move the old one aside, into the staging
        # folder, which is deleted with it.
        aside = os.path.join(staging, "replaced")
        os.replace(final, aside)
        shutil.rmtree(aside)
    os.replace(staged, final)
    fsync_dir(os.path.dirname(final))
    os.rmdir(staging)
    logger.info("Checkpoint %s is complete", final)


def remove_unfinished(run_dir: str) -> None:
    """Delete what killed saves and deletions left (`.checkpoint-N.partial` folders)."""
    if not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if UNFINISHED_NAME.match(name):
            path = os.path.join(run_dir, name)
            logger.info("Removing %s, left by an interrupted save or removal", path)
            shutil.rmtree(path, ignore_errors=True)


def remove_checkpoint(path: str) -> None:
    """Delete checkpoint folder `path`; renamed first, so a kill never leaves half of it under
    its own name."""
    step = int(CHECKPOINT_NAME.match(os.path.basename(path)).group(1))
    hidden = unfinished_dir(os.path.dirname(path), step)
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def rotate_checkpoints(run_dir: str, limit: int | None, keep: tuple[str | None, ...]) -> None:
    """Keep at most `limit` checkpoints in `run_dir`, never deleting those in `keep` (the one
    just written, the best) nor the newest; the Trainer's order (modification time)."""
    if not limit or limit <= 0:
        return
    checkpoints = sort_checkpoints(run_dir, use_mtime=True)
    protected = {os.path.abspath(path) for path in (*keep, checkpoints[-1]) if path}
    surplus = len(checkpoints) - max(limit, len(protected))
    for path in checkpoints:
        if surplus <= 0:
            break
        if os.path.abspath(path) not in protected:
            logger.info("Deleting older checkpoint %s (save_total_limit=%d)", path, limit)
            remove_checkpoint(path)
            surplus -= 1


def publish_files(staged: str, dest: str, last: str = "config.json") -> None:
    """Move the entries of folder `staged` into `dest` (a final model folder), then remove
    `staged`.

    Each entry is replaced atomically. `last` (what makes `dest` loadable) is removed from `dest`
    first and moved in last, and weight files of an earlier save that this one lacks are
    deleted, so `dest` never reads as a model mixing two saves: a kill in between leaves it
    without `last`, an error naming the missing file.
    """
    names = os.listdir(staged)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(dest, last))
    for name in os.listdir(dest):
        if WEIGHT_FILE.match(name) and name not in names:
            os.remove(os.path.join(dest, name))
    fsync_dir(dest)
    for name in sorted(names, key=lambda name: name == last):
        target = os.path.join(dest, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staged, name), target)
    os.rmdir(staged)
    fsync_dir(dest)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` (None if there is none); logs which
    one, and every incomplete checkpoint and unfinished save it passed over."""
    if not os.path.isdir(output_dir):
        return None
    names = os.listdir(output_dir)
    steps = sorted(
        (int(match.group(1)), name)
        for name in names
        if (match := CHECKPOINT_NAME.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    skipped = [
        f"{name} (an interrupted save or removal)"
        for name in sorted(names)
        if UNFINISHED_NAME.match(name)
    ]
    chosen = None
    for _, name in reversed(steps):
        missing = missing_parts(os.path.join(output_dir, name))
        if not missing:
            chosen = os.path.join(output_dir, name)
            break
        skipped.append(f"{name} (incomplete: missing {', '.join(missing)})")
    if skipped:
        logger.warning(
            "resume_from_checkpoint=auto skips in %s: %s", output_dir, "; ".join(skipped)
        )
    if chosen is not None:
        logger.info("resume_from_checkpoint=auto: resuming from %s", chosen)
    elif steps or skipped:
        logger.warning("resume_from_checkpoint=auto: no complete checkpoint; training from start")
    return chosen


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """`resume_from_checkpoint` -> the checkpoint folder to resume from, or None.

    'auto' is the newest complete checkpoint in `output_dir` (None if there is none). A path
    must be a complete checkpoint: otherwise `ValueError` naming what is missing.
    """
    if value is None:
        return None
    if value == "auto":
        return last_complete_checkpoint(output_dir)
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint: {value} is not a folder.")
    missing = missing_parts(value)
    if missing:
        raise ValueError(
            f"resume_from_checkpoint: {value} is an incomplete checkpoint (an interrupted save): "
            f"missing {', '.join(missing)}. Resume from an earlier checkpoint, or use 'auto'."
        )
    return value
