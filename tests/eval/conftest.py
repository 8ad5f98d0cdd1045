"""Fixtures of the evaluation tests: a tiny checkpoint, built and loaded once per session."""

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random LLaVA-Mini (56 px images) saved like a release."""
    from llavamini.apps.tiny import build_tiny_checkpoint

    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llavamini"
    return build_tiny_checkpoint(str(folder), image_size=56)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_checkpoint):
    from llavamini.model.loading import ModelSpec

    return ModelSpec(tiny_checkpoint, device="cpu", dtype="float32").load()


@pytest.fixture(autouse=True)
def no_judge_from_the_environment(monkeypatch):
    """Scorers use a judge configured in the environment (MMBench's fallback): tests set
    theirs explicitly."""
    for name in ("LLAVAMINI_JUDGE_BASE_URL", "OPENAI_BASE_URL", "LLAVAMINI_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
