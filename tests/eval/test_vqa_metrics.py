"""VQA normalisation and accuracy; the VQAv2 (val and test-dev) and TextVQA scorers."""

import json
from itertools import combinations

import pytest

from llavamini.eval.metrics.vqa import (
    CONTRACTIONS,
    leave_one_out_accuracy,
    normalize_answer,
    normalize_for_submission,
    round_half_away,
    textvqa_accuracy,
    vqa_accuracy,
)
from llavamini.eval.tasks import get_task
from llavamini.eval.tasks.base import ScoreInputs
from tests.eval.helpers import answer, write_json, write_jsonl


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number words
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("The cat", "cat"),  # articles
        ("a red car", "red car"),
        ("an apple.", "apple"),  # trailing period
        ("3.5", "3.5"),  # a decimal point stays
        ("1,000", "1000"),  # digit-comma-digit: marks deleted, not spaced
        ("yes!", "yes"),
        ("black/white", "black white"),  # a mark between letters becomes a space
        ("dont", "don't"),  # contractions restored
        ("its", "its"),  # ... but not when the bare form is a word
        ("  Yes \n", "yes"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_contraction_table_is_the_official_one():
    """One apostrophe missing is restored, two are not; the backwards entry is kept."""
    assert CONTRACTIONS["couldn'tve"] == "couldn't've"
    assert CONTRACTIONS["couldnt've"] == "couldn't've"
    assert "couldntve" not in CONTRACTIONS
    assert CONTRACTIONS["somebody'd"] == "somebodyd"
    for word in ("wed", "well", "ill", "lets", "shed", "hell"):
        assert word not in CONTRACTIONS


def test_normalize_for_submission_is_the_evalai_processor():
    assert normalize_for_submission("Yes, it is.") == "yes it is"
    assert normalize_for_submission("The man's hat?") == "man 's hat"
    assert normalize_for_submission("Two") == "2"


def _brute_force_accuracy(answer_text, humans):
    """min(#matches among the other 9 / 3, 1), averaged over every choice of 9 of the 10."""
    subsets = list(combinations(range(len(humans)), len(humans) - 1))
    total = 0.0
    for subset in subsets:
        matches = sum(humans[i] == answer_text for i in subset)
        total += min(1.0, matches / 3)
    return total / len(subsets)


@pytest.mark.parametrize("agreeing", range(0, 11))
def test_leave_one_out_accuracy_matches_the_definition(agreeing):
    humans = ["dog"] * agreeing + [f"other{i}" for i in range(10 - agreeing)]
    expected = _brute_force_accuracy("dog", humans)
    records = [{"answer": human, "answer_id": i} for i, human in enumerate(humans)]
    assert leave_one_out_accuracy("dog", records) == pytest.approx(expected)


def test_partial_agreement_gives_the_known_vqa_credits():
    humans = lambda k: ["red"] * k + ["blue"] * (10 - k)  # noqa: E731
    assert [round(vqa_accuracy("red", humans(k)), 6) for k in (0, 1, 2, 3, 4)] == [
        0.0,
        0.3,
        0.6,
        0.9,
        1.0,
    ]


def test_vqa_accuracy_processes_both_sides_when_humans_disagree():
    # Annotators disagree, so both sides are processed ("t-shirt" -> "t shirt").
    humans = ["t-shirt"] * 4 + ["shirt"] * 6
    assert vqa_accuracy("T-shirt.", humans) == 1.0
    assert vqa_accuracy("a dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_compares_agreeing_humans_verbatim():
    """The official tool skips processing when all 10 agree, on both sides."""
    assert vqa_accuracy("2", ["Two"] * 10) == 0.0
    assert vqa_accuracy("Two", ["2"] * 10) == 0.0
    assert vqa_accuracy(normalize_for_submission("Two"), ["2"] * 10) == 1.0


def test_percentages_round_as_python_2_did():
    """vqaEval.py's round(): exact halves go away from zero; binary values below a half stay."""
    assert round_half_away(0.125) == 0.13  # Python 3's round gives 0.12
    assert round_half_away(2.675) == 2.67  # 2.675 is 2.67499999... in binary
    assert round_half_away(100 * 2 / 3) == 66.67


def test_textvqa_accuracy_normalises_both_sides():
    humans = ["Coca-Cola"] * 2 + ["coca cola"] * 2 + ["pepsi"] * 6
    assert textvqa_accuracy("coca cola", humans) == pytest.approx(
        _brute_force_accuracy("coca cola", ["coca cola"] * 4 + ["pepsi"] * 6)
    )


def _vqav2_val_files(tmp_path):
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"question_id": 1, "image_id": 42, "question": "How many dogs?"},
            {"question_id": 2, "image_id": 42, "question": "Is it sunny?"},
            {"question_id": 3, "image_id": 7, "question": "What color is the bus?"},
        ],
    }
    annotations = {
        "annotations": [
            {
                "question_id": 1,
                "answer_type": "number",
                "question_type": "how many",
                "answers": [{"answer": "2", "answer_id": i} for i in range(10)],
            },
            {
                "question_id": 2,
                "answer_type": "yes/no",
                "question_type": "is it",
                "answers": [
                    {"answer": a, "answer_id": i} for i, a in enumerate(["yes"] * 2 + ["no"] * 8)
                ],
            },
            {
                "question_id": 3,
                "answer_type": "other",
                "question_type": "what color",
                "answers": [{"answer": "red", "answer_id": i} for i in range(10)],
            },
        ]
    }
    return (
        write_json(tmp_path / "questions.json", questions),
        write_json(tmp_path / "annotations.json", annotations),
    )


