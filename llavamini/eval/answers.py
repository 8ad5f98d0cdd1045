"""Answer files: LLaVA's answer JSONL, written so that a killed run can always be resumed.

One JSON object per line: `question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`
(plus task-specific fields, e.g. MMBench's `round_id`, `options`, `option_char`). `metadata`
records how the answer was produced (checkpoint, template, prompt prefix and suffix, decoding
settings), so every line is self-describing, also after shards are merged.

A question is identified by `answer_key(question_id, prompt)`: MME, for one, asks two questions
about each image under the same `question_id`.

Crash safety: lines are appended with one `write`, then flushed and fsync'ed, one line at a
time, so a killed run leaves complete lines and at most one partial last line (no newline, or
not valid JSON). Readers drop that partial line (and `prepare_for_resume` cuts it off the file);
a bad line anywhere else is corruption and raises.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

from llavamini.utils.atomic import atomic_write

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("question_id", "prompt", "text", "answer_id", "model_id", "metadata")


def answer_key(question_id: int | str, prompt: str) -> str:
    """The identity of a question within a task: its id and its prompt."""
    return json.dumps([question_id, prompt], ensure_ascii=False)


def record_key(record: dict) -> str:
    return answer_key(record["question_id"], record["prompt"])


def _parse_lines(path: str) -> tuple[list[dict], int, bool]:
    """The complete records of `path`, the byte size of the complete lines, and whether a
    partial last line follows them."""
    with open(path, "rb") as file:
        data = file.read()
    records, offset = [], 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        if is_last:
            # After the final newline: empty for a clean file, else a write that was cut short.
            return records, offset, bool(line.strip())
        if not line.strip():
            offset += len(line) + 1
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if number == len(lines) - 1 and not lines[-1]:
                # A newline-terminated but invalid last line: also a cut-short write
                # (e.g. the file system kept the length but not the data).
                return records, offset, True
            raise ValueError(
                f"{path}, line {number}: not a JSON answer record ({error})."
            ) from error
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise ValueError(f"{path}, line {number}: answer record lacks fields {missing}.")
        records.append(record)
        offset += len(line) + 1
    return records, offset, False


def read_answers(path: str) -> list[dict]:
    """Every complete answer record of `path`, in file order.

    A partial last line is dropped with a warning; duplicate questions raise (answers from two
    runs were mixed).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Answer file not found: {path}")
    records, _, partial = _parse_lines(path)
    if partial:
        logger.warning("%s ends with a partial line (an interrupted write); ignoring it.", path)
    check_unique(records, path)
    return records


def check_unique(records: Iterable[dict], source: str) -> None:
    """Raise naming the first question answered twice."""
    seen = set()
    for record in records:
        key = record_key(record)
        if key in seen:
            raise ValueError(
                f"{source}: question_id {record['question_id']!r} (prompt "
                f"{record['prompt'][:60]!r}) is answered more than once."
            )
        seen.add(key)


def prepare_for_resume(path: str) -> list[dict]:
    """The answers already in `path` (none if it does not exist), after cutting off a partial
    last line left by a killed run so that appending continues on a clean line."""
    if not os.path.isfile(path):
        return []
    records, size, partial = _parse_lines(path)
    if partial:
        logger.warning(
            "%s ends with a partial line from an interrupted run; removing it (that question "
            "is answered again).",
            path,
        )
        with open(path, "r+b") as file:
            file.truncate(size)
            file.flush()
            os.fsync(file.fileno())
    check_unique(records, path)
    return records


class AnswerWriter:
    """Appends answer records to a file, each durably on disk before the next is written."""

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def run_settings(records: Sequence[dict]) -> list[dict]:
    """The distinct `metadata["settings"]` found in `records` (one for a consistent file)."""
    distinct: list[dict] = []
    for record in records:
        settings = record.get("metadata", {}).get("settings")
        if settings is not None and settings not in distinct:
            distinct.append(settings)
    return distinct


RENAMED_SETTINGS = {"fps": "video_fps", "max_frames": "video_max_frames"}
"""Record keys written by earlier versions -> their names now (the `InputSettings` fields)."""


def settings_differences(recorded: dict, current: dict) -> dict[str, tuple]:
    """`{key: (recorded value, current value)}` for each setting that differs between two
    `metadata["settings"]`, a nested key dotted (`generation.top_p`). A key that only one of
    them has is no difference: a record written before a setting was recorded (before
    `model` and the image tasks' `video_fps` / `video_max_frames`) resumes and merges with
    newer ones. Keys of `RENAMED_SETTINGS` are compared under their names now."""
    recorded, current = _current_names(recorded), _current_names(current)
    changed = {}
    for key in recorded.keys() & current.keys():
        old, new = recorded[key], current[key]
        if isinstance(old, dict) and isinstance(new, dict):
            inner = settings_differences(old, new)
            changed.update({f"{key}.{name}": values for name, values in inner.items()})
        elif old != new:
            changed[key] = (old, new)
    return changed


def _current_names(settings: dict) -> dict:
    return {RENAMED_SETTINGS.get(key, key): value for key, value in settings.items()}


def merge_answer_files(inputs: Sequence[str], output: str) -> int:
    """Concatenate shard answer files into `output` (written atomically); returns the count.

    Raises when a question is answered in two inputs or when the inputs were produced with
    different settings (different checkpoints, templates or decoding).
    """
    records = []
    for path in inputs:
        records.extend(read_answers(path))
    check_unique(records, f"merge of {list(inputs)}")
    settings = run_settings(records)
    for index, first in enumerate(settings):
        for second in settings[index + 1 :]:
            changed = settings_differences(first, second)
            if changed:
                raise ValueError(
                    f"The answer files {list(inputs)} were produced with different settings: "
                    f"{changed}."
                )
    with atomic_write(output) as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
