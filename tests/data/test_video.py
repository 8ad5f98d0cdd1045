"""Frame sampling policy and both decoders on a clip whose red channel encodes the frame."""

import numpy as np
import pytest

from llavamini.apps.tiny import tiny_config, tiny_image_processor
from llavamini.data import load_video, process_video, sample_frame_indices, video
from tests.conftest import ramp_frames, write_video


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """4 s at 10 fps, 64 x 48; frame i is filled with red = 6 * i."""
    frames = np.zeros((40, 48, 64, 3), dtype=np.uint8)
    frames[..., 0] = (6 * np.arange(40, dtype=np.uint8))[:, None, None]
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    return str(write_video(path, frames, fps=10, options={"crf": "0"}))


def test_indices_are_segment_midpoints_at_one_fps():
    # get_seq_frames for 40 frames at 10 fps: segment 39/4 = 9.75, round() halves to even.
    assert sample_frame_indices(40, 10.0) == [5, 15, 24, 34]
    assert sample_frame_indices(40, 10.0, fps=2.0) == [2, 7, 12, 17, 22, 26, 31, 36]
    assert sample_frame_indices(40, 10.0, max_frames=2) == [10, 29]
    assert sample_frame_indices(5, 30.0) == [2]  # shorter than a second: one frame, not none
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 30.0)


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_decoders_return_the_sampled_frames(clip_path, backend):
    pytest.importorskip(backend)
    frames = load_video(clip_path, fps=1.0, backend=backend)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    red = frames[..., 0].reshape(4, -1).mean(1)
    np.testing.assert_allclose(red, [6 * i for i in (5, 15, 24, 34)], atol=3)


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_video(str(tmp_path / "nope.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    for backend in ("decord", "av"):
        with pytest.raises(ValueError, match="broken.mp4"):
            load_video(str(broken), backend=backend)


def test_process_video_shape(clip_path):
    frames = load_video(clip_path)
    pixels = process_video(frames, tiny_image_processor(56), tiny_config(10, image_size=56))
    assert pixels.shape == (4, 1, 3, 56, 56)
    hd = process_video(frames, tiny_image_processor(56), tiny_config(10, resolution_ratio=2))
    assert hd.shape == (4, 5, 3, 56, 56)


@pytest.fixture
def narrow_clip(tmp_path):
    """8 frames at 4 fps, 32 x 32 (a width decord2 cannot batch-read on some CPUs)."""
    return str(write_video(tmp_path / "small.mp4", ramp_frames(8, 32, 32, step=20), fps=4))


def assert_narrow_clip_frames(frames):
    # 2 s at 1 fps: frames 2 and 5 of 8, grey levels 40 and 100.
    assert frames.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(frames.reshape(2, -1).mean(1), [40, 100], atol=4)


@pytest.mark.parametrize("backend", ["decord", "av"])
def test_each_backend_reads_the_narrow_clip_or_names_it(narrow_clip, backend):
    """Whether decord2 reads 32-pixel-wide frames depends on the CPU; a backend either returns
    the right frames or raises a `ValueError` naming the file, never wrong frames."""
    pytest.importorskip(backend)
    try:
        frames = load_video(narrow_clip, backend=backend)
    except ValueError as error:
        assert backend == "decord" and "small.mp4" in str(error)
    else:
        assert_narrow_clip_frames(frames)


def test_automatic_backend_falls_back_to_pyav_where_decord_fails(narrow_clip, monkeypatch):
    pytest.importorskip("av")

    def failing_decord(path, fps, max_frames):
        raise ValueError(f"decord failed on {path}: simulated")

    monkeypatch.setitem(video.READERS, "decord", failing_decord)
    monkeypatch.setattr(video, "video_backend", lambda: "decord")
    assert_narrow_clip_frames(load_video(narrow_clip))
    with pytest.raises(ValueError, match="simulated"):  # a backend asked for by name: no fallback
        load_video(narrow_clip, backend="decord")