def test_vqav2_val_reads_official_questions(tmp_path):
    questions_path, _ = _vqav2_val_files(tmp_path)
    task = get_task("vqav2_val")
    questions = task.read_questions(questions_path, "/coco/val2014")
    assert questions[0].visual == "/coco/val2014/COCO_val2014_000000000042.jpg"
    assert task.question_text(questions[0]) == (
        "How many dogs?\nAnswer the question using a single word or phrase."
    )


def test_vqav2_val_score_per_answer_type(tmp_path):
    questions_path, annotations_path = _vqav2_val_files(tmp_path)
    answers = [
        answer(1, "Two", "How many dogs?"),  # all 10 said "2": full credit
        answer(2, "Yes.", "Is it sunny?"),  # 2 of 10 said yes: 0.6
    ]  # question 3 unanswered: 0
    result = get_task("vqav2_val").score(
        ScoreInputs(answers, questions_path, annotations_path, str(tmp_path / "answers"))
    )
    assert result["per_answer_type"] == {"number": 100.0, "other": 0.0, "yes/no": 60.0}
    assert result["accuracy"] == pytest.approx((100 + 60 + 0) / 3, abs=0.01)
    assert result["missing"] == 1
    with open(result["submission"]) as file:
        assert json.load(file) == [
            {"question_id": 1, "answer": "2"},
            {"question_id": 2, "answer": "yes"},
            {"question_id": 3, "answer": ""},
        ]


def test_vqav2_test_dev_submission_lists_the_whole_split(tmp_path):
    rows = [
        {"question_id": qid, "image": f"{qid}.jpg", "text": f"q{qid}?\nAnswer briefly."}
        for qid in (10, 11, 12)
    ]
    full_split = write_jsonl(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", rows)
    answers = [answer(10, "The Dog.", "q10?\nAnswer briefly."), answer(12, "Three", "q12?")]
    result = get_task("vqav2").score(ScoreInputs(answers, full_split, None, str(tmp_path / "a")))
    assert result["accuracy"] is None
    with open(result["submission"]) as file:
        assert json.load(file) == [
            {"question_id": 10, "answer": "dog"},
            {"question_id": 11, "answer": ""},
            {"question_id": 12, "answer": "3"},
        ]


def test_vqav2_score_rejects_answers_to_unknown_questions(tmp_path):
    full_split = write_jsonl(tmp_path / "split.jsonl", [{"question_id": 1, "text": "q"}])
    with pytest.raises(ValueError, match="not in"):
        get_task("vqav2").score(
            ScoreInputs([answer(99, "x")], full_split, None, str(tmp_path / "a"))
        )


def test_textvqa_score_matches_by_image_and_question(tmp_path):
    suffix = "Answer the question using a single word or phrase."
    rows = [
        {
            "question_id": "img1",
            "image": "img1.jpg",
            "text": f"what brand is it?\nReference OCR token: Coca, Cola\n{suffix}",
        },
        {"question_id": "img1", "image": "img1.jpg", "text": f"what year?\n{suffix}"},
    ]
    questions = write_jsonl(tmp_path / "textvqa.jsonl", rows)
    labels = {
        "data": [
            {
                "question_id": 5,
                "image_id": "img1",
                "question": "What brand is it?",
                "answers": ["coca cola"] * 3 + ["coke"] * 7,
            },
            {
                "question_id": 6,
                "image_id": "img1",
                "question": "What year?",
                "answers": ["1999"] * 10,
            },
        ]
    }
    annotations = write_json(tmp_path / "labels.json", labels)
    answers = [
        answer("img1", "Coca-Cola", rows[0]["text"]),
        answer("img1", "1999.", rows[1]["text"]),
    ]
    result = get_task("textvqa").score(
        ScoreInputs(answers, questions, annotations, str(tmp_path / "a"))
    )
    assert result["accuracy"] == pytest.approx((90 + 100) / 2)
