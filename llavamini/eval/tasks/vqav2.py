"""VQAv2: test-dev answers for the EvalAI server, and local scoring on val.

- `vqav2` answers LLaVA's `llava_vqav2_mscoco_test-dev2015.jsonl` (the short-answer suffix is in
  the file). Scoring writes the EvalAI upload file: every question of the full test split
  (`llava_vqav2_mscoco_test2015.jsonl`) with its answer through the EvalAI answer normaliser,
  "" for questions not answered (test-standard ones). Test labels are private: no local number.
- `vqav2_val` answers the official `v2_OpenEnded_mscoco_val2014_questions.json` (or any subset
  in that format) with the suffix appended, and scores locally against
  `v2_mscoco_val2014_annotations.json` as a submission would be scored: each answer goes
  through the same EvalAI processor as an upload (LLaVA's `convert_vqav2_for_submission.py`),
  then `vqaEval.py` (GT-Vision-Lab/VQA, current commit), overall, per answer type and per
  question type, rounded as that script rounds.
"""

from __future__ import annotations

import os
from collections import defaultdict

from llavamini.eval.metrics.vqa import (
    EVALAI_PROCESSOR,
    VQA_EVAL,
    normalize_for_submission,
    round_half_away,
    vqa_accuracy,
)
from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    Question,
    ScoreInputs,
    Task,
    answers_by_id,
    check_known,
    read_json,
    read_llava_questions,
    require,
    warn_missing,
    write_json,
)


def read_official_questions(path: str, image_folder: str) -> list[Question]:
    """Official VQA question JSON -> questions on `COCO_val2014_<image_id:012d>.jpg`."""
    data = read_json(path, "VQAv2 question file")
    if not isinstance(data, dict) or "questions" not in data:
        raise ValueError(f"{path}: expected the official format {{'questions': [...]}}.")
    split = data.get("data_subtype", "val2014")
    questions = []
    for index, row in enumerate(data["questions"]):
        require(row, ("question_id", "image_id", "question"), f"{path}, questions[{index}]")
        image = os.path.join(image_folder, f"COCO_{split}_{int(row['image_id']):012d}.jpg")
        questions.append(Question(row["question_id"], row["question"], image))
    return questions


def score_test_dev(inputs: ScoreInputs) -> dict:
    """Write the EvalAI upload file; no local accuracy (the labels are private)."""
    split = read_llava_questions(inputs.questions, "")
    by_id = answers_by_id(inputs.answers)
    check_known(by_id, {str(q.question_id) for q in split}, inputs.questions, "--questions")
    upload = []
    for question in split:
        record = by_id.get(str(question.question_id))
        answer = normalize_for_submission(record["text"]) if record else ""
        upload.append({"question_id": question.question_id, "answer": answer})
    path = write_json(inputs.output_prefix + ".vqav2_submission.json", upload)
    return {
        "accuracy": None,
        "metric": "VQA accuracy (%), computed by the EvalAI server from the submission file",
        "scorer": [EVALAI_PROCESSOR],
        "submission": path,
        "answered": len(by_id),
        "questions_in_submission": len(upload),
    }


def _label_rows(path: str, question_ids: set[str]) -> list[dict]:
    """The annotations of `question_ids`, in the annotation file's order (the order in which
    `vqaEval.py` sums, which can matter in the last bit before rounding)."""
    annotations = read_json(path, "VQAv2 annotation file")
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise ValueError(f"{path}: expected {{'annotations': [...]}}.")
    rows = [row for row in annotations["annotations"] if str(row["question_id"]) in question_ids]
    found = {str(row["question_id"]) for row in rows}
    if found != question_ids:
        qid = sorted(question_ids - found)[0]
        raise ValueError(f"{path}: no annotation for question_id {qid}.")
    for row in rows:
        require(
            row, ("answers", "answer_type", "question_type"), f"annotation {row['question_id']}"
        )
    return rows


def score_val(inputs: ScoreInputs) -> dict:
    """`vqaEval.py` on the EvalAI-processed answers: overall, per answer and question type.

    As a submission: every question of the question file gets its answer through the EvalAI
    processor, "" when unanswered. Percentages are rounded as `vqaEval.py` rounds them; the
    per-question accuracies (also rounded so) go to `<prefix>.items.json`.
    """
    questions = read_official_questions(inputs.questions, "")
    by_id = answers_by_id(inputs.answers)
    question_ids = {str(q.question_id) for q in questions}
    check_known(by_id, question_ids, inputs.questions, "--questions")
    submitted = {
        qid: normalize_for_submission(by_id[qid]["text"]) if qid in by_id else ""
        for qid in question_ids
    }
    per_answer_type, per_question_type = defaultdict(list), defaultdict(list)
    scores, items = [], {}
    for label in _label_rows(inputs.annotations, question_ids):
        qid = str(label["question_id"])
        accuracy = vqa_accuracy(submitted[qid], label["answers"])
        scores.append(accuracy)
        per_answer_type[label["answer_type"]].append(accuracy)
        per_question_type[label["question_type"]].append(accuracy)
        items[qid] = round_half_away(100 * accuracy)
    missing = len(question_ids) - len(by_id)
    warn_missing(missing, len(questions))
    upload = [
        {"question_id": q.question_id, "answer": submitted[str(q.question_id)]} for q in questions
    ]
    return {
        "accuracy": _official_percent(scores),
        "metric": "VQA accuracy (%): min(#humans agreeing / 3, 1) over 10 leave-one-out subsets",
        "scorer": [EVALAI_PROCESSOR, VQA_EVAL],
        "per_answer_type": {k: _official_percent(v) for k, v in sorted(per_answer_type.items())},
        "per_question_type": {
            k: _official_percent(v) for k, v in sorted(per_question_type.items())
        },
        "count": len(scores),
        "missing": missing,
        "items": write_json(inputs.output_prefix + ".items.json", items),
        "submission": write_json(inputs.output_prefix + ".vqav2_submission.json", upload),
    }


def _official_percent(accuracies: list[float]) -> float:
    """100 * mean, computed and rounded the way `vqaEval.py` does."""
    return round_half_away(100 * float(sum(accuracies)) / len(accuracies))


TASKS = (
    Task(
        name="vqav2",
        description="VQAv2 test-dev (EvalAI submission file; labels are private)",
        benchmark="vqav2",
        questions="llava_vqav2_mscoco_test-dev2015.jsonl",
        visual_folder="test2015",
        annotations=None,
        read_questions=read_llava_questions,
        score=score_test_dev,
        prompt_suffix=SHORT_ANSWER,
        suffix_in_file=True,
        score_questions="llava_vqav2_mscoco_test2015.jsonl",
    ),
    Task(
        name="vqav2_val",
        description="VQAv2 val, scored locally with the official VQA accuracy",
        benchmark="vqav2",
        questions="v2_OpenEnded_mscoco_val2014_questions.json",
        visual_folder="val2014",
        annotations="v2_mscoco_val2014_annotations.json",
        read_questions=read_official_questions,
        score=score_val,
        prompt_suffix=SHORT_ANSWER,
        suffix_in_file=False,
    ),
)
