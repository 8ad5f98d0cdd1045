"""scripts/eval/*.sh: one process per visible GPU, merge, score (two CPU processes here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavamini.eval.answers import read_answers
from llavamini.eval.tasks.gqa import convert_prediction
from tests.eval.helpers import make_image, write_json, write_jsonl

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "eval"


def test_every_wrapper_calls_run_benchmark_with_its_task():
    from llavamini.eval.tasks import TASKS

    wrappers = {path.name: path.read_text() for path in SCRIPTS.glob("*.sh")}
    assert {"run_benchmark.sh", "vqav2.sh", "gqa.sh", "mmbench.sh", "msvd.sh"} <= set(wrappers)
    for name, text in wrappers.items():
        if name == "run_benchmark.sh":
            continue
        task = text.split('run_benchmark.sh" ')[1].split()[0]
        assert task in TASKS, f"{name} runs unknown task {task!r}"


@pytest.mark.slow
def test_run_benchmark_shards_merges_and_scores(tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    images = root / "gqa" / "data" / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(5):
        make_image(images / f"{i}.jpg", size=(20 + 7 * i, 30), colour=(40 * i, 0, 90))
        rows.append({"question_id": f"q{i}", "image": f"{i}.jpg", "text": f"what is {i}?"})
    write_jsonl(root / "gqa" / "llava_gqa_testdev_balanced.jsonl", rows)
    labels = {f"q{i}": {"answer": "yes"} for i in range(5)}
    write_json(root / "gqa" / "data" / "testdev_balanced_questions.json", labels)
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="0,1",
        DATA_ROOT=str(root),
        OUTPUT_DIR=str(tmp_path / "out"),
        PYTHON=sys.executable,
    )
    completed = subprocess.run(
        [
            "bash",
            str(SCRIPTS / "gqa.sh"),
            tiny_checkpoint,
            "--max-new-tokens",
            "4",
            "--dtype",
            "float32",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)  # stdout is the score JSON alone
    answers = read_answers(str(tmp_path / "out" / "answers.jsonl"))
    assert sorted(r["question_id"] for r in answers) == [f"q{i}" for i in range(5)]
    assert {r["metadata"]["chunk"] for r in answers} == {"0/2", "1/2"}
    right = sum(convert_prediction(r["text"]) == "yes" for r in answers)
    assert result["accuracy"] == 100 * right / 5
