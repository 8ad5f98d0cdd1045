"""Option extraction from free-text multiple-choice answers."""

import pytest

from llavamini.eval.metrics.choice import extract_choice

OPTIONS = {"A": "a cat", "B": "a dog", "C": "a black cat", "D": "nothing"}
OPTIONS_CN = {"A": "红色", "B": "蓝色", "C": "绿色", "D": "黄色"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("B.", "B"),
        (" (B) ", "B"),
        ("[C]", "C"),
        ("(B) a dog", "B"),
        ("B. a dog", "B"),
        ("D: nothing at all", "D"),
        ("The answer is B", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("the correct option is A", "A"),
        ("a dog", "B"),  # the option's own text
        ("There is a black cat on the sofa.", "C"),  # the longer matching option wins
        ("I think D is right.", "D"),
        ("A cat sits on the mat.", "A"),  # option text, and "A" here is the article
        ("A bird", None),  # the article, and no option's text
        ("It could be A or B", None),  # two letters
        ("a cat or a dog", None),  # two options' texts
        ("", None),
        ("E", None),  # not an option
    ],
)
def test_extract_choice_english(text, expected):
    assert extract_choice(text, OPTIONS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("B。", "B"),
        ("答案是C", "C"),
        ("答案：（A）", "A"),
        ("选项D", "D"),
        ("蓝色", "B"),
        ("图中的花是黄色的。", "D"),
        ("红色或者绿色", None),
    ],
)
def test_extract_choice_chinese(text, expected):
    assert extract_choice(text, OPTIONS_CN) == expected


def test_extract_choice_only_considers_given_letters():
    assert extract_choice("C", {"A": "yes", "B": "no"}) is None
    assert extract_choice("The answer is C", {"A": "yes", "B": "no"}) is None
