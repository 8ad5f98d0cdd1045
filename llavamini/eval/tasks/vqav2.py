"""VQAv2: test-dev answers for the EvalAI server, and local scoring on val.

- `vqav2` answers LLaVA's `llava_vqav2_mscoco_test-dev2015.jsonl` (the short-answer suffix is in
  the file). Scoring writes the EvalAI upload file: every question of the full test split
  (`llava_vqav2_mscoco_test2015.jsonl`) with its answer through the EvalAI answer normaliser,
  "" for questions not answered (test-standard ones). Test labels are private: no local number.
- `vqav2_val` answers the official `v2_OpenEnded_mscoco_val2014_questions.json` (or any subset
  in that format) with the suffix appended, and scores locally against
  `v2_mscoco_val2014_annotations.json`: each answer goes through the same EvalAI normaliser as
  an upload would, then the official VQA accuracy, overall, per answer type and per question
  type.
"""

from __future__ import annotations

import os
from collections import defaultdict

from llavamini.eval.metrics.vqa import normalize_for_submission, vqa_accuracy
from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    Question,
    ScoreInputs,
    Task,
    answers_by_id,
    percent,
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


def _check_known(by_id: dict, known: set, source: str) -> None:
    unknown = [qid for qid in by_id if qid not in known]
    if unknown:
        raise ValueError(
            f"{len(unknown)} answered question ids are not in {source} (first: {unknown[0]!r}): "
            f"wrong --questions file?"
        )


def score_test_dev(inputs: ScoreInputs) -> dict:
    """Write the EvalAI upload file; no local accuracy (the labels are private)."""
    split = read_llava_questions(inputs.questions, "")
    by_id = answers_by_id(inputs.answers)
    _check_known(by_id, {str(q.question_id) for q in split}, inputs.questions)
    upload = []
    for question in split:
        record = by_id.get(str(question.question_id))
        answer = normalize_for_submission(record["text"]) if record else ""
        upload.append({"question_id": question.question_id, "answer": answer})
    path = write_json(inputs.output_prefix + ".vqav2_submission.json", upload)
    return {
        "accuracy": None,
        "metric": "VQA accuracy (%), computed by the EvalAI server from the submission file",
        "submission": path,
        "answered": len(by_id),
        "questions_in_submission": len(upload),
    }


def score_val(inputs: ScoreInputs) -> dict:
    """Official VQA accuracy on val (or a subset), overall and per answer / question type."""
    questions = read_official_questions(inputs.questions, "")
    annotations = read_json(inputs.annotations, "VQAv2 annotation file")
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise ValueError(f"{inputs.annotations}: expected {{'annotations': [...]}}.")
    labels = {str(row["question_id"]): row for row in annotations["annotations"]}
    by_id = answers_by_id(inputs.answers)
    _check_known(by_id, {str(q.question_id) for q in questions}, inputs.questions)
    per_answer_type, per_question_type = defaultdict(list), defaultdict(list)
    scores, upload, missing = [], [], 0
    for question in questions:
        qid = str(question.question_id)
        if qid not in labels:
            raise ValueError(f"{inputs.annotations}: no annotation for question_id {qid}.")
        label = labels[qid]
        require(label, ("answers", "answer_type", "question_type"), f"annotation {qid}")
        record = by_id.get(qid)
        if record is None:
            missing += 1
            accuracy = 0.0
        else:
            answer = normalize_for_submission(record["text"])
            upload.append({"question_id": question.question_id, "answer": answer})
            accuracy = vqa_accuracy(answer, [a["answer"] for a in label["answers"]])
        scores.append(accuracy)
        per_answer_type[label["answer_type"]].append(accuracy)
        per_question_type[label["question_type"]].append(accuracy)
    warn_missing(missing, len(questions))
    return {
        "accuracy": percent(sum(scores), len(scores)),
        "metric": "VQA accuracy (%): min(#humans agreeing / 3, 1) over 10 leave-one-out subsets",
        "per_answer_type": {k: percent(sum(v), len(v)) for k, v in sorted(per_answer_type.items())},
        "per_question_type": {
            k: percent(sum(v), len(v)) for k, v in sorted(per_question_type.items())
        },
        "count": len(scores),
        "missing": missing,
        "submission": write_json(inputs.output_prefix + ".vqav2_submission.json", upload),
    }


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
