"""MME: perception and cognition scores from the benchmark's own yes/no labels.

Questions: LLaVA's `llava_mme.jsonl` (`question_id` = `<category>/<image file>`, two questions
per image, so answers are told apart by their prompt), images and labels in
`MME_Benchmark_release_version/<category>/` (labels: `<image stem>.txt` files, one
`question<TAB>Yes|No` line per question, in the category folder or in its
`questions_answers_YN/`).

A prediction is parsed as MME's `calculation.py` does: lower-cased; "yes"/"no" as is, else
"yes" or "no" if found in its first four characters, else "other" (wrong). Per category:
accuracy over questions, accuracy+ over images (both questions right), score = acc + acc+
(max 200). Perception = sum over its 10 categories (max 2000): the paper's MME number;
cognition = sum over its 4 (max 800).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    answers_by_key,
    read_llava_questions,
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


def normalise_question(text: str) -> str:
    """The question without answer-format suffixes, whitespace collapsed (labels and question
    files differ in such details, e.g. two spaces before the yes/no suffix)."""
    text = text.replace(SHORT_ANSWER, "").replace(YES_NO_SUFFIX, "")
    return re.sub(r"\s+", " ", text).strip()


def read_labels(root: str) -> dict[tuple[str, str, str], str]:
    """(category, image stem, normalised question) -> "yes" / "no"."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MME folder not found: {root}")
    labels = {}
    for category in sorted(os.listdir(root)):
        folder = os.path.join(root, category)
        if not os.path.isdir(folder):
            continue
        qa_folder = os.path.join(folder, "questions_answers_YN")
        qa_folder = qa_folder if os.path.isdir(qa_folder) else folder
        for name in sorted(os.listdir(qa_folder)):
            if not name.endswith(".txt"):
                continue
            path = os.path.join(qa_folder, name)
            with open(path, encoding="utf-8") as file:
                for number, line in enumerate(file, start=1):
                    if not line.strip():
                        continue
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                        raise ValueError(f"{path}, line {number}: expected 'question<TAB>Yes|No'.")
                    key = (category, name[: -len(".txt")], normalise_question(parts[0]))
                    labels[key] = parts[1].strip().lower()
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
    for question in questions:
        qid = str(question.question_id)
        category, _, image = qid.partition("/")
        stem = os.path.splitext(os.path.basename(image))[0]
        key = (category, stem, normalise_question(question.prompt))
        if key not in labels:
            raise ValueError(
                f"No MME label for question_id {qid!r} ({question.prompt[:60]!r}) under "
                f"{inputs.annotations}."
            )
        record = answers.get(question.key)
        right = record is not None and parse_prediction(record["text"]) == labels[key]
        per_image[category][image].append(right)
    per_category, scores = {}, {}
    for category, images in sorted(per_image.items()):
        results = [ok for image_results in images.values() for ok in image_results]
        accuracy = 100 * sum(results) / len(results)
        accuracy_plus = 100 * sum(all(v) for v in images.values()) / len(images)
        scores[category] = accuracy + accuracy_plus
        per_category[category] = {
            "accuracy": round(accuracy, 2),
            "accuracy_plus": round(accuracy_plus, 2),
            "score": round(scores[category], 2),
        }
    absent = [c for c in PERCEPTION + COGNITION if c not in per_category]
    perception = sum(scores[c] for c in PERCEPTION if c in scores)
    cognition = sum(scores[c] for c in COGNITION if c in scores)
    return {
        "accuracy": round(perception, 2),
        "metric": "MME perception score (sum of 10 category scores, max 2000; not a percentage)",
        "perception": round(perception, 2),
        "cognition": round(cognition, 2),
        "per_category": per_category,
        "categories_absent": absent,
        "missing": len(questions) - len(answers),
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
