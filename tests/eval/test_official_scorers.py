"""Every scorer against numbers computed by the benchmark's official code.

Each folder under `tests/fixtures/scoring/` holds benchmark-format inputs, `expected.json`
(the official code's overall number and per-item values) and a README naming the repository,
commit and command that produced them. The scorer runs through `llavamini eval score`.
"""

import argparse
import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from llavamini.eval.cli import add_commands, compute_score
from llavamini.eval.metrics import judge as judge_module

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scoring"


def _score(task: str, fixture: str, tmp_path: Path, *flags: str, **files: str) -> dict:
    """`llavamini eval score TASK` on a fixture copied to `tmp_path`.

    Args:
        files: `questions=` / `annotations=` file names inside the fixture.
        flags: further command-line flags.
    """
    folder = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, folder)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="eval_command", required=True))
    arguments = ["score", task, "--answers", str(folder / "answers.jsonl"), *flags]
    for name, file in files.items():
        arguments += [f"--{name}", str(folder / file)]
    return compute_score(parser.parse_args(arguments))


def _expected(fixture: str, name: str = "expected.json") -> dict:
    return json.loads((FIXTURES / fixture / name).read_text(encoding="utf-8"))


def _items(result: dict) -> dict:
    return json.loads(Path(result["items"]).read_text(encoding="utf-8"))


def test_vqav2_val_equals_vqaeval_after_the_evalai_processor(tmp_path):
    result = _score(
        "vqav2_val",
        "vqav2_val",
        tmp_path,
        questions="questions.json",
        annotations="annotations.json",
    )
    expected = _expected("vqav2_val")
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert result["per_answer_type"] == expected["per_answer_type"]
    assert result["per_question_type"] == expected["per_question_type"]
    assert _items(result) == expected["items"]
    assert result["scorer"][-1]["repository"] == "GT-Vision-Lab/VQA"


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
    assert result["judge"] is None


def test_mmbench_cn_scores_like_mmbench(tmp_path):
    result = _score("mmbench_cn", "mmbench", tmp_path, annotations="mmbench_dev.tsv")
    expected = _expected("mmbench")
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert _items(result) == expected["items"]


def test_matcher_flag_offers_every_matcher():
    from llavamini.eval.metrics.choice import MATCHERS

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="eval_command", required=True))
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
    asked = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][-1]["content"]
        asked.append(prompt)
        reply = replies.get(_quoted_answer(prompt), "Z")
        return httpx.Response(200, json={"choices": [{"message": {"content": reply}}]})

    real_client = httpx.Client
    monkeypatch.setattr(
        judge_module.httpx,
        "Client",
        lambda **kwargs: real_client(transport=httpx.MockTransport(endpoint), **kwargs),
    )
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


def test_pope_equals_llava_eval_pope(tmp_path):
    result = _score("pope", "pope", tmp_path, questions="llava_pope_test.jsonl", annotations="coco")
    expected = _expected("pope")
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    for split, metrics in expected["per_split"].items():
        for name, value in metrics.items():
            assert result["per_split"][split][name] == pytest.approx(value, abs=1e-9), name
    assert _items(result) == expected["items"]


def test_seed_bench_equals_llava_convert_seed(tmp_path):
    result = _score("seed_bench", "seed_bench", tmp_path, annotations="SEED-Bench.json")
    expected = _expected("seed_bench")
    assert result["accuracy"] == pytest.approx(expected["image"], abs=1e-9)
    assert result["video_accuracy"] == pytest.approx(expected["video"], abs=1e-9)
    assert result["overall_accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert result["per_question_type"] == pytest.approx(expected["per_question_type"], abs=1e-9)
    assert _items(result) == expected["items"]


def test_scienceqa_equals_llava_eval_science_qa(tmp_path):
    result = _score(
        "scienceqa",
        "scienceqa",
        tmp_path,
        questions="llava_test_CQM-A.json",
        annotations=".",
    )
    expected = _expected("scienceqa")
    assert result["accuracy"] == pytest.approx(expected["img_accuracy"], abs=1e-9)
    assert result["overall_accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert _items(result) == expected["items"]


def test_textvqa_equals_llava_eval_textvqa(tmp_path):
    result = _score(
        "textvqa",
        "textvqa",
        tmp_path,
        questions="llava_textvqa_val_v051_ocr.jsonl",
        annotations="TextVQA_0.5.1_val.json",
    )
    expected = _expected("textvqa")
    assert result["accuracy"] == pytest.approx(expected["overall"], abs=1e-9)
    assert _items(result) == expected["items"]
    assert result["missing"] == 1


def test_mme_equals_the_mme_calculation_tool(tmp_path):
    result = _score(
        "mme",
        "mme",
        tmp_path,
        questions="llava_mme.jsonl",
        annotations="MME_Benchmark_release_version",
    )
    expected = _expected("mme")
    assert result["accuracy"] == pytest.approx(expected["perception"], abs=1e-9)
    assert result["cognition"] == pytest.approx(expected["cognition"], abs=1e-9)
    assert result["categories_absent"] == []
    for category, metrics in expected["per_category"].items():
        assert result["per_category"][category] == pytest.approx(metrics, abs=1e-9), category
    assert _items(result) == expected["items"]


def test_gqa_equals_llava_patched_gqa_eval(tmp_path):
    result = _score(
        "gqa",
        "gqa",
        tmp_path,
        questions="llava_gqa_testdev_balanced.jsonl",
        annotations="testdev_balanced_questions.json",
    )
    expected = _expected("gqa")
    for name in ("accuracy", "binary", "open", "distribution"):
        assert result[name] == pytest.approx(expected[name], abs=1e-9), name
    for name in ("per_structural_type", "per_semantic_type", "per_steps", "per_words"):
        assert result[name] == pytest.approx(expected[name], abs=1e-9), name
    assert _items(result) == expected["items"]


@pytest.mark.parametrize("task", ["msvd_qa", "msrvtt_qa", "activitynet_qa"])
def test_video_qa_tallies_judgments_as_the_reference_eval_video_qa(tmp_path, monkeypatch, task):
    """The reference script and our scorer, both given a judge that replies from
    `judge_replies.json` (keyed by the prediction), count alike."""
    replies = json.loads((FIXTURES / "msvd_qa" / "judge_replies.json").read_text("utf-8"))

    def endpoint(request: httpx.Request) -> httpx.Response:
        user = json.loads(request.content)["messages"][-1]["content"]
        prediction = re.search(r"Predicted answer: (.*?)\n\n", user, re.S | re.I).group(1)
        content = replies[prediction]
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})

    real_client = httpx.Client
    monkeypatch.setattr(
        judge_module.httpx,
        "Client",
        lambda **kwargs: real_client(transport=httpx.MockTransport(endpoint), **kwargs),
    )
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
