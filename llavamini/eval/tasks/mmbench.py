"""MMBench (English and Chinese) dev: local CircularEval accuracy from the TSV.

Question file: the dev TSV (`index`, `question`, `hint`, `A`..`D`, `answer`, `category`,
`l2-category`, base64 `image`, ...). Circular copies of a question are rows whose `index`
differs by multiples of 1,000,000, each with the options rotated; a row whose `image` is a short
number refers to the image of the row with that index (VLMEvalKit's space saving). Every row is
asked once, as the reference's `model_vqa_mmbench.py --single-pred-prompt` does: the prompt is
`hint + "\\n"` (when there is a hint) + question + `"\\nA. ..."` per option, then the suffix
"Answer with the option's letter from the given choices directly." (Chinese TSV:
"请直接回答选项字母。"; the reference's CN script forgot `--lang cn` and used the English one).

Scoring extracts the chosen letter from free text (`metrics.choice.extract_choice`) and reports
CircularEval accuracy (a question counts only if every rotation is right), per category and
per l2-category, the single-pass accuracy on the original rows (index < 1,000,000), the number
of answers naming no option, and writes the submission TSV (the question TSV without hint,
category, source, image, comment, l2-category, plus a `prediction` column).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections import defaultdict

from llavamini.eval.metrics.choice import extract_choice
from llavamini.eval.tasks.base import (
    OPTION_LETTER,
    OPTION_LETTER_CN,
    InlineImage,
    Question,
    ScoreInputs,
    Task,
    answers_by_id,
    percent,
    require,
    warn_missing,
)

logger = logging.getLogger(__name__)

CIRCULAR_STRIDE = 1_000_000
"""Circular copies of question i have indices i + k * CIRCULAR_STRIDE."""

OPTION_COLUMNS = "ABCDEFGHI"
SUBMISSION_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def _raise_csv_field_limit() -> None:
    """Base64 images exceed csv's default 128 KiB field limit."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def read_tsv(path: str) -> list[dict]:
    """The rows of a TSV as dicts (header line = column names)."""
    _raise_csv_field_limit()
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return list(csv.DictReader(file, delimiter="\t"))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"MMBench TSV not found: {path}") from error


