"""`llavamini compare` on tiny checkpoints and the synthetic task: rows, costs, files, refusals."""

import json

import pytest

from llavamini.apps import synthetic
from llavamini.apps.tiny import build_tiny_checkpoint
from llavamini.bench.compare import CompareOptions, compare
from llavamini.cli import main
from llavamini.eval.arguments import TaskFiles
from llavamini.eval.cli import RunOptions
from llavamini.inference import GenerationSettings
from llavamini.model.loading import ModelSpec
from tests.conftest import TEST_IMAGE_SIZE


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A LLaVA-1.5-mode checkpoint, a 1-token one and 4 held-out synthetic questions (56 px
    images: a 4 x 4 grid, 16 patches)."""
    root = tmp_path_factory.mktemp("compare")
    plain = build_tiny_checkpoint(
        str(root / "plain"),
        image_size=TEST_IMAGE_SIZE,
        compressor_type="none",
        prefusion_layer_num=0,
    )
    mini = build_tiny_checkpoint(str(root / "mini"), image_size=TEST_IMAGE_SIZE)
    data = synthetic.write_dataset(str(root / "data"), 2, 4, TEST_IMAGE_SIZE)
    files = TaskFiles(questions=data["val_questions"], visual_folder=str(root / "data"))
    return {"root": root, "plain": plain, "mini": mini, "files": files}


@pytest.fixture(scope="module")
def summary(setup):
    options = CompareOptions(
        checkpoint=setup["plain"],
        methods=("pool", "fastv"),
        budgets=(1, 4, 32),
        trained=(f"1 token={setup['mini']}",),
        output_dir=str(setup["root"] / "out"),
        warmup=0,
        repeats=1,
    )
    return compare(
        RunOptions("synthetic", batch_size=4),
        options,
        ModelSpec("", device="cpu", fastv_layer=1),
        GenerationSettings(max_new_tokens=3),
        files=setup["files"],
    )


def test_every_row_with_its_costs_and_files(summary, setup):
    rows = {row["label"]: row for row in summary["rows"]}
    assert list(rows) == [
        "all tokens",
        "pool 1",
        "pool 4",
        "pool 32",
        "fastv 1",
        "fastv 4",
        "fastv 32",
        "1 token",
    ]
    # 32 > the 16 patches: the row says why instead of vanishing.
    assert "32" in rows["pool 32"]["skipped"] and "1..16" in rows["pool 32"]["skipped"]
    ran = {label: row for label, row in rows.items() if "skipped" not in row}
    for row in ran.values():
        assert 0 <= row["accuracy"] <= 100 and row["answers"]
        assert 0 < row["ttft_min_ms"] <= row["ttft_ms"]
    tokens = {label: row["vision_tokens"] for label, row in ran.items()}
    assert tokens["all tokens"] == 16 and tokens["pool 4"] == 4 and tokens["fastv 1"] == 1
    assert tokens["1 token"] == 1
    flops = {label: row["flops"] for label, row in ran.items()}
    assert flops["pool 1"] < flops["pool 4"] < flops["all tokens"]
    assert flops["fastv 1"] < flops["fastv 4"] < flops["fastv 32"]
    # FastV runs layer 0 over every token: more than pooling to the same budget.
    assert flops["pool 4"] < flops["fastv 4"]
    cache = {label: row["kv_cache_bytes"] for label, row in ran.items()}
    assert cache["pool 1"] * 16 == cache["all tokens"]
    assert cache["pool 1"] < cache["fastv 1"] < cache["all tokens"]
    written = json.loads((setup["root"] / "out" / "compare.json").read_text())
    assert [row["label"] for row in written["rows"]] == list(rows)
    assert written["machine"]["cpus"] >= 1 and written["settings"]["model"]["fastv_layer"] == 1
    assert (setup["root"] / "out" / "compare.png").stat().st_size > 1000


def test_the_command_refuses_an_unknown_method_or_budget(setup, capsys):
    base = ["compare", "synthetic", "--checkpoint", setup["plain"]]
    with pytest.raises(SystemExit):
        main([*base, "--methods", "pool", "tome"])
    assert "tome" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--budgets", "4", "0"])
    assert "--budgets" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'tome'"):
        CompareOptions(checkpoint=setup["plain"], methods=("tome",))
    with pytest.raises(ValueError, match="got -1"):
        CompareOptions(checkpoint=setup["plain"], budgets=(-1,))
    with pytest.raises(ValueError, match="LABEL=PATH"):
        CompareOptions(trained=("no-label",))
    with pytest.raises(ValueError, match="nothing to compare"):
        CompareOptions()
    with pytest.raises(ValueError, match="repeated"):
        CompareOptions(trained=("a=x", "a=y"))
