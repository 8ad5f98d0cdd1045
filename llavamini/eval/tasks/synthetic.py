"""The quickstart's synthetic shapes data: held-out exact match per question type.

Questions: `val_questions.jsonl` written by `llavamini.apps.synthetic.write_dataset` (LLaVA's
question schema plus `answer` and `question_type`), images beside it. The prediction and the
answer go through the VQA normaliser; the majority baseline (the most frequent answer of each
question type, always given) is reported beside the accuracy, since a constant answer already
scores on yes/no and count questions.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from llavamini.eval.metrics.vqa import normalize_answer
from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    answers_by_id,
    percent,
    read_jsonl,
    read_llava_questions,
    require,
    warn_missing,
)


def score(inputs: ScoreInputs) -> dict:
    """Overall and per-type accuracy, with each type's majority-answer baseline."""
    rows = read_jsonl(inputs.questions, "synthetic question file")
    for number, row in enumerate(rows, start=1):
        require(row, ("question_id", "answer", "question_type"), f"{inputs.questions}:{number}")
    answers = answers_by_id(inputs.answers)
    by_type: dict[str, list[bool]] = defaultdict(list)
    labels_by_type: dict[str, list[str]] = defaultdict(list)
    missing = 0
    for row in rows:
        record = answers.get(str(row["question_id"]))
        missing += record is None
        predicted = normalize_answer(record["text"]) if record else None
        by_type[row["question_type"]].append(predicted == normalize_answer(row["answer"]))
        labels_by_type[row["question_type"]].append(row["answer"])
    warn_missing(missing, len(rows))
    majority = {
        kind: percent(Counter(labels).most_common(1)[0][1], len(labels))
        for kind, labels in labels_by_type.items()
    }
    correct = [hit for hits in by_type.values() for hit in hits]
    return {
        "accuracy": percent(sum(correct), len(correct)),
        "metric": "exact match after VQA normalisation, %",
        "scorer": [
            {
                "repository": "this project (no official scorer: the data is generated here)",
                "file": "llavamini/eval/tasks/synthetic.py",
                "commit": None,
            }
        ],
        "per_type": {kind: percent(sum(hits), len(hits)) for kind, hits in sorted(by_type.items())},
        "majority_baseline": dict(sorted(majority.items())),
        "questions": len(rows),
        "missing": missing,
    }


TASKS = (
    Task(
        name="synthetic",
        description="quickstart shapes data: held-out exact match per question type",
        benchmark="synthetic",
        questions="val_questions.jsonl",
        visual_folder="",
        annotations=None,
        read_questions=read_llava_questions,
        score=score,
        prompt_suffix=SHORT_ANSWER,
        max_new_tokens=8,
    ),
)
