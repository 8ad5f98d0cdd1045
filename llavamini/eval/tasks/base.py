"""What a benchmark is to the runner and the scorer: `Task`, `Question`, and shared readers.

A task names its default files inside LLaVA's `eval.zip` layout
(`<data_root>/<benchmark>/...`, data root `playground/data/eval`), knows how to read its
question file into `Question`s, which answer-format suffix its prompts carry, and how to score
an answer file. The runner builds each user message the same way for every task
(`llavamini.eval.runner.question_conversation`, rendered by the processor):

    "<image>\\n" (when there is a visual) + prompt_prefix + question.prompt
    + ("\\n" + prompt_suffix, unless the question file already carries it)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from llavamini.constants import SHORT_ANSWER as SHORT_ANSWER  # the tasks import it from here
from llavamini.eval.answers import answer_key, record_key
from llavamini.utils.paths import join_inside

logger = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = os.path.join("playground", "data", "eval")

OPTION_LETTER = "Answer with the option's letter from the given choices directly."
OPTION_LETTER_CN = "请直接回答选项字母。"


@dataclass(frozen=True)
class InlineImage:
    """An image stored in the question file itself (MMBench's base64 column)."""

    base64: str


@dataclass(frozen=True)
class Question:
    """One question to answer.

    Attributes:
        question_id: the benchmark's id (int or str), copied to the answer line.
        prompt: the question text as the answer line records it (with the suffix when the
            question file carries it; without the task's prefix or an appended suffix).
        visual: an image or video path, an `InlineImage`, or None for a text-only question.
        extra: additional fields for the answer line (MMBench: `round_id`, `options`, ...).
    """

    question_id: int | str
    prompt: str
    visual: str | InlineImage | None
    extra: Mapping = field(default_factory=dict)

    @property
    def key(self) -> str:
        return answer_key(self.question_id, self.prompt)


@dataclass(frozen=True)
class ScoreInputs:
    """What a scorer gets.

    Attributes:
        answers: the answer records (complete lines of the answer file).
        questions: the question file (`--questions`, else the task's default).
        annotations: the label file or folder (`--annotations`, else the task's default).
        output_prefix: path prefix for files the scorer writes (submission files), e.g.
            `.../answers` for `.../answers.jsonl`.
        options: task-specific settings (the video-QA judge's).
    """

    answers: Sequence[dict]
    questions: str | None
    annotations: str | None
    output_prefix: str
    options: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One benchmark split.

    Attributes:
        name: the registry name (`llavamini eval run NAME`).
        description: one line for `llavamini eval list`.
        benchmark: its folder under the data root.
        questions: default question file, relative to the benchmark folder.
        visual_folder: default image or video folder, relative ("" for inline images).
        annotations: default labels, relative (None when labels are not public).
        read_questions: (question file, visual folder) -> questions, in file order.
        score: `ScoreInputs` -> result dict with at least `accuracy` and `metric`.
        prompt_suffix: the answer-format instruction of this benchmark's prompts.
        suffix_in_file: True when the question file's texts already end with it (LLaVA's
            eval.zip files); False when the runner appends it.
        prompt_prefix: text put before every question (the video-QA instruction).
        max_new_tokens: the reference's generation budget for this benchmark.
        modality: "image" or "video".
        score_questions: default question file for scoring when it differs from the one
            answered (VQAv2: the submission lists the whole test split).
    """

    name: str
    description: str
    benchmark: str
    questions: str
    visual_folder: str
    annotations: str | None
    read_questions: Callable[[str, str], list[Question]]
    score: Callable[[ScoreInputs], dict]
    prompt_suffix: str = ""
    suffix_in_file: bool = True
    prompt_prefix: str = ""
    max_new_tokens: int = 128
    modality: str = "image"
    score_questions: str | None = None

    def path(self, data_root: str, relative: str | None) -> str | None:
        """`relative` inside this task's benchmark folder under `data_root`."""
        if relative is None:
            return None
        return os.path.join(data_root, self.benchmark, relative)

    def question_text(self, question: Question, prompt_prefix: str | None = None) -> str:
        """The text of the user turn for `question`: the module docstring's, without the
        placeholder."""
        prefix = self.prompt_prefix if prompt_prefix is None else prompt_prefix
        text = prefix + question.prompt
        if self.prompt_suffix and not self.suffix_in_file:
            text += "\n" + self.prompt_suffix
        return text


