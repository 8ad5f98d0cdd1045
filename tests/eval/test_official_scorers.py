"""Every scorer against numbers computed by the benchmark's official code.

Each folder under `tests/fixtures/scoring/` holds benchmark-format inputs, `expected.json`
(the official code's overall number and per-item values) and a README naming the repository,
commit and command that produced them. The scorer runs through `llavamini eval score`.
"""

import argparse
import json
import shutil
from pathlib import Path

import pytest

from llavamini.eval.cli import add_commands, compute_score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scoring"


def _score(task: str, fixture: str, tmp_path: Path, *flags: str, **files: str) -> dict:
    """`llavamini eval score TASK` on a fixture copied to `tmp_path`.

    Args:
        files: `questions=` / `annotations=` file names inside the fixture.
        flags: further command-line flags.
    """
    folder = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, folder)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="eval_command", required=True))
    arguments = ["score", task, "--answers", str(folder / "answers.jsonl"), *flags]
    for name, file in files.items():
        arguments += [f"--{name}", str(folder / file)]
    return compute_score(parser.parse_args(arguments))


def _expected(fixture: str) -> dict:
    return json.loads((FIXTURES / fixture / "expected.json").read_text(encoding="utf-8"))


def _items(result: dict) -> dict:
    return json.loads(Path(result["items"]).read_text(encoding="utf-8"))


def test_vqav2_val_equals_vqaeval_after_the_evalai_processor(tmp_path):
    result = _score(
        "vqav2_val",
        "vqav2_val",
        tmp_path,
        questions="questions.json",
        annotations="annotations.json",
    )
    expected = _expected("vqav2_val")
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert result["per_answer_type"] == expected["per_answer_type"]
    assert result["per_question_type"] == expected["per_question_type"]
    assert _items(result) == expected["items"]
    assert result["scorer"][-1]["repository"] == "GT-Vision-Lab/VQA"
