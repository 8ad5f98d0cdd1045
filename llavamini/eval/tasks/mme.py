"""MME: perception and cognition scores from the benchmark's own yes/no labels.

Questions: LLaVA's `llava_mme.jsonl` (`question_id` = `<category>/<image file>`, two questions
per image, so answers are told apart by their prompt), images and labels in
`MME_Benchmark_release_version/<category>/` (labels: `<image stem>.txt` files, one
`question<TAB>Yes|No` line per question, in the category folder or in its
`questions_answers_YN/`).

Scoring reproduces LLaVA's `convert_answer_to_mme.py` followed by the MME tool's
`calculation.py` (`MME_CALCULATION`): each answer's label is found by category, label file
(the image name up to its first dot, + ".txt") and question (suffix rules in
`label_key_question`); a prediction is parsed as `calculation.py` does: lower-cased;
"yes"/"no" as is, else "yes" or "no" if found in its first four characters, else "other"
(wrong). Per category: accuracy over questions, accuracy+ over images (both questions right),
score = acc + acc+ (max 200), unrounded. Perception = sum over its 10 categories (max 2000):
the paper's MME number; cognition = sum over its 4 (max 800). `calculation.py` pairs each
category's answers two by two in file order and needs every category; here the two questions
of an image are grouped by its question_id, and absent categories are listed in
`categories_absent` (the same numbers for a complete answer file in question order).
"""

from __future__ import annotations

import os
from collections import defaultdict

from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    answers_by_key,
    read_llava_questions,
    write_json,
)

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
YES_NO_SUFFIX = "Please answer yes or no."

MME_CALCULATION = {
    "repository": "BradyFU/Awesome-Multimodal-Large-Language-Models",
    "file": "tools/eval_tool.zip: eval_tool/calculation.py (after LLaVA's eval.zip "
    "MME/convert_answer_to_mme.py)",
    "commit": "1c1d69e138b57cf8b0400427927bfb8ed4285458",
}


def label_key_question(prompt: str, labels: dict, category: str, label_file: str) -> str:
    """The label file's question for an answer's prompt, found as LLaVA's
    `convert_answer_to_mme.py` finds it: the short-answer suffix removed (then stripped); if the
    yes/no suffix is absent, it is appended after one space, or after two when that is how the
    label file has it."""
    if SHORT_ANSWER in prompt:
        prompt = prompt.replace(SHORT_ANSWER, "").strip()
    if YES_NO_SUFFIX not in prompt:
        prompt = prompt + " " + YES_NO_SUFFIX
        if (category, label_file, prompt) not in labels:
            prompt = prompt.replace(" " + YES_NO_SUFFIX, "  " + YES_NO_SUFFIX)
    return prompt


def read_labels(root: str) -> dict[tuple[str, str, str], str]:
    """(category, label file name, question) -> "yes" / "no" (lower-cased label).

    A category's labels are in its `questions_answers_YN/` when it has an `images/` folder,
    else beside the images; each line is `question<TAB>answer`.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MME folder not found: {root}")
    labels = {}
    for category in sorted(os.listdir(root)):
        folder = os.path.join(root, category)
        if not os.path.isdir(folder):
            continue
        if os.path.isdir(os.path.join(folder, "images")):
            folder = os.path.join(folder, "questions_answers_YN")
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".txt"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as file:
                for number, line in enumerate(file, start=1):
                    parts = line.strip().split("\t")
                    if len(parts) != 2 or parts[1].lower() not in ("yes", "no"):
                        raise ValueError(f"{path}, line {number}: expected 'question<TAB>Yes|No'.")
                    labels[(category, name, parts[0])] = parts[1].lower()
    if not labels:
        raise FileNotFoundError(f"No MME label files under {root}.")
    return labels


def parse_prediction(text: str) -> str:
    """'yes', 'no' or 'other', by MME's rule."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def score(inputs: ScoreInputs) -> dict:
    """Per-category acc / acc+ / score and the perception and cognition totals."""
    questions = read_llava_questions(inputs.questions, "")
    labels = read_labels(inputs.annotations)
    answers = answers_by_key(questions, inputs.answers, inputs.questions)
    per_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    items = {}
    for question in questions:
        qid = str(question.question_id)
        category = qid.split("/")[0]
        # The official conversion names the label file by the image name up to its first dot.
        label_file = qid.split("/")[-1].split(".")[0] + ".txt"
        text = label_key_question(question.prompt, labels, category, label_file)
        key = (category, label_file, text)
        if key not in labels:
            raise ValueError(
                f"No MME label for question_id {qid!r} ({question.prompt[:60]!r}) under "
                f"{inputs.annotations}."
            )
        record = answers.get(question.key)
        right = record is not None and parse_prediction(record["text"]) == labels[key]
        per_image[category][qid].append(right)
        items[question.key] = int(right)
    per_category, scores = {}, {}
    for category, images in sorted(per_image.items()):
        results = [ok for image_results in images.values() for ok in image_results]
        accuracy = sum(results) / len(results)
        accuracy_plus = sum(all(v) for v in images.values()) / len(images)
        # The official sum: 0 + acc * 100 + acc_plus * 100, in that order.
        scores[category] = 0 + accuracy * 100 + accuracy_plus * 100
        per_category[category] = {
            "accuracy": accuracy * 100,
            "accuracy_plus": accuracy_plus * 100,
            "score": scores[category],
        }
    absent = [c for c in PERCEPTION + COGNITION if c not in per_category]
    perception = sum(scores[c] for c in PERCEPTION if c in scores)
    cognition = sum(scores[c] for c in COGNITION if c in scores)
    return {
        "accuracy": perception,
        "metric": "MME perception score (sum of 10 category scores, max 2000; not a percentage)",
        "scorer": [MME_CALCULATION],
        "perception": perception,
        "cognition": cognition,
        "per_category": per_category,
        "categories_absent": absent,
        "missing": len(questions) - len(answers),
        "items": write_json(inputs.output_prefix + ".items.json", items),
    }


TASKS = (
    Task(
        name="mme",
        description="MME perception (headline) and cognition scores",
        benchmark="MME",
        questions="llava_mme.jsonl",
        visual_folder="MME_Benchmark_release_version",
        annotations="MME_Benchmark_release_version",
        read_questions=read_llava_questions,
        score=score,
        prompt_suffix=SHORT_ANSWER,
        suffix_in_file=True,
    ),
)