def read_json(path: str, what: str):
    """Load a JSON file; errors name the file and what it should be."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({what}): {error}") from error


def read_jsonl(path: str, what: str) -> list[dict]:
    """Load a JSON-lines file (blank lines skipped); errors name the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    rows = []
    with open(path, "rb") as file:
        for number, line in enumerate(file.read().split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{path}, line {number}: not JSON ({what}): {error}") from error
    return rows


def require(row: Mapping, fields: Iterable[str], source: str) -> None:
    """Raise naming the first of `fields` missing from `row`."""
    for name in fields:
        if name not in row:
            raise ValueError(f"{source}: missing field {name!r} (has {sorted(row)}).")


def read_llava_questions(path: str, visual_folder: str) -> list[Question]:
    """LLaVA's question JSONL (`question_id`, `text`, optional `image`), as `model_vqa_loader`
    reads it: the prompt is `text` verbatim (the answer-format suffix is already in it)."""
    questions = []
    for number, row in enumerate(read_jsonl(path, "question file"), start=1):
        source = f"{path}, line {number}"
        if not isinstance(row, dict):
            raise ValueError(f"{source}: a question is a JSON object, got {type(row).__name__}.")
        require(row, ("question_id", "text"), source)
        check_type(row, "question_id", (int, str), source)
        check_type(row, "text", str, source)
        image = row.get("image")
        if image is not None:
            check_type(row, "image", str, source)
        try:
            visual = join_inside(visual_folder, image, "--visual-folder") if image else None
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error
        questions.append(Question(row["question_id"], row["text"], visual))
    return questions


def check_type(row: Mapping, name: str, types: type | tuple[type, ...], source: str) -> None:
    """Raise naming the field `name` of `row` when it is not of `types` (JSON's `true` is no
    integer here)."""
    value = row[name]
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        wanted = " or ".join({int: "an integer", str: "a string"}[t] for t in allowed)
        raise ValueError(
            f"{source}: {name!r} must be {wanted}, got {type(value).__name__} {value!r}."
        )


def percent(numerator: float, denominator: int) -> float | None:
    """100 * numerator / denominator rounded to 2 places; None for an empty denominator."""
    return round(100.0 * numerator / denominator, 2) if denominator else None


def answers_by_key(questions: Sequence[Question], answers: Sequence[dict], source: str) -> dict:
    """Answer record per question key; raises for an answer to a question not in the set.

    Args:
        questions: the question set that defines what counts.
        answers: answer records.
        source: the question file, for the error message.
    """
    known = {question.key for question in questions}
    by_key = {}
    for record in answers:
        key = record_key(record)
        if key not in known:
            raise ValueError(
                f"Answer to question_id {record['question_id']!r} (prompt "
                f"{record['prompt'][:60]!r}) is not in {source}: wrong --questions file?"
            )
        by_key[key] = record
    warn_missing(len(known) - len(by_key), len(known))
    return by_key


def answers_by_id(answers: Sequence[dict], source: str = "answer file") -> dict[str, dict]:
    """Answer record per `str(question_id)`; raises when an id is answered twice."""
    by_id: dict[str, dict] = {}
    for record in answers:
        qid = str(record["question_id"])
        if qid in by_id:
            raise ValueError(f"{source}: question_id {qid!r} is answered more than once.")
        by_id[qid] = record
    return by_id


def check_known(answered: Iterable, known: Container, source: str, flag: str) -> None:
    """Raise `ValueError` when some answered ids are not among the `known` ids of `source`
    (the file the `flag` option named is the wrong one, usually)."""
    unknown = [qid for qid in answered if qid not in known]
    if unknown:
        raise ValueError(
            f"{len(unknown)} answered question ids are not in {source} (first: {unknown[0]!r}): "
            f"wrong {flag} file?"
        )


def warn_missing(missing: int, total: int) -> None:
    if missing:
        logger.warning("%d of %d questions have no answer; they count as wrong.", missing, total)


def write_json(path: str, value) -> str:
    """Write `value` as indented JSON to `path`; returns the path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, ensure_ascii=False, indent=1)
        file.write("\n")
    return path
