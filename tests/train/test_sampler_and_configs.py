"""The modality-grouped sampler, and every shipped recipe and DeepSpeed config."""

import json
from pathlib import Path

import pytest
import torch

from llavamini.train.arguments import parse_args
from llavamini.train.sampler import ModalityGroupedSampler, modality_grouped_indices

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_grouped_indices_drop_nothing_and_keep_megabatches_of_one_modality():
    lengths = [5, -3, 7, 2, -9, 4, 1, -1, 8, 6, -2]  # 7 multimodal, 4 text-only
    order = modality_grouped_indices(
        lengths, megabatch_size=3, generator=torch.Generator().manual_seed(0)
    )
    assert sorted(order) == list(range(len(lengths)))
    full = len(order) // 3 * 3
    megabatches = [order[i : i + 3] for i in range(0, 9, 3)]
    for batch in megabatches[: (7 // 3) + (4 // 3)]:
        assert len({lengths[i] > 0 for i in batch}) == 1, batch
        assert [abs(lengths[i]) for i in batch] == sorted(
            (abs(lengths[i]) for i in batch), reverse=True
        )
    assert full <= len(order)


def test_sampler_order_depends_on_seed_and_epoch_only():
    lengths = list(range(1, 30)) + [-1] * 7
    a, b = ModalityGroupedSampler(lengths, 4, seed=3), ModalityGroupedSampler(lengths, 4, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == sorted(b)


@pytest.mark.parametrize("recipe", sorted((CONFIGS / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    # bf16/tf32 need a GPU: the CPU overrides are the only change.
    model_args, data_args, training_args = parse_args(
        [str(recipe), "--use_cpu", "true", "--tf32", "false"]
    )
    assert model_args.model_name_or_path and data_args.data_path
    if training_args.deepspeed:
        assert (CONFIGS.parent / training_args.deepspeed).is_file()


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearning_rat: 1e-3\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown training argument 'learning_rat'"):
        parse_args([str(bad)])
    good = tmp_path / "good.yaml"
    good.write_text(
        "model_name_or_path: x\ndata_path: [a.json]\nimage_folder: [d]\nlearning_rate: 1.0e-3\n"
    )
    _, _, args = parse_args([str(good), "--learning_rate", "5e-4", "--output_dir", str(tmp_path)])
    assert args.learning_rate == 5e-4  # the command line overrides the recipe


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "deepspeed").glob("*.json")), ids=lambda p: p.name
)
def test_every_deepspeed_config_validates(path):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers.integrations import HfDeepSpeedConfig

    config = json.loads(path.read_text())
    zero = DeepSpeedZeroConfig(
        **{k: v for k, v in config["zero_optimization"].items() if v != "auto"}
    )
    assert zero.stage == config["zero_optimization"]["stage"]
    assert HfDeepSpeedConfig(config).is_zero3() == (zero.stage == 3)


def test_train_help_lists_the_training_arguments(capsys):
    from llavamini.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--compressor_type" in out and "--max_train_minutes" in out


def test_a_missing_recipe_is_a_one_line_error(capsys):
    from llavamini.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "configs/train/nope.yaml"])
    assert exit_info.value.code == 1
    assert "llavamini train: error: Training recipe not found: configs/train/nope.yaml" in (
        capsys.readouterr().err
    )
