"""Fixtures for chat and serving tests: one tiny checkpoint, media files, a loaded model."""

import numpy as np
import pytest
from PIL import Image

from llavamini.apps.tiny import build_tiny_checkpoint
from llavamini.model.loading import load_pretrained
from tests.conftest import TEST_IMAGE_SIZE, ramp_frames, write_video


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny random LLaVA-Mini saved like a release (Llama-3.1 tokenizer tokens)."""
    folder = tmp_path_factory.mktemp("serve") / "tiny-llava-mini"
    return build_tiny_checkpoint(str(folder), seed=0, image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def loaded(tiny_checkpoint):
    return load_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    """An image, a 2 s video, and files that are not what their names say."""
    folder = tmp_path_factory.mktemp("media")
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "picture.png")
    write_video(folder / "clip.mp4", ramp_frames(10, 48, 64, step=20), fps=5)
    (folder / "not_an_image.png").write_bytes(b"these bytes are no image")
    (folder / "no_frames.mp4").write_bytes(b"these bytes hold no video frame")
    return folder
