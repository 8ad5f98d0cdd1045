"""Reading LLaVA-format manifests: JSON lists, JSONL, and the reference's YAML mixtures.

A mixture file lists `datasets: [{json_path, sampling_strategy}]` with `sampling_strategy` one
of `all`, `first:N`, `end:N`, `random:N` or `N%` (a random N percent), drawn with a seed so the
same mixture always gives the same samples. Each record is tagged with the image folder its
media are relative to (`_folder`) and the file it came from (`_source`), for error messages.
"""

from __future__ import annotations

import json
import os
import random
import re

import yaml


def read_manifest(path: str) -> list[dict]:
    """The records of one JSON list or JSONL file; errors name the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data file not found: {path}")
    try:
        return _read_manifest(path)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not valid UTF-8 (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}): save the file as UTF-8."
        ) from error


def _read_manifest(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            records = []
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number}: not valid JSON ({error}).") from error
            return records
        try:
            records = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}.")
    return records


def sample_records(records: list[dict], strategy: str, rng: random.Random, source: str) -> list:
    """Apply one `sampling_strategy` to the records of `source`."""
    strategy = str(strategy).strip()
    if strategy == "all":
        return records
    if match := re.fullmatch(r"(first|end|random):(\d+)", strategy):
        kind, count = match.group(1), int(match.group(2))
        if kind == "first":
            return records[:count]
        if kind == "end":
            return records[-count:] if count else []
        return rng.sample(records, min(count, len(records)))
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)%", strategy):
        count = int(len(records) * float(match.group(1)) / 100)
        return rng.sample(records, count)
    raise ValueError(
        f"{source}: sampling_strategy {strategy!r} is not one of all, first:N, end:N, random:N, N%."
    )


def read_mixture(path: str, seed: int) -> list[tuple[dict, str]]:
    """Records of a YAML mixture with the file each came from."""
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), list):
        raise ValueError(
            f"{path}: a mixture needs a 'datasets' list of {{json_path, sampling_strategy}}."
        )
    rng = random.Random(seed)
    out = []
    for number, entry in enumerate(spec["datasets"]):
        if not isinstance(entry, dict) or "json_path" not in entry:
            raise ValueError(f"{path}: datasets[{number}] needs a 'json_path'.")
        source = entry["json_path"]
        records = read_manifest(source)
        picked = sample_records(records, entry.get("sampling_strategy", "all"), rng, source)
        out += [(record, source) for record in picked]
    return out


def load_records(data_paths: list[str], image_folders: list[str], seed: int = 0) -> list[dict]:
    """All records of `data_paths` (JSON, JSONL or YAML mixtures), each paired with the image
    folder at the same position, tagged with `_folder` and `_source`."""
    if len(data_paths) != len(image_folders):
        raise ValueError(
            f"Got {len(data_paths)} data files but {len(image_folders)} image folders: give one "
            f"image folder per data file."
        )
    records = []
    for path, folder in zip(data_paths, image_folders, strict=True):
        if path.endswith((".yaml", ".yml")):
            tagged = read_mixture(path, seed)
        else:
            tagged = [(record, path) for record in read_manifest(path)]
        for number, (record, source) in enumerate(tagged):
            if not isinstance(record, dict):
                raise ValueError(f"{source}: sample {number} is not a JSON object.")
            records.append({**record, "_folder": folder, "_source": source})
    return records
