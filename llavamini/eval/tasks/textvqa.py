"""TextVQA val: soft VQA accuracy with the EvalAI normaliser, scored locally.

Questions: LLaVA's `llava_textvqa_val_v051_ocr.jsonl` (question, the reference OCR tokens line
and the short-answer suffix in `text`; `question_id` is the image id there), images in
`train_images`. Labels: `TextVQA_0.5.1_val.json`. An answer is matched to its annotation by
(image id, question) as LLaVA's `eval_textvqa.py` does, else by question id; prediction and the
ten human answers go through the EvalAI normaliser, then the leave-one-out VQA accuracy.
"""

from __future__ import annotations

from llavamini.eval.metrics.vqa import textvqa_accuracy
from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    answers_by_key,
    percent,
    read_json,
    read_llava_questions,
    require,
)

OCR_LINE = "Reference OCR token"


def question_text(prompt: str) -> str:
    """The question line of a TextVQA prompt (not the OCR-token line, not the suffix)."""
    for line in prompt.split("\n"):
        line = line.strip()
        if line and not line.startswith(OCR_LINE) and line != SHORT_ANSWER:
            return line
    raise ValueError(f"No question line in the TextVQA prompt {prompt[:80]!r}.")


def score(inputs: ScoreInputs) -> dict:
    """Mean soft accuracy over the question file (missing answers score 0)."""
    questions = read_llava_questions(inputs.questions, "")
    data = read_json(inputs.annotations, "TextVQA annotation file")
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{inputs.annotations}: expected {{'data': [...]}}.")
    by_image_question, by_id = {}, {}
    for index, row in enumerate(data["data"]):
        require(row, ("question_id", "image_id", "question", "answers"), f"annotation {index}")
        by_image_question[(str(row["image_id"]), row["question"].lower())] = row
        by_id[str(row["question_id"])] = row
    answers = answers_by_key(questions, inputs.answers, inputs.questions)
    scores = []
    for question in questions:
        text = question_text(question.prompt).lower()
        label = by_image_question.get((str(question.question_id), text))
        label = label or by_id.get(str(question.question_id))
        if label is None:
            raise ValueError(
                f"{inputs.annotations}: no annotation for question_id {question.question_id!r} "
                f"({text!r})."
            )
        record = answers.get(question.key)
        scores.append(textvqa_accuracy(record["text"], label["answers"]) if record else 0.0)
    return {
        "accuracy": percent(sum(scores), len(scores)),
        "metric": "TextVQA soft accuracy (%), EvalAI normalisation",
        "count": len(scores),
        "missing": len(questions) - len(answers),
    }


TASKS = (
    Task(
        name="textvqa",
        description="TextVQA val with reference OCR tokens, soft VQA accuracy",
        benchmark="textvqa",
        questions="llava_textvqa_val_v051_ocr.jsonl",
        visual_folder="train_images",
        annotations="TextVQA_0.5.1_val.json",
        read_questions=read_llava_questions,
        score=score,
        prompt_suffix=SHORT_ANSWER,
        suffix_in_file=True,
    ),
)
