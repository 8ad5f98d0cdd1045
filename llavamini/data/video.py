"""Video frames: one sampling policy for training, chat and evaluation
(docs/compatibility.md K8, F16).

`sample_frame_indices` takes `min(total, floor(duration * fps))` frames (at least one), capped at
`max_frames`, at the midpoints of equal segments, as the reference does at 1 fps. Frames are
decoded with decord when it is installed, else with PyAV, and resized to the vision tower's
square input with nearest-neighbour sampling (the reference's `F.interpolate` default).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from llavamini.data.image_processing import processor_image_size, split_image

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
"""File suffixes read as videos (in the order evaluation looks for a video's file)."""


MAX_VIDEO_FRAMES = 180
"""The project's one cap on frames per video: the default of `LlavaMiniProcessor`, of the commands
(`chat`, `serve`, `gradio`), of training and of `data check`, so that a long video at 1 fps (10
hours: 36000 frames) costs at most this many frames of memory. `llavamini eval run` keeps the
reference's no cap (`--video-max-frames` sets one)."""


def media_kind(path: str) -> str:
    """'video' for a file with a `VIDEO_EXTENSIONS` suffix, else 'image'."""
    return "video" if path.lower().endswith(VIDEO_EXTENSIONS) else "image"


def sample_frame_indices(
    total_frames: int, avg_fps: float, fps: float = 1.0, max_frames: int | None = None
) -> list[int]:
    """Indices of the frames to use, in time order.

    Args:
        total_frames: frames in the video (> 0).
        avg_fps: the video's frame rate.
        fps: frames to take per second of video (1.0 in the paper and the reference).
        max_frames: cap on the number of frames (None: no cap, as the reference's inference).
    """
    if total_frames <= 0:
        raise ValueError(f"A video needs at least one frame, got total_frames={total_frames}.")
    wanted = math.floor(total_frames / avg_fps * fps) if avg_fps > 0 else total_frames
    count = max(1, min(total_frames, wanted))
    if max_frames is not None:
        count = min(count, max_frames)
    segment = (total_frames - 1) / count
    return [(round(segment * i) + round(segment * (i + 1))) // 2 for i in range(count)]


def video_backend() -> str:
    """'decord' when importable, else 'av' (PyAV)."""
    return "decord" if importlib.util.find_spec("decord") is not None else "av"


def load_video(
    path: str, fps: float = 1.0, max_frames: int | None = None, backend: str | None = None
) -> np.ndarray:
    """Decode the sampled frames of `path` -> `(T, H, W, 3)` uint8 RGB.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file when no frame
    can be decoded.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Video file not found: {path}")
    if backend is not None and backend not in READERS:
        raise ValueError(f"Unknown video backend {backend!r}; known: {sorted(READERS)}.")
    chosen = backend or video_backend()
    try:
        frames = READERS[chosen](path, fps, max_frames)
    except ValueError as error:
        if backend is not None or chosen == "av":
            raise
        # decord2 fails on some frame sizes (e.g. 32, 48 or 96 pixels wide) on some CPUs, where
        # PyAV reads them.
        logger.warning("decord could not read %s (%s); decoding it with PyAV", path, error)
        frames = READERS["av"](path, fps, max_frames)
    if len(frames) == 0:
        raise ValueError(f"No decodable video frames in {path}.")
    return frames


def _read_with_decord(path: str, fps: float, max_frames: int | None) -> np.ndarray:
    # decord and PyAV are optional (the `video` extra): imported only to decode a video.
    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
    except (RuntimeError, decord.DECORDError) as error:
        # An unreadable file is a RuntimeError; a stream whose frames are missing (an index
        # without frame data) a DECORDError, raised while decord sets up its decoder.
        raise ValueError(f"Cannot decode video {path}: {error}") from error
    if len(reader) == 0:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    indices = sample_frame_indices(len(reader), reader.get_avg_fps(), fps, max_frames)
    try:
        frames = reader.get_batch(indices).asnumpy()
    except decord.DECORDError as error:
        raise ValueError(f"decord failed on {path}: {error}") from error
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"decord returned frames of shape {frames.shape} for {path}.")
    return frames


def _read_with_av(path: str, fps: float, max_frames: int | None) -> np.ndarray:
    import av  # optional, as decord above

    try:
        container = av.open(path)
    except av.error.FFmpegError as error:
        raise ValueError(f"Cannot decode video {path}: {error}") from error
    with container:
        if not container.streams.video:
            raise ValueError(f"No video stream in {path}.")
        stream = container.streams.video[0]
        total = stream.frames or _count_frames(path)
        if total == 0:
            return np.zeros((0, 1, 1, 3), dtype=np.uint8)
        indices = sample_frame_indices(total, float(stream.average_rate or 0), fps, max_frames)
        wanted, frames = set(indices), {}
        # Sequential decoding: seeking restarts at a keyframe for every frame, far slower.
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= indices[-1]:
                break
    return np.stack([frames[i] for i in indices if i in frames]) if frames else frames


READERS = {"decord": _read_with_decord, "av": _read_with_av}
"""Video decoders by backend name: `(path, fps, max_frames) -> (T, H, W, 3)` uint8, raising
`ValueError` naming the file when it cannot be decoded."""


def _count_frames(path: str) -> int:
    import av  # optional, as decord above

    with av.open(path) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def process_video(frames: np.ndarray, image_processor, config) -> torch.Tensor:
    """`(T, H, W, 3)` uint8 frames -> `(T, parts, 3, S, S)` pixel values for the model.

    Each frame is resized to S x S (S = the processor's output size) with nearest-neighbour
    sampling, without keeping the aspect ratio or padding (as the reference), then split into
    crops when `config.resolution_ratio` > 1 and normalised by the CLIP processor.
    """
    size = processor_image_size(image_processor)
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    resized = F.interpolate(tensor, size=(size, size), mode="nearest").to(torch.uint8)
    video = []
    for frame in resized.permute(0, 2, 3, 1).numpy():
        parts = split_image(Image.fromarray(frame), config.resolution_ratio)
        video.append(image_processor(images=parts, return_tensors="pt")["pixel_values"])
    return torch.stack(video)
