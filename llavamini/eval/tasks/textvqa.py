"""TextVQA val: soft VQA accuracy with the EvalAI normaliser, scored locally.

Questions: LLaVA's `llava_textvqa_val_v051_ocr.jsonl` (question, the reference OCR tokens line
and the short-answer suffix in `text`; `question_id` is the image id there), images in
`train_images`. Labels: `TextVQA_0.5.1_val.json`. Scoring reproduces LLaVA's
`eval_textvqa.py` (`LLAVA_EVAL_TEXTVQA`): each answer is matched to its annotation by (image
id = the answer's question_id, lower-cased question read from the answer's prompt);
prediction and the ten human answers go through the EvalAI processor, then the leave-one-out
VQA accuracy; the accuracy is the mean over the answer file's lines (unanswered questions are
not counted, only reported as `missing`), unrounded. Per-answer scores go to
`<prefix>.items.json`, keyed by `answer_key(question_id, prompt)`.
"""

from __future__ import annotations

import re

from llavamini.eval.answers import record_key
from llavamini.eval.metrics.vqa import textvqa_accuracy
from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    answers_by_key,
    read_json,
    read_llava_questions,
    require,
    write_json,
)

LLAVA_EVAL_TEXTVQA = {
    "repository": "haotian-liu/LLaVA",
    "file": "llava/eval/eval_textvqa.py, llava/eval/m4c_evaluator.py (TextVQAAccuracyEvaluator)",
    "commit": "c121f0432da27facab705978f83c4ada465e46fd",
}

_OCR_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_text(prompt: str) -> str:
    """The lower-cased question of an answer's prompt, as `eval_textvqa.py` finds it: after
    "Question: " in an "OCR tokens: " prompt; the line that is not the OCR line in a three-line
    prompt with a "Reference OCR token: " line; the first line of a two-line prompt."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_PROMPT.search(prompt)
        if match is None:
            raise ValueError(f"No 'Question: ... Short answer:' in the prompt {prompt[:80]!r}.")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"Not a TextVQA prompt LLaVA's scorer can read: {prompt[:80]!r}.")
    return question.lower()


def score(inputs: ScoreInputs) -> dict:
    """Mean soft accuracy over the answer file, as `eval_textvqa.py` averages it."""
    questions = read_llava_questions(inputs.questions, "")
    data = read_json(inputs.annotations, "TextVQA annotation file")
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{inputs.annotations}: expected {{'data': [...]}}.")
    labels = {}
    for index, row in enumerate(data["data"]):
        require(row, ("image_id", "question", "answers"), f"annotation {index}")
        labels[(row["image_id"], row["question"].lower())] = row
    answered = answers_by_key(questions, inputs.answers, inputs.questions)
    scores, items = [], {}
    for record in inputs.answers:
        key = (record["question_id"], question_text(record["prompt"]))
        if key not in labels:
            raise ValueError(
                f"{inputs.annotations}: no annotation for image {key[0]!r} and question "
                f"{key[1]!r} (LLaVA's question files use the image id as question_id)."
            )
        scores.append(textvqa_accuracy(record["text"], labels[key]["answers"]))
        items[record_key(record)] = scores[-1]
    return {
        "accuracy": 100.0 * (sum(scores) / len(scores)) if scores else None,
        "metric": "TextVQA soft accuracy (%) over the answers, EvalAI normalisation",
        "scorer": [LLAVA_EVAL_TEXTVQA],
        "count": len(scores),
        "missing": len(questions) - len(answered),
        "items": write_json(inputs.output_prefix + ".items.json", items),
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