def is_none(value) -> bool:
    """Empty cells as pandas writes and reads them: None, '', 'nan', 'none'."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in ("", "nan", "none")


def row_options(row: dict) -> list[str]:
    """Option texts in letter order, up to the first empty option column."""
    options = []
    for letter in OPTION_COLUMNS:
        if letter not in row or is_none(row[letter]):
            break
        options.append(row[letter])
    return options


def build_prompt(row: dict, options: list[str]) -> str:
    """Hint, question and lettered options, as the reference lays them out."""
    question = row["question"]
    if not is_none(row.get("hint")):
        question = row["hint"] + "\n" + question
    for letter, option in zip(OPTION_COLUMNS, options, strict=False):
        question += f"\n{letter}. {option}"
    return question


def read_questions(path: str, visual_folder: str) -> list[Question]:
    """TSV rows -> questions with inline images (`visual_folder` is unused)."""
    rows = read_tsv(path)
    images = {}
    for number, row in enumerate(rows, start=2):
        require(row, ("index", "question", "image"), f"{path}, line {number}")
        if len(row["image"]) > 64:
            images[int(row["index"])] = row["image"]
    questions = []
    for number, row in enumerate(rows, start=2):
        index = int(row["index"])
        image = row["image"]
        if len(image) <= 64:
            if not image.strip().isdigit() or int(image) not in images:
                raise ValueError(
                    f"{path}, line {number}: image {image!r} is neither base64 data nor the "
                    f"index of a row with an image."
                )
            image = images[int(image)]
        options = row_options(row)
        if not options:
            raise ValueError(f"{path}, line {number}: question {index} has no options.")
        extra = {
            "round_id": 0,
            "options": options,
            "option_char": list(OPTION_COLUMNS[: len(options)]),
        }
        questions.append(Question(index, build_prompt(row, options), InlineImage(image), extra))
    return questions


def _write_submission(rows: list[dict], predictions: dict[str, str], path: str) -> str:
    columns = [c for c in rows[0] if c not in SUBMISSION_DROPPED] + ["prediction"]
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "prediction": predictions.get(str(int(row["index"])), "")})
    return path


def score(inputs: ScoreInputs) -> dict:
    """CircularEval accuracy, per category, single-pass accuracy, submission file."""
    path = inputs.annotations or inputs.questions
    rows = read_tsv(path)
    by_id = answers_by_id(inputs.answers)
    known = {str(int(row["index"])) for row in rows}
    unknown = [qid for qid in by_id if qid not in known]
    if unknown:
        raise ValueError(
            f"{len(unknown)} answered indices are not in {path} (first: {unknown[0]})."
        )
    groups: dict[int, list[bool]] = defaultdict(list)
    category, l2_category = {}, {}
    single_pass, unparsed = [], 0
    for number, row in enumerate(rows, start=2):
        require(row, ("index", "answer", "category"), f"{path}, line {number}")
        index = int(row["index"])
        record = by_id.get(str(index))
        right = False
        if record is not None:
            options = dict(zip(OPTION_COLUMNS, row_options(row), strict=False))
            letter = extract_choice(record["text"], options)
            unparsed += letter is None
            right = letter == row["answer"].strip()
        group = index % CIRCULAR_STRIDE
        groups[group].append(right)
        category.setdefault(group, row["category"])
        l2_category.setdefault(group, row.get("l2-category", "unknown"))
        if index < CIRCULAR_STRIDE:
            single_pass.append(right)
    if all(len(results) == 1 for results in groups.values()):
        logger.warning(
            "%s has no circular copies (no index differs by a multiple of %d): CircularEval "
            "equals single-pass accuracy here.",
            path,
            CIRCULAR_STRIDE,
        )
    warn_missing(len(rows) - len(by_id), len(rows))
    passed = {group: all(results) for group, results in groups.items()}
    per_category, per_l2 = defaultdict(list), defaultdict(list)
    for group, ok in passed.items():
        per_category[category[group]].append(ok)
        per_l2[l2_category[group]].append(ok)
    predictions = {qid: record["text"] for qid, record in by_id.items()}
    submission = _write_submission(rows, predictions, inputs.output_prefix + ".submission.tsv")
    return {
        "accuracy": percent(sum(passed.values()), len(passed)),
        "metric": "CircularEval accuracy (%): a question counts if all its rotations are right",
        "per_category": {k: percent(sum(v), len(v)) for k, v in sorted(per_category.items())},
        "per_l2_category": {k: percent(sum(v), len(v)) for k, v in sorted(per_l2.items())},
        "single_pass_accuracy": percent(sum(single_pass), len(single_pass)),
        "questions": len(passed),
        "rows": len(rows),
        "missing": len(rows) - len(by_id),
        "unparsed_answers": unparsed,
        "submission": submission,
    }


TASKS = (
    Task(
        name="mmbench",
        description="MMBench dev (English), CircularEval from the TSV",
        benchmark="mmbench",
        questions="mmbench_dev_20230712.tsv",
        visual_folder="",
        annotations="mmbench_dev_20230712.tsv",
        read_questions=read_questions,
        score=score,
        prompt_suffix=OPTION_LETTER,
        suffix_in_file=False,
        max_new_tokens=1024,
    ),
    Task(
        name="mmbench_cn",
        description="MMBench-CN dev (Chinese), CircularEval from the TSV",
        benchmark="mmbench_cn",
        questions="mmbench_dev_cn_20231003.tsv",
        visual_folder="",
        annotations="mmbench_dev_cn_20231003.tsv",
        read_questions=read_questions,
        score=score,
        prompt_suffix=OPTION_LETTER_CN,
        suffix_in_file=False,
        max_new_tokens=1024,
    ),
)
