"""lmms-eval evaluates an offline local task on the tiny checkpoint through the plug-in: from the
CLI (`lmms-eval --model llava_mini ... --include_path DIR`) and from `simple_evaluate`, the
answers are `llavamini eval run`'s and the score in the results file is the one they imply; two
data-parallel processes (`accelerate launch`, gloo on CPUs) give one process's answers and
score, each question answered by exactly one of them.

The CLI exits 0 even when the evaluation raised, so the tests read the results file, not the
code. They run offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1) and without GPUs.
"""

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from llavamini.constants import SHORT_ANSWER
from tests.eval.helpers import make_image, write_jsonl
from tests.integrations.lmms_eval.conftest import require_lmms_eval

require_lmms_eval()

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from llavamini.integrations.lmms_eval import LlavaMini  # noqa: E402

EXPECTED_SCORE = 0.6  # 3 of 5 labels are the runner's answers (see the local_task fixture)

SUFFIX = SHORT_ANSWER
QUESTIONS = [
    "Which colour fills the picture?",
    "Is the picture wider than it is tall, or taller than it is wide?",
    "What is it?",
    "Describe the shade of blue in this image, if there is one, in a few words.",
    "Bright or dark?",
]
MAX_NEW_TOKENS = 6
TASK = "llavamini_local_vqa"
VISUALS_LOG = "LLAVAMINI_TEST_VISUALS_LOG"
"""The task's doc_to_visual appends `PID QUESTION_ID` to the file this variable names: the
plug-in calls it once per request it answers."""

TASK_UTILS = f'''\
"""doc_to_visual / doc_to_text of the local test task (written by the test)."""

import os

from PIL import Image


def doc_to_visual(doc):
    log = os.environ.get("{VISUALS_LOG}")
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"{{os.getpid()}} {{doc['question_id']}}\\n")
    return [Image.open(path).convert("RGB") for path in doc["images"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {{}}
    return kwargs.get("pre_prompt", "") + doc["question"] + kwargs.get("post_prompt", "")
'''


def task_yaml(data_file: str) -> str:
    """An offline lmms-eval task over a local JSONL file: exact match against `answer`."""
    return textwrap.dedent(
        f"""\
        task: {TASK}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data_file}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: {MAX_NEW_TOKENS}
          temperature: 0
          do_sample: false
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        lmms_eval_specific_kwargs:
          default:
            pre_prompt: ""
            post_prompt: "\\n{SUFFIX}"
        """
    )


@pytest.fixture(scope="session")
def local_images(tmp_path_factory):
    """Five images of different sizes and colours, drawn here."""
    folder = tmp_path_factory.mktemp("images")
    return [
        make_image(folder / f"img{i}.jpg", size=(30 + 9 * i, 50 - 4 * i), colour=(50 * i, 90, 200))
        for i in range(len(QUESTIONS))
    ]


@pytest.fixture(scope="session")
def runner_answers(local_images, tiny_loaded, tmp_path_factory):
    """`llavamini eval run`'s answers (question id -> text) to the five questions: GQA's
    reader, its suffix in the question file, greedy, batch size 1."""
    from llavamini.eval.answers import read_answers
    from llavamini.eval.runner import RunConfig, run_questions
    from llavamini.eval.tasks import get_task
    from llavamini.inference import GenerationSettings, InputSettings
    from llavamini.model.loading import ModelSpec

    root = tmp_path_factory.mktemp("runner")
    rows = [
        {"question_id": f"q{i}", "image": image, "text": f"{question}\n{SUFFIX}"}
        for i, (question, image) in enumerate(zip(QUESTIONS, local_images, strict=True))
    ]
    config = RunConfig(
        task=get_task("gqa"),
        model=ModelSpec("tiny", device="cpu", dtype="float32"),
        inputs=InputSettings(conv_mode=tiny_loaded.processor.conv_mode),
        answers_file=str(root / "answers.jsonl"),
        questions_file=write_jsonl(root / "questions.jsonl", rows),
        visual_folder="/",
        generation=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS),
        num_workers=0,
    )
    run_questions(config, loaded=tiny_loaded)
    return {record["question_id"]: record["text"] for record in read_answers(config.answers_file)}


@pytest.fixture(scope="session")
def local_task(local_images, runner_answers, tmp_path_factory):
    """An lmms-eval task folder (YAML + utils.py) over a local JSONL of the five questions.

    Questions 0, 2 and 4 are labelled with the runner's answer and 1 and 3 with a word the
    model never says, so an evaluation whose answers equal the runner's scores exactly 0.6.
    """
    folder = tmp_path_factory.mktemp("lmms_task")
    rows = []
    for i, (question, image) in enumerate(zip(QUESTIONS, local_images, strict=True)):
        answer = runner_answers[f"q{i}"] if i % 2 == 0 else "not-an-answer"
        rows.append({"question_id": f"q{i}", "images": [image], "question": question,
                     "answer": answer})  # fmt: skip
    data_file = write_jsonl(folder / "questions.jsonl", rows)
    (folder / f"{TASK}.yaml").write_text(task_yaml(data_file), encoding="utf-8")
    (folder / "utils.py").write_text(TASK_UTILS, encoding="utf-8")
    return folder


