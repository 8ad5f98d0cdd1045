"""Fixtures for chat and serving tests: media files (the tiny checkpoint and its loaded model
are `tests/conftest.py`'s)."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ramp_frames, write_video


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
