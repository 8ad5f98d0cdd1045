"""VLMEvalKit's answer-matching rules, per matcher version (expectations computed with
VLMEvalKit's `can_infer` at each version's commit)."""

import pytest

from llavamini.eval.metrics.choice import MATCHERS, get_matcher, infer_choice

OPTIONS = {"A": "a cat", "B": "a dog", "C": "a black cat", "D": "nothing"}


@pytest.mark.parametrize(
    ("text", "current", "old"),
    [
        ("B", "B", "B"),
        ("(B) a dog", "B", "B"),
        ("B. a dog", "B", "B"),
        ("[C]", "C", "C"),
        ("b", None, None),  # a lower-case letter is not a letter token
        ("A or B", None, None),  # two letters, and no single option text
        ("Z", "Z", "Z"),
        ("Sorry, I can't help with images of people yet.", "Z", "Z"),
        ("a dog", "B", "B"),  # the option's own text
        ("a black cat", "C", "C"),  # "a cat" is not a substring of it
        ("The correct answer is **B**. A is a cat.", "B", "A"),  # 'answer is X' rule, else text
        ("the answer is a dog", "A", "B"),  # 'answer is a' reads as A since 2026-06
        ("B is right because the picture shows a dog on a sofa", "B", "B"),  # by text, then
        ("", None, None),
    ],
)
def test_infer_choice_per_version(text, current, old):
    assert infer_choice(text, OPTIONS, "current") == current
    assert infer_choice(text, OPTIONS, "v0.2") == old


def test_text_rule_ignores_long_answers_since_2025_08():
    long_answer = "After looking at the whole picture carefully, I see a dog there."
    assert infer_choice(long_answer, OPTIONS, "2025-08") is None
    assert infer_choice(long_answer, OPTIONS, "v0.2") == "B"


def test_letter_rule_wants_the_letter_near_the_end_since_2025_08():
    text = "B is what I would pick, given what the picture shows"
    assert infer_choice(text, OPTIONS, "2025-08") is None
    assert infer_choice(text, OPTIONS, "v0.2") == "B"


def test_api_failures_skip_the_letter_rules_only():
    assert infer_choice("Failed to obtain answer via API: B", OPTIONS, "current") is None
    assert infer_choice("Failed to obtain answer via API a dog", OPTIONS, "current") == "B"


def test_matchers_are_named_and_unknown_names_are_refused():
    assert set(MATCHERS) == {"current", "2025-08", "v0.2"}
    with pytest.raises(ValueError, match="known: current"):
        get_matcher("newest")
