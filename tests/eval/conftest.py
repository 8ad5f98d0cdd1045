"""Fixtures of the evaluation tests: a tiny checkpoint, built and loaded once per session."""

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random LLaVA-Mini (56 px images) saved like a release."""
    from llavamini.tiny import build_tiny_checkpoint

    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llavamini"
    return build_tiny_checkpoint(str(folder), image_size=56)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_checkpoint):
    from llavamini.model.loading import load_pretrained

    loaded = load_pretrained(tiny_checkpoint, dtype="float32", device="cpu")
    loaded.model.eval()
    return loaded
