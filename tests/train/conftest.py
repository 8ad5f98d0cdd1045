"""Tiny training assets (plain LLM, CLIP, shapes data) built once per test session."""

from pathlib import Path

import pytest

from llavamini.apps.tiny import build_tiny_assets

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-assets")
    return build_tiny_assets(str(root), image_size=56, num_train=32, num_val=8)


def run_args(assets: dict, recipe: str, output_dir, *extra: str) -> list[str]:
    """`llavamini train` arguments: a shipped recipe pointed at the session's assets."""
    data = "captions" if "stage1" in recipe else "instruct"
    return [
        str(REPO / "configs" / "train" / recipe),
        "--model_name_or_path", assets["llm"],
        "--vision_tower", assets["clip"],
        "--data_path", assets[data],
        "--image_folder", str(Path(assets[data]).parent),
        "--output_dir", str(output_dir),
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip
