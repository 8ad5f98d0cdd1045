"""MMBench (English and Chinese) dev: local CircularEval accuracy from the TSV.

Question file: the dev TSV (`index`, `question`, `hint`, `A`..`D`, `answer`, `category`,
`l2-category`, base64 `image`, ...). Circular copies of a question are rows whose `index`
differs by multiples of 1,000,000, each with the options rotated; a row whose `image` is a short
number refers to the image of the row with that index (VLMEvalKit's space saving). Every row is
asked once, as the reference's `model_vqa_mmbench.py --single-pred-prompt` does: the prompt is
`hint + "\\n"` (when there is a hint) + question + `"\\nA. ..."` per option, then the suffix
"Answer with the option's letter from the given choices directly." (Chinese TSV:
"请直接回答选项字母。"; the reference's CN script forgot `--lang cn` and used the English one).

Scoring reproduces VLMEvalKit's MMBench evaluation (`ImageMCQDataset.evaluate` with
`mcq_circular_eval`), the protocol the field reports: rows are read as VLMEvalKit reads its
prediction file (pandas: cells such as "", "None", "NA" or "null" are empty, so an option with
such a text does not exist and such an answer reads "nan"); each answer's letter comes from
the rule-based matcher (`metrics.choice`, `--matcher`); a question (the row with index < 1e6)
counts only if every row of its group (same index modulo 1e6) is matched to its right letter;
rows whose question has no original row are not scored. When the rules cannot read some
answers of an otherwise right group and a judge is configured, the judge is asked to match
them (VLMEvalKit's LLM fallback); without a judge such a group is wrong (VLMEvalKit's
`exact_matching`). Reported: CircularEval accuracy, per category and per l2-category, the
single-pass accuracy of the original rows, answers the rules could not read, per-question
hits in `<prefix>.items.json`, and the submission TSV (the question TSV without hint,
category, source, image, comment, l2-category, plus a `prediction` column).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import string
import sys
from collections import defaultdict
from dataclasses import dataclass

from llavamini.eval.metrics.choice import DEFAULT_MATCHER, Matcher, get_matcher, infer_choice
from llavamini.eval.metrics.choice_judge import JudgeFallback, load_match_prompt
from llavamini.eval.metrics.judge import Judge, config_from_env, judge_settings
from llavamini.eval.tasks.base import (
    OPTION_LETTER,
    OPTION_LETTER_CN,
    InlineImage,
    Question,
    ScoreInputs,
    Task,
    answers_by_id,
    check_known,
    require,
    warn_missing,
    write_json,
)

logger = logging.getLogger(__name__)

CIRCULAR_STRIDE = 1_000_000
"""Circular copies of question i have indices i + k * CIRCULAR_STRIDE."""

OPTION_COLUMNS = "ABCDEFGHI"
SUBMISSION_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")

PANDAS_NA = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN")
    + ("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
)
"""Cell texts pandas reads as missing by default (`pandas._libs.parsers.STR_NA_VALUES`)."""


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
    """An empty cell as LLaVA's `model_vqa_mmbench.py` reads the TSV (pandas' missing cells,
    and 'nan' / 'none' in any case) for the prompt's hint and options."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return value in PANDAS_NA or str(value).lower() in ("nan", "none")


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


def is_empty_cell(cell: str | None) -> bool:
    """Whether pandas reads this TSV or xlsx cell as missing (its default NA strings)."""
    return cell is None or cell in PANDAS_NA


def row_choices(row: dict) -> dict[str, str]:
    """Option letter -> text as VLMEvalKit's `build_choices` sees them: every column named
    by one capital letter whose cell is not empty, in letter order."""
    return {
        letter: row[letter]
        for letter in string.ascii_uppercase
        if letter in row and not is_empty_cell(row[letter])
    }


def prediction_text(record: dict | None) -> str:
    """The answer as VLMEvalKit reads it back from its prediction file: an empty or NA-like
    answer (and a missing one) is the string "nan"."""
    text = record["text"] if record is not None else ""
    return "nan" if is_empty_cell(text) else text


@dataclass
class _Row:
    """One TSV row being scored."""

    index: int
    answer: str
    question: str
    choices: dict[str, str]
    prediction: str
    letter: str | None = None


def _group_hit(rows: list[_Row], fallback: JudgeFallback | None) -> bool:
    """VLMEvalKit's circular group: wrong at the first row read as a wrong letter; right when
    every row is read right; otherwise the unread rows go to the judge in order (wrong
    without one)."""
    for row in rows:
        if row.letter is not None and row.letter != row.answer:
            return False
    if all(row.letter == row.answer for row in rows):
        return True
    if fallback is None:
        return False
    for row in rows:
        if (
            row.letter is None
            and fallback.letter(row.question, row.choices, row.prediction) != row.answer
        ):
            return False
    return True


def _make_fallback(inputs: ScoreInputs, matcher: Matcher) -> JudgeFallback | None:
    """The LLM fallback with the configured judge, or None when neither an endpoint nor a
    model is configured (flags or environment); half a configuration raises `JudgeError`."""
    settings = judge_settings(inputs.options, inputs.output_prefix)
    names = ("LLAVAMINI_JUDGE_BASE_URL", "OPENAI_BASE_URL", "LLAVAMINI_JUDGE_MODEL")
    configured = settings.get("base_url") or settings.get("model")
    configured = configured or any(os.environ.get(name) for name in names)
    judge = Judge(config_from_env(**settings)) if configured else None
    prompt = load_match_prompt(inputs.options.get("judge_prompt_file"))  # checked in any case
    if judge is None:
        return None
    allow = inputs.options.get("allow_judge_failures", False)
    return JudgeFallback(judge, prompt, matcher, allow)


def _read_rows(
    table: list[dict], by_id: dict[str, dict], matcher: Matcher, path: str
) -> tuple[list[_Row], dict[int, list[_Row]], dict[int, dict]]:
    """Every row with its answer read by the rules, the circular groups (index modulo
    `CIRCULAR_STRIDE` -> rows in index order) and the original rows (index -> TSV line)."""
    check_known(by_id, {str(int(row["index"])) for row in table}, path, "--annotations")
    rows, groups, mains = [], defaultdict(list), {}
    for line in table:
        require(line, ("index", "answer", "question"), f"{path}, index {line['index']}")
        record = by_id.get(str(int(line["index"])))
        row = _Row(
            int(line["index"]),
            line["answer"],
            line["question"],
            row_choices(line),
            prediction_text(record),
        )
        row.letter = infer_choice(row.prediction, row.choices, matcher)
        rows.append(row)
        groups[row.index % CIRCULAR_STRIDE].append(row)
        if row.index < CIRCULAR_STRIDE:
            mains[row.index] = line
    if all(len(groups[index]) == 1 for index in mains):
        logger.warning(
            "%s has no circular copies (no index differs by a multiple of %d): CircularEval "
            "equals single-pass accuracy here.",
            path,
            CIRCULAR_STRIDE,
        )
    return rows, groups, mains


def score(inputs: ScoreInputs) -> dict:
    """VLMEvalKit's CircularEval (see the module docstring)."""
    path = inputs.annotations or inputs.questions
    matcher = get_matcher(inputs.options.get("matcher", DEFAULT_MATCHER))
    in_file_order = read_tsv(path)
    table = sorted(in_file_order, key=lambda row: int(row["index"]))
    by_id = answers_by_id(inputs.answers)
    rows, groups, mains = _read_rows(table, by_id, matcher, path)
    warn_missing(len(table) - len(by_id), len(table))
    fallback = _make_fallback(inputs, matcher)
    try:
        hits = {index: _group_hit(groups[index], fallback) for index in mains}
    finally:
        if fallback is not None:
            fallback.judge.close()
    single_pass = [groups[index][0].letter == groups[index][0].answer for index in mains]
    predictions = {qid: record["text"] for qid, record in by_id.items()}
    submission = _write_submission(
        in_file_order, predictions, inputs.output_prefix + ".submission.tsv"
    )
    items = {str(index): int(hit) for index, hit in hits.items()}
    return {
        "accuracy": _mean_percent(list(hits.values())),
        "metric": "CircularEval accuracy (%): a question counts if all its rotations are right",
        "scorer": [matcher.scorer],
        "per_category": _per_column(mains, hits, "category", "unknown"),
        "per_l2_category": _per_column(mains, hits, "l2-category", "unknown"),
        # VLMEvalKit reports every number per split; `accuracy` pools the splits.
        "per_split": _per_column(mains, hits, "split", "none"),
        "single_pass_accuracy": _mean_percent(single_pass),
        "questions": len(hits),
        "rows": len(table),
        "missing": len(table) - len(by_id),
        "unparsed_answers": sum(row.letter is None for row in rows),
        "judge": fallback.summary() if fallback is not None else None,
        "items": write_json(inputs.output_prefix + ".items.json", items),
        "submission": submission,
    }


def _per_column(mains: dict[int, dict], hits: dict[int, bool], column: str, default: str):
    """CircularEval accuracy per value of a TSV column (`default` where a row has none)."""
    values = defaultdict(list)
    for index, line in mains.items():
        values[line.get(column, default)].append(hits[index])
    return {key: _mean_percent(value) for key, value in sorted(values.items())}


def _mean_percent(hits: list[bool]) -> float | None:
    """100 * the mean, unrounded (VLMEvalKit reports the plain mean)."""
    return 100.0 * sum(hits) / len(hits) if hits else None


def _mmbench_task(name: str, description: str, tsv: str, suffix: str) -> Task:
    """A dev split of MMBench: questions, images and answers all in one TSV."""
    return Task(
        name=name,
        description=description,
        benchmark=name,
        questions=tsv,
        visual_folder="",
        annotations=tsv,
        read_questions=read_questions,
        score=score,
        prompt_suffix=suffix,
        suffix_in_file=False,
        max_new_tokens=1024,
    )


TASKS = (
    _mmbench_task(
        "mmbench",
        "MMBench dev (English), CircularEval from the TSV",
        "mmbench_dev_20230712.tsv",
        OPTION_LETTER,
    ),
    _mmbench_task(
        "mmbench_cn",
        "MMBench-CN dev (Chinese), CircularEval from the TSV",
        "mmbench_dev_cn_20231003.tsv",
        OPTION_LETTER_CN,
    ),
)
