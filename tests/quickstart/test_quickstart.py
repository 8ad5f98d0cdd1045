"""The quickstart through the real command: a seconds-long smoke run, and the full run (slow)."""

import json

import pytest

from llavamini.cli import main
from llavamini.model.reduction import METHODS


def test_smoke_ablation_writes_results_figures_and_chat(tmp_path, capsys, monkeypatch):
    # Relative folders, as the README's command uses: the tower given to training by a path
    # relative to the working directory must still be found once saved in a checkpoint.
    monkeypatch.chdir(tmp_path)
    out, data = tmp_path / "out", tmp_path / "data"
    main(["quickstart", "--smoke", "--ablation", "--output-dir", "out", "--data-dir", "data"])
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"all-tokens", "one-token", "one-token-prefusion"}
    tokens = {name: r["vision_tokens"] for name, r in results["results"].items()}
    assert tokens == {"all-tokens": 64, "one-token": 1, "one-token-prefusion": 1}
    flops = {name: r["flops"] for name, r in results["results"].items()}
    assert (
        flops["one-token"] < flops["one-token-prefusion"]
        and flops["one-token"] < flops["all-tokens"]
    )
    for result in results["results"].values():
        assert set(result["per_type"]) == {"colour", "count", "existence", "position", "shape"}
    # Each training-free method at 1 and 4 tokens on the all-tokens checkpoint (64 patches).
    free = {row["label"].split(" (")[0]: row for row in results["training_free"]}
    assert set(free) == {f"{m} @ {n}" for m in METHODS for n in (1, 4)}
    assert all("skipped" not in row for row in free.values()) and "not run" not in printed
    assert free["pool @ 1"]["vision_tokens"] == 1 and free["visionzip @ 4"]["vision_tokens"] == 4
    assert free["fastv @ 1"]["vision_tokens"] == 1
    for method in METHODS:
        assert free[f"{method} @ 1"]["flops"] < free[f"{method} @ 4"]["flops"] < flops["all-tokens"]
    assert "prumerge_plus @ 4 (no training)" in printed
    for name in ("loss_curves.png", "accuracy.png", "compression.png", "compare/compare.png"):
        assert (out / name).stat().st_size > 1000, name
    from PIL import Image

    assert Image.open(out / "fresh_image.png").size == (112, 112)
    assert (data / "val_questions.jsonl").is_file() and (
        out / "one-token-prefusion" / "model.safetensors"
    ).is_file()
    assert (
        len(results["chat"]) == 3 and "majority baseline" in printed and "Q: What colour" in printed
    )


def test_compression_attention_rows_are_distributions(tmp_path):
    import torch
    from PIL import Image

    from llavamini.analysis.compression import compression_attention
    from llavamini.apps.tiny import build_tiny_checkpoint
    from llavamini.model.loading import ModelSpec

    Image.new("RGB", (60, 60), (10, 20, 200)).save(tmp_path / "image.png")
    build_tiny_checkpoint(
        str(tmp_path / "hd"), image_size=56, compressor_size=2, resolution_ratio=2
    )
    pixels, attention = compression_attention(
        ModelSpec(str(tmp_path / "hd"), device="cpu").load(), str(tmp_path / "image.png")
    )
    assert pixels.shape == (3, 56, 56)
    assert attention.shape == (4, 8, 8)  # 2 x 2 crops of a 4 x 4 grid, stitched
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(4))


@pytest.mark.slow
def test_full_quickstart_learns(tmp_path):
    """The README's main job (about 9 minutes on 2 idle cores): the trained model answers the
    position-referenced colour questions (the README's runs, idle and busy: 100.0% each)."""
    from llavamini.apps.quickstart import COLOUR_TARGET

    out = tmp_path / "out"
    main(["quickstart", "--output-dir", str(out), "--data-dir", str(tmp_path / "data")])
    results = json.loads((out / "results.json").read_text())
    main_result = results["results"]["one-token-prefusion"]
    assert main_result["per_type"]["colour"] >= COLOUR_TARGET


@pytest.mark.slow
def test_full_ablation_shows_what_pre_fusion_recovers(tmp_path):
    """`--ablation` (about 15 minutes on 2 cores): on the position-referenced colour questions,
    pre-fusion recovers what compressing to one token loses."""
    out = tmp_path / "out"
    main(["quickstart", "--ablation", "--output-dir", str(out), "--data-dir", str(tmp_path / "d")])
    results = json.loads((out / "results.json").read_text())
    colour = {name: r["per_type"]["colour"] for name, r in results["results"].items()}
    # Measured with the step budgets (seed 0): 49.0 / 11.0 / 100.0 (all tokens / 1 token /
    # 1 token + pre-fusion), majority baseline 20.0.
    assert colour["one-token-prefusion"] > colour["one-token"] + 20
    assert colour["one-token-prefusion"] > results["majority_baseline"]["colour"] + 30


def test_quickstart_output_is_the_summary_not_score_json(tmp_path, capsys):
    main(
        [
            "quickstart",
            "--smoke",
            "--output-dir",
            str(tmp_path / "o"),
            "--data-dir",
            str(tmp_path / "d"),
        ]
    )
    printed = capsys.readouterr().out
    assert '"output":' not in printed and "majority baseline" in printed


def test_a_run_that_falls_short_says_so_and_how_to_train_longer():
    from llavamini.apps.quickstart import Plan, falls_short

    result = {
        "label": "1 token + pre-fusion",
        "checkpoint": "out/one-token-prefusion",
        "per_type": {"colour": 41.0},
        "train_steps": 1100,
    }
    message = falls_short(result, {"colour": 20.0}, Plan(seed=2, stage2_steps=1100))
    assert "fell short" in message and "41.0%" in message and "20.0%" in message
    assert "llavamini quickstart --stage2-steps 2200 --seed 2" in message
    assert falls_short({**result, "per_type": {"colour": 92.0}}, {"colour": 20.0}, Plan()) is None
    assert falls_short(result, {"colour": 20.0}, Plan(smoke=True)) is None


def test_the_time_estimate_counts_every_stage():
    from llavamini.apps.quickstart import Plan

    one = Plan().estimated_minutes()
    assert 4 < one < 10  # the measured machine: about 7 minutes
    three = Plan(variants=("all-tokens", "one-token", "one-token-prefusion"))
    assert three.estimated_minutes() > one + 3
