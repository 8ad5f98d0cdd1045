"""Every scorer against numbers computed by the benchmark's official code.

Each folder under `tests/fixtures/scoring/` holds benchmark-format inputs, `expected.json`
(the official code's overall number and per-item values) and a README naming the repository,
commit and command that produced them. The scorer runs through `llavamini eval score`.
"""

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from llavamini.eval.cli import build_parser, compute_score
from llavamini.eval.metrics import judge as judge_module
from llavamini.eval.metrics.judge import JudgeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scoring"


def _score(task: str, fixture: str, tmp_path: Path, *flags: str, **files: str) -> dict:
    """`llavamini eval score TASK` on a fixture copied to `tmp_path`.

    Args:
        files: `questions=` / `annotations=` file names inside the fixture.
        flags: further command-line flags.
    """
    folder = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, folder)
    parser = build_parser()
    arguments = ["score", task, "--answers", str(folder / "answers.jsonl"), *flags]
    for name, file in files.items():
        arguments += [f"--{name}", str(folder / file)]
    args = parser.parse_args(arguments)
    return compute_score(**args.func.arguments(args))


def _expected(fixture: str, name: str = "expected.json") -> dict:
    return json.loads((FIXTURES / fixture / name).read_text(encoding="utf-8"))


def _items(result: dict) -> dict:
    return json.loads(Path(result["items"]).read_text(encoding="utf-8"))


