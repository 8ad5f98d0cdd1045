"""The real-size measurement scripts of docs/benchmarks.md run end to end on a tiny checkpoint
(in CI's quantization step, where torchao and llama.cpp are installed): the error of the
quantized logits (`scripts/bench/quant_error.py`) and the README's way from a plain process
(`scripts/bench/user_path_cpu.py`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import build_quantization_checkpoint, needs_torchao

needs_torchao()

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "bench"


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_quant_error_prints_the_error_table(tmp_path):
    checkpoint = build_quantization_checkpoint(str(tmp_path / "tiny"))
    output = run_script(
        "quant_error.py", checkpoint, "--quantization", "8bit", "--text-tokens", "8"
    )
    row = next(line for line in output.splitlines() if line.startswith("| 8bit |"))
    positions, mean_cosine = row.split("|")[2:4]
    assert int(positions) == 9 and 0.99 < float(mean_cosine) <= 1.0


def test_user_path_prints_load_memory_and_speed(tmp_path):
    checkpoint = build_quantization_checkpoint(str(tmp_path / "tiny"))
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 60, 3), 120, dtype=np.uint8)).save(image)
    output = run_script(
        "user_path_cpu.py",
        checkpoint,
        "--quantization",
        "4bit",
        "--image",
        str(image),
        "--repeats",
        "1",
        "--new-tokens",
        "3",
    )
    record = json.loads(output[output.index('{"quantization"') :].splitlines()[0])
    assert record["quantization"] == "4bit" and record["ttft_s"] and record["peak_rss_gib"] > 0