def _one(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {paths}"
    return paths[0]


def _sample_answers(samples: list[dict]) -> dict[str, str]:
    """question id -> the model's answer, from lmms-eval's logged samples (doc i is question
    `qi`; the samples file holds the response as a string, `simple_evaluate` as a list)."""
    answers = {}
    for sample in samples:
        response = sample["filtered_resps"]
        answers[f"q{sample['doc_id']}"] = response if isinstance(response, str) else response[0]
    return answers


ONE_PROCESS = ["lmms-eval"]
TWO_PROCESSES = [
    "accelerate", "launch",
    # --multi_gpu starts the processes (torch's elastic launcher) also on a machine without
    # GPUs, where they join a gloo group; port 0: a free one (CI runs tests side by side).
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
    "--mixed_precision", "no", "--dynamo_backend", "no",
    "-m", "lmms_eval",
]  # fmt: skip


@dataclass
class CliRun:
    """What one lmms-eval command left: its score, its per-sample answers (question id ->
    text), the doc ids of its samples file, and `(pid, question id)` per answered request."""

    score: float
    answers: dict[str, str]
    sample_doc_ids: list[int]
    answered: list[tuple[str, str]]


def run_cli(launcher: list[str], checkpoint: str, task_folder: Path, folder: Path) -> CliRun:
    """Evaluate the local task with the tiny checkpoint (batch size 2 per process), offline and
    on CPUs, under `launcher` (the venv's `lmms-eval`, or `accelerate launch ... -m lmms_eval`)."""
    output, visuals_log = folder / "out", folder / "visuals.log"
    command = [
        str(Path(sys.executable).with_name(launcher[0])), *launcher[1:],
        "--model", "llava_mini",
        "--model_args", f"pretrained={checkpoint},device=cpu,dtype=float32,batch_size=2",
        "--tasks", TASK,
        "--include_path", str(task_folder),
        "--output_path", str(output),
        "--log_samples",
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(folder / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        VISUALS_LOG: str(visuals_log),
    }
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    log = completed.stdout[-3000:] + completed.stderr[-6000:]
    results_path = _one(sorted(output.rglob("*_results.json")), f"results file\n{log}")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    samples_path = _one(sorted(output.rglob(f"*_samples_{TASK}.jsonl")), "samples file")
    samples = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines()]
    answered = [
        tuple(line.split()) for line in visuals_log.read_text(encoding="utf-8").splitlines()
    ]
    return CliRun(
        score=results["results"][TASK]["exact_match,none"],
        answers=_sample_answers(samples),
        sample_doc_ids=[sample["doc_id"] for sample in samples],
        answered=answered,
    )


@pytest.fixture(scope="module")
def one_process_run(tiny_checkpoint, local_task, tmp_path_factory) -> CliRun:
    return run_cli(ONE_PROCESS, tiny_checkpoint, local_task, tmp_path_factory.mktemp("one"))


def _each_question_once(run: CliRun) -> None:
    assert sorted(run.sample_doc_ids) == list(range(len(QUESTIONS)))
    assert Counter(question for _, question in run.answered) == Counter(
        f"q{i}" for i in range(len(QUESTIONS))
    )


def test_cli_answers_equal_the_runner_and_score_is_read_from_the_results_file(
    one_process_run, runner_answers
):
    assert len(set(runner_answers.values())) > 1  # the images matter: the check is meaningful
    assert one_process_run.score == EXPECTED_SCORE
    assert one_process_run.answers == runner_answers
    _each_question_once(one_process_run)


def test_two_processes_answer_and_score_as_one_each_question_once(
    one_process_run, tiny_checkpoint, local_task, tmp_path
):
    two = run_cli(TWO_PROCESSES, tiny_checkpoint, local_task, tmp_path)
    assert two.answers == one_process_run.answers
    assert two.score == one_process_run.score
    _each_question_once(two)
    shards = {pid: {q for p, q in two.answered if p == pid} for pid, _ in two.answered}
    assert len(shards) == 2, f"expected two processes to answer, got {shards}"


def test_simple_evaluate_answers_equal_the_runner_at_any_batch_size(
    tiny_loaded, local_task, runner_answers
):
    task_manager = TaskManager(include_path=str(local_task))
    for batch_size in (1, 3):
        model = LlavaMini(loaded=tiny_loaded, batch_size=batch_size)
        evaluation = simple_evaluate(
            model=model, tasks=[TASK], task_manager=task_manager, log_samples=True
        )
        assert evaluation["results"][TASK]["exact_match,none"] == EXPECTED_SCORE
        assert _sample_answers(evaluation["samples"][TASK]) == runner_answers