def _assert_close(actual, expected, where: str) -> None:
    """Numbers within 1e-9, nested dicts key by key, anything else equal."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) >= set(expected), where
        for key, value in expected.items():
            _assert_close(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-9), where
    else:
        assert actual == expected, where


def _fake_judge(monkeypatch, reply_to) -> list[str]:
    """Route the judge client to an in-process endpoint answering `reply_to(user message)`;
    returns the list the user messages it receives are appended to."""
    asked = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        user = json.loads(request.content)["messages"][-1]["content"]
        asked.append(user)
        content = reply_to(user)
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})

    real_client = httpx.Client
    monkeypatch.setattr(
        judge_module.httpx,
        "Client",
        lambda **kwargs: real_client(transport=httpx.MockTransport(endpoint), **kwargs),
    )
    return asked


OFFICIAL_NUMBERS = {
    # task: (fixture, input files, {result key: expected.json key})
    "vqav2_val": (
        "vqav2_val",
        {"questions": "questions.json", "annotations": "annotations.json"},
        {"accuracy": "overall", "per_answer_type": "per_answer_type"}
        | {"per_question_type": "per_question_type"},
    ),
    "pope": (
        "pope",
        {"questions": "llava_pope_test.jsonl", "annotations": "coco"},
        {"accuracy": "overall", "per_split": "per_split"},
    ),
    "seed_bench": (
        "seed_bench",
        {"annotations": "SEED-Bench.json"},
        {"accuracy": "image", "video_accuracy": "video", "overall_accuracy": "overall"}
        | {"per_question_type": "per_question_type"},
    ),
    "scienceqa": (
        "scienceqa",
        {"questions": "llava_test_CQM-A.json", "annotations": "."},
        {"accuracy": "img_accuracy", "overall_accuracy": "overall"},
    ),
    "textvqa": (
        "textvqa",
        {"questions": "llava_textvqa_val_v051_ocr.jsonl", "annotations": "TextVQA_0.5.1_val.json"},
        {"accuracy": "overall"},
    ),
    "mme": (
        "mme",
        {"questions": "llava_mme.jsonl", "annotations": "MME_Benchmark_release_version"},
        {"accuracy": "perception", "cognition": "cognition", "per_category": "per_category"},
    ),
    "gqa": (
        "gqa",
        {"questions": "llava_gqa_testdev_balanced.jsonl"}
        | {"annotations": "testdev_balanced_questions.json"},
        {"accuracy": "accuracy", "binary": "binary", "open": "open"}
        | {"distribution": "distribution", "per_structural_type": "per_structural_type"}
        | {"per_semantic_type": "per_semantic_type", "per_steps": "per_steps"}
        | {"per_words": "per_words"},
    ),
}


@pytest.mark.parametrize("task", sorted(OFFICIAL_NUMBERS))
def test_scorer_equals_the_official_code(tmp_path, task):
    fixture, files, keys = OFFICIAL_NUMBERS[task]
    result = _score(task, fixture, tmp_path, **files)
    expected = _expected(fixture)
    for result_key, expected_key in keys.items():
        _assert_close(result[result_key], expected[expected_key], result_key)
    assert _items(result) == expected["items"]
    assert result["scorer"] and all("commit" in code for code in result["scorer"])


@pytest.mark.parametrize(
    ("matcher", "expected_file"),
    [
        ("current", "expected.json"),
        ("2025-08", "expected_2025-08.json"),
        ("v0.2", "expected_v0.2.json"),
    ],
)
def test_mmbench_equals_vlmevalkit_circular_eval(tmp_path, matcher, expected_file):
    result = _score(
        "mmbench", "mmbench", tmp_path, "--matcher", matcher, annotations="mmbench_dev.tsv"
    )
    expected = _expected("mmbench", expected_file)
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert result["per_category"] == pytest.approx(expected["per_category"], abs=1e-9)
    assert result["per_l2_category"] == pytest.approx(expected["per_l2_category"], abs=1e-9)
    assert _items(result) == expected["items"]
    assert result["scorer"][0]["commit"] == expected["official"]["commit"]
    assert result["per_split"] == pytest.approx({"dev": expected["overall"]}, abs=1e-9)
    assert result["judge"] is None


def test_mmbench_cn_scores_like_mmbench(tmp_path):
    result = _score("mmbench_cn", "mmbench", tmp_path, annotations="mmbench_dev.tsv")
    expected = _expected("mmbench")
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert _items(result) == expected["items"]


def test_matcher_flag_offers_every_matcher():
    from llavamini.eval.metrics.choice import MATCHERS

    parser = build_parser()
    for name in MATCHERS:
        assert parser.parse_args(["score", "mmbench", "--answers", "a", "--matcher", name])
    with pytest.raises(SystemExit):
        parser.parse_args(["score", "mmbench", "--answers", "a", "--matcher", "newest"])


def _quoted_answer(prompt: str) -> str:
    """The answer a matching prompt quotes last (our prompts and VLMEvalKit's end alike)."""
    for start, end in (("Answer: ", "\nYour output: "), ("答案: ", "\n输出: ")):
        if prompt.endswith(end):
            return prompt[: -len(end)].rpartition(start)[2]
    raise AssertionError(f"not a matching prompt: {prompt[-80:]!r}")


def test_mmbench_judge_fallback_equals_vlmevalkit_with_the_same_judge(tmp_path, monkeypatch):
    """VLMEvalKit's LLM fallback and ours, both given a judge that replies from
    `judge_replies.json` (keyed by the quoted answer), score the fixture alike; a rerun is
    answered from the cache."""
    replies = json.loads((FIXTURES / "mmbench" / "judge_replies.json").read_text("utf-8"))
    asked = _fake_judge(monkeypatch, lambda prompt: replies.get(_quoted_answer(prompt), "Z"))
    flags = ("--judge-base-url", "http://judge.invalid/v1", "--judge-model", "fake")
    flags += ("--judge-cache", str(tmp_path / "judge_cache"))
    result = _score("mmbench", "mmbench", tmp_path, *flags, annotations="mmbench_dev.tsv")
    expected = _expected("mmbench", "expected_judge.json")
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert _items(result) == expected["items"]
    assert result["judge"]["requests_sent"] == len(asked) > 0
    again = _score("mmbench", "mmbench", tmp_path / "again", *flags, annotations="mmbench_dev.tsv")
    assert again["accuracy"] == result["accuracy"]
    assert again["judge"]["requests_sent"] == 0


@pytest.mark.parametrize("task", ["msvd_qa", "msrvtt_qa", "activitynet_qa"])
def test_video_qa_tallies_judgments_as_the_reference_eval_video_qa(tmp_path, monkeypatch, task):
    """The reference script and our scorer, both given a judge that replies from
    `judge_replies.json` (keyed by the prediction), count alike."""
    replies = json.loads((FIXTURES / "msvd_qa" / "judge_replies.json").read_text("utf-8"))
    quoted = re.compile(r"Predicted answer: (.*?)\n\n", re.S | re.I)
    _fake_judge(monkeypatch, lambda user: replies[quoted.search(user).group(1)])
    flags = ("--judge-base-url", "http://judge.invalid/v1", "--judge-model", "fake")
    flags += ("--judge-retries", "1", "--judge-backoff", "0", "--allow-judge-failures")
    result = _score(
        task, "msvd_qa", tmp_path, *flags, questions="test_q.json", annotations="test_a.json"
    )
    expected = _expected("msvd_qa")
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert result["score"] == pytest.approx(expected["score"], abs=1e-9)
    assert (result["yes"], result["no"], result["judged"]) == (
        expected["yes"],
        expected["no"],
        expected["judged"],
    )
    # An unreadable score adds nothing to the reference's sum, as a score of 0 would.
    items = {k: {"pred": v["pred"], "score": v["score"] or 0} for k, v in _items(result).items()}
    assert items == expected["items"]


def test_vqav2_test_dev_submission_equals_llava_convert_vqav2(tmp_path):
    result = _score("vqav2", "vqav2", tmp_path, questions="llava_vqav2_mscoco_test2015.jsonl")
    expected = _expected("vqav2", "expected_submission.json")
    assert json.loads(Path(result["submission"]).read_text(encoding="utf-8")) == expected
    assert result["accuracy"] is None


def test_mmbench_half_configured_judge_is_an_error(tmp_path):
    with pytest.raises(JudgeError, match="LLAVAMINI_JUDGE_BASE_URL"):
        _score("mmbench", "mmbench", tmp_path, "--judge-model", "x", annotations="mmbench_dev.tsv")


def test_mmbench_judge_failures_stop_unless_allowed(tmp_path, monkeypatch):
    def timeout(self, messages):
        raise httpx.TimeoutException("slow")

    monkeypatch.setattr(judge_module.Judge, "_post", timeout)
    flags = ("--judge-base-url", "http://judge.invalid/v1", "--judge-model", "fake")
    flags += ("--judge-retries", "0")
    with pytest.raises(JudgeError, match="1 attempts"):
        _score("mmbench", "mmbench", tmp_path, *flags, annotations="mmbench_dev.tsv")
    allowed = flags + ("--allow-judge-failures",)
    result = _score("mmbench", "mmbench", tmp_path / "b", *allowed, annotations="mmbench_dev.tsv")
    assert result["judge"]["judge_failed"] > 0
    # Every row the judge could not match is wrong, as without a judge.
    assert result["accuracy"] == pytest.approx(_expected("mmbench")["overall"], abs=1e-9)
