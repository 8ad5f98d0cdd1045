"""Which option a free-text answer to a multiple-choice question picks (MMBench).

`extract_choice(text, options)` tries, in order, rules from the most to the least explicit and
returns the first letter found, or None when the answer names no option or several:

1. the whole answer is a letter: "B", "b", "B.", "(B)", "B)", "[B]", "B。";
2. the answer starts with a letter and a separator: "B. cat", "(B) cat", "B: cat", "B) cat";
3. a phrase names it: "The answer is B", "Answer: (C)", "the correct option is D",
   "答案是B", "选项C", "选择 A";
4. the option's own text: the answer equals one option's text, or contains exactly one option's
   text as a whole word (an option whose text lies inside another matched option's text yields);
5. exactly one distinct standalone capital option letter appears ("I think B is right"); an
   "A" that starts a sentence and is followed by a lower-case word is the article, not a letter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_OPEN = r"[\(\[（【]"
_CLOSE = r"[\)\]）】]"
_STOP = r"[.:：。．,，!！]"

_BARE_LETTER = re.compile(rf"{_OPEN}?\s*([A-Za-z])\s*{_CLOSE}?\s*{_STOP}?")
_LEADING_LETTER = re.compile(rf"{_OPEN}?([A-Z])(?:{_CLOSE}|{_STOP})")
_ANSWER_PHRASES = (
    re.compile(
        r"(?i:\b(?:answer|option|choice)\s*(?:is|would\s+be|should\s+be|will\s+be)?\s*[:：]?\s*)"
        rf"{_OPEN}?([A-Z])(?![A-Za-z])"
    ),
    re.compile(
        rf"(?:答案|选项|选择|应选|选)\s*(?:是|为|应该是|应为)?\s*[:：]?\s*{_OPEN}?([A-Z])(?![A-Za-z])"
    ),
)
_LONE_LETTER = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")
_ARTICLE_A = re.compile(r"A\s+[a-z]")
_SENTENCE_START = re.compile(r"(?:^|[.!?。！？]\s*)$")


def _normalise(text: str) -> str:
    """Lower case, whitespace collapsed, trailing sentence punctuation dropped."""
    return re.sub(r"\s+", " ", text).strip().lower().rstrip(".。!！ ")


def _bare_letter(text: str, options: Mapping[str, str]) -> str | None:
    match = _BARE_LETTER.fullmatch(text)
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    return None


def _leading_letter(text: str, options: Mapping[str, str]) -> str | None:
    match = _LEADING_LETTER.match(text)
    if match and match.group(1) in options:
        return match.group(1)
    return None


def _answer_phrase(text: str, options: Mapping[str, str]) -> str | None:
    for pattern in _ANSWER_PHRASES:
        for match in pattern.finditer(text):
            if match.group(1) in options:
                return match.group(1)
    return None


def _contains_word(haystack: str, needle: str) -> bool:
    """`needle` occurs in `haystack` not glued to ASCII letters or digits on either side."""
    pattern = rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])"
    return re.search(pattern, haystack) is not None


def _option_text(text: str, options: Mapping[str, str]) -> str | None:
    answer = _normalise(text)
    texts = {letter: _normalise(option) for letter, option in options.items() if option.strip()}
    exact = [letter for letter, option in texts.items() if option == answer]
    if len(exact) == 1:
        return exact[0]
    found = [letter for letter, option in texts.items() if _contains_word(answer, option)]
    # "black cat" and "cat" both occur in "a black cat": the longer, more specific one wins.
    found = [
        letter
        for letter in found
        if not any(other != letter and texts[letter] in texts[other] for other in found)
    ]
    return found[0] if len(found) == 1 else None


def _lone_letter(text: str, options: Mapping[str, str]) -> str | None:
    letters = set()
    for match in _LONE_LETTER.finditer(text):
        letter = match.group(1)
        at_sentence_start = _SENTENCE_START.search(text[: match.start()]) is not None
        if letter == "A" and at_sentence_start and _ARTICLE_A.match(text, match.start()):
            continue
        if letter in options:
            letters.add(letter)
    return letters.pop() if len(letters) == 1 else None


_RULES = (_bare_letter, _leading_letter, _answer_phrase, _option_text, _lone_letter)


def extract_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter `text` picks, or None.

    Args:
        text: the model's answer.
        options: option letter ("A", "B", ...) -> option text.
    """
    text = text.strip()
    if not text:
        return None
    for rule in _RULES:
        letter = rule(text, options)
        if letter is not None:
            return letter
    return None
