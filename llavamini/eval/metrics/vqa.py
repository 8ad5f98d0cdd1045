"""VQA answer normalisation and the VQA accuracy (VQAv2, TextVQA, VizWiz).

Two normalisers, as the benchmarks' own tools define them:

- `normalize_answer`: the official VQA evaluation's processing of a prediction: punctuation
  (a mark touching a space, or any mark in a text with a digit-comma-digit, is deleted; other
  marks become spaces; a period is deleted unless a digit follows), then lower case, number
  words zero..ten (and "none") to digits, articles dropped, apostrophe-less contractions
  restored.
- `normalize_for_submission`: the EvalAI answer processor that LLaVA applies before uploading
  (lower case, commas and question marks dropped, "'s" split off, then `normalize_answer`).

`vqa_accuracy` is the official metric: for each of the 10 annotators, min(#other annotators who
gave the prediction / 3, 1), averaged over the 10 leave-one-out subsets.

The contraction table below is our own list of English contractions; it may differ from the
official table on rare forms that are not plausible short answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
PUNCTUATION += ("@", "`", ",", "?", "!")
"""Marks the official evaluation removes (the period and the apostrophe are handled apart)."""

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

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

_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've "
    "it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't "
    "shan't she'd've she's should've shouldn't shouldn't've somebody'd've somebody'll "
    "somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()
"""Contractions whose apostrophe-less spellings are restored. Forms whose spelling without the
apostrophe is a common word (we'd/wed, it's/its, we'll/well, I'll/ill, let's/lets) are left out
on purpose: restoring them would corrupt real answers."""


def _contraction_table(canonical: Sequence[str]) -> dict[str, str]:
    """Each contraction's spellings with one or more apostrophes missing -> the contraction."""
    table = {}
    for word in canonical:
        positions = [i for i, char in enumerate(word) if char == "'"]
        for count in range(1, len(positions) + 1):
            for dropped in combinations(positions, count):
                variant = "".join(c for i, c in enumerate(word) if i not in dropped)
                table[variant] = word
    return table


CONTRACTIONS = _contraction_table(_CONTRACTIONS)


def process_punctuation(text: str) -> str:
    """The official punctuation rule (see the module docstring); case is kept."""
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        # The checks look at the original text, as the official tool does.
        if f"{mark} " in text or f" {mark}" in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digits_and_articles(text: str) -> str:
    """Lower case, number words to digits, articles dropped, contractions restored."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """A prediction as the official VQA evaluation compares it."""
    return process_digits_and_articles(process_punctuation(_clean_whitespace(text)))


def normalize_for_submission(text: str) -> str:
    """A prediction as LLaVA's EvalAI conversion writes it into the upload file."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return normalize_answer(text)


def leave_one_out_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """Mean over annotators i of min(#annotators other than i who gave `answer` / 3, 1).

    Strings are compared as given (normalise them first). With 10 annotators, an answer given
    by k of them scores 0.3, 0.6, 0.9 and 1.0 for k = 1, 2, 3 and k >= 4.
    """
    if not human_answers:
        raise ValueError("VQA accuracy needs at least one human answer.")
    scores = []
    for i in range(len(human_answers)):
        matches = sum(1 for j, human in enumerate(human_answers) if j != i and human == answer)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of one prediction, in [0, 1].

    The prediction is always normalised; the human answers are cleaned of tabs and newlines,
    and have their punctuation processed only when the annotators disagree (as the official
    tool does: an all-agreeing set is compared verbatim).
    """
    humans = [_clean_whitespace(answer) for answer in human_answers]
    if len(set(humans)) > 1:
        humans = [process_punctuation(answer) for answer in humans]
    return leave_one_out_accuracy(normalize_answer(prediction), humans)


def textvqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """TextVQA's soft accuracy: prediction and every human answer through the EvalAI
    normaliser, then the leave-one-out VQA accuracy."""
    humans = [normalize_for_submission(answer) for answer in human_answers]
    return leave_one_out_accuracy(normalize_for_submission(prediction), humans)
