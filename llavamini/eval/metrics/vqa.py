"""VQA answer processing and accuracy, exactly as the official tools compute them.

Two pieces of official code are reproduced here (see `VQA_EVAL` and `EVALAI_PROCESSOR`):

- The EvalAI answer processor that LLaVA applies to every answer before an upload
  (`normalize_for_submission`): lower case; commas and question marks deleted; "'s" split off
  as a word; tabs and newlines to spaces; then the punctuation, number-word, article and
  contraction rules below. TextVQA's soft accuracy runs it on both sides.
- `vqaEval.py` of the VQA challenge (`vqa_accuracy`), at its current commit (March 2021): the
  ten human answers and the prediction are compared verbatim (after whitespace clean-up) when
  the humans all agree, and after the punctuation and number/article/contraction rules when
  they do not. The score is the mean over the ten annotators of min(#other annotators who gave
  the prediction / 3, 1).

The rules, with the quirks that move numbers and are therefore kept:

- Punctuation: each mark of `PUNCTUATION` is deleted if it touches a space anywhere in the
  text, or if the text holds a digit-comma-digit; otherwise it becomes a space. Then periods
  not followed by a digit are deleted, but only the first 32 of them (the official code passes
  `re.UNICODE` where `re.sub` expects a count).
- Words (split on whitespace, lower-cased): number words zero..ten and "none" become digits,
  "a", "an" and "the" are dropped, and apostrophe-less contractions are restored (the table
  maps "somebody'd" to "somebodyd", backwards, as the official table does).
- "Digit" means ASCII 0-9 in `vqaEval.py` (a Python 2 program: its patterns are byte strings)
  and any Unicode decimal digit in the EvalAI processor (Python 3).
- Rounding: `vqaEval.py` rounds percentages to 2 places with Python 2's `round`, which sends
  exact halves away from zero (Python 3's `round` sends them to the even neighbour).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal

VQA_EVAL = {
    "repository": "GT-Vision-Lab/VQA",
    "file": "PythonEvaluationTools/vqaEvaluation/vqaEval.py",
    "commit": "a013f0043c1e2cdc995922dfe257f7149aa9af06",
}
EVALAI_PROCESSOR = {
    "repository": "haotian-liu/LLaVA",
    "file": "llava/eval/m4c_evaluator.py (EvalAIAnswerProcessor)",
    "commit": "c121f0432da27facab705978f83c4ada465e46fd",
}

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
PUNCTUATION += ("@", "`", ",", "?", "!")
"""Marks the punctuation rule deletes or blanks, in the official order (the period apart)."""

PERIODS_STRIPPED = 32
"""How many periods the official period rule deletes at most (`re.UNICODE == 32`)."""

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't "
    "she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll that's there'd "
    "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've "
    "we've weren't what'll what're what's what've when's where'd where's where've who'd "
    "who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all "
    "y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()
"""The contractions the official table restores: each spelling with one apostrophe missing
maps back to the form listed here."""

_CONTRACTION_QUIRKS = {"somebody'd": "somebodyd"}
"""An official table entry that runs the other way; kept because it changes matches."""


def _contraction_table(contracted: Sequence[str]) -> dict[str, str]:
    table = {}
    for word in contracted:
        for position, char in enumerate(word):
            if char == "'":
                table[word[:position] + word[position + 1 :]] = word
    table.update(_CONTRACTION_QUIRKS)
    return table


CONTRACTIONS = _contraction_table(_CONTRACTED)
"""Lower-case word -> its replacement (upper-case and identity entries of the official table
can never fire, since words are lower-cased first, and are left out)."""

_DIGIT_COMMA_DIGIT = {
    "ascii": re.compile(r"[0-9],[0-9]"),
    "unicode": re.compile(r"\d,\d"),
}
_PERIOD_NOT_BEFORE_DIGIT = {
    "ascii": re.compile(r"\.(?![0-9])"),
    "unicode": re.compile(r"\.(?!\d)"),
}


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str, digits: str = "ascii") -> str:
    """The official punctuation rule (module docstring); case is kept.

    Args:
        text: an answer.
        digits: "ascii" (`vqaEval.py`) or "unicode" (the EvalAI processor): what counts as a
            digit next to a comma or after a period.
    """
    out = text
    # Both checks look at the input text, not at the partly processed one, as the tools do.
    delete_all = _DIGIT_COMMA_DIGIT[digits].search(text) is not None
    for mark in PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT[digits].sub("", out, count=PERIODS_STRIPPED)


def process_words(text: str) -> str:
    """Lower case; number words to digits, articles dropped, contractions restored."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    """An answer through `vqaEval.py`'s processing (used when the humans disagree)."""
    return process_words(process_punctuation(_clean_whitespace(text)))


def normalize_for_submission(text: str) -> str:
    """An answer as LLaVA's EvalAI conversion writes it into the upload file."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return process_words(process_punctuation(_clean_whitespace(text), digits="unicode"))


def _answer_records(human_answers: Sequence[Mapping | str]) -> list[dict]:
    """Copies of the human answer records; a plain string becomes a record numbered by its
    position, so that equal strings stay distinct annotators."""
    return [
        dict(human) if isinstance(human, Mapping) else {"answer": human, "position": position}
        for position, human in enumerate(human_answers)
    ]


def leave_one_out_accuracy(answer: str, records: Sequence[Mapping]) -> float:
    """Mean over annotators i of min(#annotators other than i who gave `answer` / 3, 1).

    Strings are compared as given (process them first). "Other than i" follows the official
    code: a record equal to record i (same text and same fields) is not counted, which only
    matters for duplicated records; real annotations number their answers (`answer_id`).

    Args:
        answer: the processed prediction.
        records: the processed human answers as records with an `answer` key (the
            annotation file's `{"answer", "answer_confidence", "answer_id"}`).
    """
    if not records:
        raise ValueError("VQA accuracy needs at least one human answer.")
    credits = []
    for record in records:
        matches = sum(1 for other in records if other != record and other["answer"] == answer)
        credits.append(min(1, float(matches) / 3))
    return float(sum(credits)) / len(credits)


def vqa_accuracy(prediction: str, human_answers: Sequence[Mapping | str]) -> float:
    """`vqaEval.py`'s accuracy of one prediction, in [0, 1].

    Args:
        prediction: the answer as submitted (for LLaVA: after `normalize_for_submission`).
        human_answers: the annotation's ten answers, as strings or answer records.
    """
    records = _answer_records(human_answers)
    for record in records:
        record["answer"] = _clean_whitespace(record["answer"])
    prediction = _clean_whitespace(prediction)
    if len({record["answer"] for record in records}) > 1:
        for record in records:
            record["answer"] = normalize_answer(record["answer"])
        prediction = normalize_answer(prediction)
    return leave_one_out_accuracy(prediction, records)


def textvqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """TextVQA's soft accuracy (`TextVQAAccuracyEvaluator`): prediction and every human answer
    through the EvalAI processor, then the leave-one-out accuracy."""
    humans = _answer_records([normalize_for_submission(answer) for answer in human_answers])
    return leave_one_out_accuracy(normalize_for_submission(prediction), humans)


def round_half_away(value: float, places: int = 2) -> float:
    """Python 2's `round(value, places)`: the float's exact value, halves away from zero."""
    quantum = Decimal(1).scaleb(-places)
    return float(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))
