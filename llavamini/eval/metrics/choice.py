"""Which option a free-text answer picks: VLMEvalKit's rule-based matching (MMBench).

`infer_choice(answer, choices, matcher)` reproduces VLMEvalKit's `can_infer`
(`vlmeval/utils/matching_util.py`): the option-letter rules first, then the option-text rule.
It returns an option letter, "Z" (the answer refuses, or names the letter Z: VLMEvalKit's
"none of the options", always wrong), or None (the rules cannot tell; VLMEvalKit then asks its
LLM judge, or counts the answer wrong when it has none).

Letter rules (`can_infer_option`), on the answer with the characters `.()[],:;!*#{}` turned
into spaces and split on whitespace into tokens:

1. an answer containing "Failed to obtain answer via API" matches no letter;
2. an answer containing one of `REFUSALS` is "Z";
3. if exactly one option letter occurs as a token, that letter; since 2025-08 only when its
   first occurrence is among the last four tokens ("B is wrong, the answer is cat" is not B);
4. if no option letter occurs as a token but "Z" does: "Z";
5. since 2026-06: "answer is X" anywhere, case-insensitive, X in A-D and an option ("The
   correct answer is **B**", also "the answer is a dog", which VLMEvalKit reads as A).

Text rule (`can_infer_text`): the lower-cased answer contains exactly one option's lower-cased
text; since 2025-08 only for answers at most twice as long as all option texts together.

Option letters are the option columns with a value, in letter order (a rule that scans
options returns the first in that order).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Matcher:
    """One version of VLMEvalKit's matching rules.

    Attributes:
        name: the `--matcher` value.
        commit: the VLMEvalKit commit whose rules these are (the newest with them).
        describes: which VLMEvalKit versions use these rules.
        letter_near_end: rule 3 wants the letter among the last four tokens.
        text_length_cap: the text rule ignores answers longer than twice the options' text.
        answer_is: rule 5 is on.
    """

    name: str
    commit: str
    describes: str
    letter_near_end: bool
    text_length_cap: bool
    answer_is: bool

    @property
    def scorer(self) -> dict:
        """The official code these rules reproduce, for the score JSON."""
        return {
            "repository": "open-compass/VLMEvalKit",
            "file": "vlmeval/utils/matching_util.py, vlmeval/dataset/utils/multiple_choice.py",
            "commit": self.commit,
            "matcher": self.name,
            "versions": self.describes,
        }


MATCHERS = {
    matcher.name: matcher
    for matcher in (
        Matcher(
            "current",
            "e8e78f05f3080fe28154f2130321f17951c3be94",
            "main since a67ace5 (2026-06-17, 'answer is X' rule)",
            letter_near_end=True,
            text_length_cap=True,
            answer_is=True,
        ),
        Matcher(
            "2025-08",
            "590f052a96c47b1b52ca0d6ce7fa110e47a945f5",
            "main from c337155 (2025-08-04) to before a67ace5 (2026-06-17)",
            letter_near_end=True,
            text_length_cap=True,
            answer_is=False,
        ),
        Matcher(
            "v0.2",
            "8eb37bb96bc508bd016000318548854fdfa1bd30",
            "releases v0.2 and v0.3rc1, main before c337155 (2025-08-04)",
            letter_near_end=False,
            text_length_cap=False,
            answer_is=False,
        ),
    )
}
DEFAULT_MATCHER = "current"

API_FAILURE = "Failed to obtain answer via API"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
"""Phrases that make VLMEvalKit read an answer as "Z" (no option)."""

_BLANKED = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"answer\s+is\s+\**([abcd])", re.IGNORECASE)
_LAST_TOKENS = 4


def get_matcher(name: str) -> Matcher:
    """The rules called `name`; `ValueError` listing the known ones otherwise."""
    if name not in MATCHERS:
        raise ValueError(f"Unknown matcher {name!r}; known: {', '.join(MATCHERS)}.")
    return MATCHERS[name]


def _tokens(answer: str) -> list[str]:
    for char in _BLANKED:
        answer = answer.replace(char, " ")
    return answer.split()


def infer_letter(answer: str, letters: list[str], matcher: Matcher) -> str | None:
    """The letter rules (module docstring, rules 1-5); None when they do not decide."""
    if API_FAILURE in answer:
        return None
    if any(phrase in answer for phrase in REFUSALS):
        return "Z"
    tokens = _tokens(answer)
    named = [letter for letter in letters if letter in tokens]
    if len(named) == 1:
        position = tokens.index(named[0])
        if not matcher.letter_near_end or position >= len(tokens) - _LAST_TOKENS:
            return named[0]
    elif not named and "Z" in tokens:
        return "Z"
    if matcher.answer_is:
        match = _ANSWER_IS.search(answer)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    return None


def infer_text(answer: str, choices: Mapping[str, str], matcher: Matcher) -> str | None:
    """The option-text rule; None unless exactly one option's text occurs in the answer."""
    answer = answer.lower()
    if matcher.text_length_cap and len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    found = [letter for letter, text in choices.items() if text.lower() in answer]
    return found[0] if len(found) == 1 else None


def infer_choice(
    answer: str, choices: Mapping[str, str], matcher: Matcher | str = DEFAULT_MATCHER
) -> str | None:
    """The letter `answer` picks, "Z" for none, or None when the rules cannot tell.

    Args:
        answer: the model's answer, as VLMEvalKit reads it (see `mmbench.prediction_text`).
        choices: option letter -> option text, in letter order, options without a value
            left out.
        matcher: a `Matcher` or its name.
    """
    if isinstance(matcher, str):
        matcher = get_matcher(matcher)
    letter = infer_letter(answer, list(choices), matcher)
    return letter if letter is not None else infer_text(answer, choices, matcher)
