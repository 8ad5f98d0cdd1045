"""The bad-input battery's one table: hostile inputs and, per front door, the one expected outcome.

A row (`HostileInput`) has an id, a description, a builder that writes its files into a folder
and returns a `Payload`, and one `Expectation` per door in `DOORS`:

- `Accepted(result)`: the door answers; `result` says what (docs) and the test checks the door
  neither failed nor returned an error.
- `Rejected(message, status)`: the door refuses with an error whose text contains `message`
  (the input's problem and the limit or what to do); `status` is the HTTP status of the server.
- `NotApplicable(reason)`: the door cannot be given this input.

Never allowed anywhere: a 500, a traceback to the client, a hang, or unbounded memory. The
table is run by `tests/battery/test_battery.py` and written into `docs/bad_inputs.md` by
`python -m tests.battery.table`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from llavamini.data.video import MAX_VIDEO_FRAMES
from tests.conftest import png_header_only, ramp_frames, write_video

DOORS = {
    "server": "`POST /v1/chat/completions` of `llavamini serve` (media as base64 data URLs)",
    "processor": "`LlavaMiniProcessor.apply_chat_template(..., tokenize=True, return_dict=True)` "
    f"(the processor's defaults: video frames capped at {MAX_VIDEO_FRAMES})",
    "chat": "`llavamini chat --query` one-shot (`llavamini.serve.cli.chat`)",
    "eval": "`llavamini eval run synthetic` on a question file (LLaVA's JSONL schema)",
    "data": "`llavamini data check` on a training manifest (the training reader's checks)",
    "vllm": "the vLLM plug-in's processor (`LlavaMiniMultiModalProcessor.apply`) on the prompt "
    "as vLLM tokenizes it, images as PIL images, a video as a `video_url` hands it over (the "
    "file's bytes); vLLM parses requests, messages and image files before it. Checked in "
    "`.venv-vllm` by `tests/integrations/vllm/test_battery_door.py`, not by the default suite",
}
"""The front doors that read user data, by the name the table uses."""

ELSEWHERE = {"vllm": "tests/integrations/vllm/test_battery_door.py"}
"""Doors whose cells another environment's test checks (`test_battery.py` runs the others)."""

CONTEXT_TOKENS = 4096
"""The tiny checkpoint's context (`max_position_embeddings`); the long prompt is past it."""

LONG_VIDEO_SECONDS = 10 * 3600
"""The long video's duration: 10 hours at 1 frame per second."""

LONG_VIDEO_MEMORY_MB = 16
"""Bound on what a door allocates for the long video (`HostileInput.memory_mb`): its frames up to
the cap are 0.1 MB decoded, all of them 28 MB."""


@dataclass(frozen=True)
class Accepted:
    """The door answers; `result` says with what, and the door's summary of its result
    contains `shows` (when given)."""

    result: str
    shows: str | None = None


@dataclass(frozen=True)
class Rejected:
    """The door refuses with an error containing `message` (server: with HTTP `status`)."""

    message: str
    status: int = 400


@dataclass(frozen=True)
class NotApplicable:
    """The door cannot be given this input, for `reason`."""

    reason: str


Expectation = Accepted | Rejected | NotApplicable


@dataclass(frozen=True)
class Part:
    """One piece of a user message.

    Attributes:
        kind: 'text', 'image', 'video', or any other string (an unknown content-part type).
        value: the text, or a media file's path relative to the media folder.
    """

    kind: str
    value: str


@dataclass(frozen=True)
class Payload:
    """A hostile input as each door takes it.

    Attributes:
        parts: one user message (media first, then text, as every door orders them).
        raw: per door, a raw input that replaces the one built from `parts` (server: the
            request body as bytes or a JSON value; processor: the conversation; eval: the
            question file's bytes; data: the manifest's bytes).
        as_path: the server gets media as paths relative to its media folder, not data URLs.
    """

    parts: tuple[Part, ...]
    raw: Mapping[str, object] = field(default_factory=dict)
    as_path: bool = False

    @property
    def text(self) -> str:
        return "\n".join(part.value for part in self.parts if part.kind == "text")

    @property
    def media(self) -> list[Part]:
        return [part for part in self.parts if part.kind != "text"]


@dataclass(frozen=True)
class HostileInput:
    """One row of the battery.

    Attributes:
        id: short name (test ids, docs).
        description: what the input is, for the docs.
        build: writes the input's files into the media folder it is given and returns the
            payload (the folder's parent is outside the media folder).
        expected: the outcome per door name of `DOORS` (every door named).
        slow: runs only under `-m slow` (large input, over ~5 s).
        memory_mb: at every door, the peak of the memory the door allocates in Python objects
            and NumPy arrays (decoded frames included; `tracemalloc`) stays under it (None:
            not measured).
    """

    id: str
    description: str
    build: Callable[[Path], Payload]
    expected: Mapping[str, Expectation]
    slow: bool = False
    memory_mb: float | None = None

    def __post_init__(self):
        if set(self.expected) != set(DOORS):
            raise ValueError(
                f"{self.id}: expected outcomes for {sorted(DOORS)}, got {sorted(self.expected)}"
            )


QUESTION = "What is in the picture?"


def _image(mode: str, size: tuple[int, int], name: str, fmt: str = "PNG") -> Callable:
    def build(folder: Path) -> Payload:
        Image.new(mode, size).save(folder / name, format=fmt)
        return Payload((Part("image", name), Part("text", QUESTION)))

    return build


def _raw_png(width: int, height: int) -> bytes:
    """A real 8-bit greyscale PNG of zeros (tiny when compressed, whatever its size)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(width) for _ in range(height))  # filter byte, then pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _bytes_file(name: str, data: bytes, kind: str = "image") -> Callable:
    def build(folder: Path) -> Payload:
        (folder / name).write_bytes(data)
        return Payload((Part(kind, name), Part("text", QUESTION)))

    return build


def _truncated_image(folder: Path) -> Payload:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return Payload((Part("image", "truncated.png"), Part("text", QUESTION)))


def _video(name: str, frames: int, fps: int, cut: float | None = None) -> Callable:
    def build(folder: Path) -> Payload:
        write_video(folder / name, ramp_frames(frames, 32, 32, step=7), fps=fps)
        if cut is not None:
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: int(len(data) * cut)])
        return Payload((Part("video", name), Part("text", "What happens?")))

    return build


def _zero_frame_video(folder: Path) -> Payload:
    """An MP4 whose header and index are whole (moved to the front) but whose frame data is
    cut off: the container says there are frames, none decodes."""
    import av

    path = folder / "zero_frames.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=5)
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in ramp_frames(5, 32, 32, step=40):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    mdat = data.index(b"mdat") + 4
    path.write_bytes(data[:mdat])
    return Payload((Part("video", path.name), Part("text", "What happens?")))


def _text(text: str) -> Callable:
    def build(folder: Path) -> Payload:
        return Payload((Part("text", text),))

    return build


def _many_images(count: int) -> Callable:
    def build(folder: Path) -> Payload:
        names = []
        for i in range(count):
            Image.new("RGB", (8, 8), (i, 255 - i, 0)).save(folder / f"many_{i}.png")
            names.append(Part("image", f"many_{i}.png"))
        return Payload((*names, Part("text", "How many pictures?")))

    return build


def _lone_surrogate(folder: Path) -> Payload:
    text = "What is \udcff this?"  # the str of the invalid UTF-8 byte 0xff (surrogateescape)
    return Payload(
        (Part("text", text),),
        raw={
            "server": b'{"messages": [{"role": "user", "content": "What is \xff this?"}]}',
            "eval": b'{"question_id": 1, "text": "What is \xff this?"}\n',
            "data": b'[{"id": "s", "conversations": [{"from": "human", "value": "\xff?"}, '
            b'{"from": "gpt", "value": "ok"}]}]',
        },
    )


def _escaped_surrogate(folder: Path) -> Payload:
    """Valid JSON whose string holds the escape of a lone surrogate: Python decodes it to a
    str that no UTF-8 encoder accepts."""
    text = "What is \udcff this?"
    line = json.dumps({"question_id": 1, "text": text})
    record = {
        "id": "s",
        "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "ok"}],
    }
    return Payload(
        (Part("text", text),),
        raw={
            "server": json.dumps({"messages": [{"role": "user", "content": text}]}).encode(),
            "eval": (line + "\n").encode(),
            "data": json.dumps([record]).encode(),
        },
    )


def _unknown_part(folder: Path) -> Payload:
    (folder / "sound.wav").write_bytes(b"RIFF")
    return Payload((Part("audio_url", "sound.wav"), Part("text", "What do you hear?")))


def _duplicate_ids(folder: Path) -> Payload:
    Image.new("RGB", (16, 16)).save(folder / "dup.png")
    line = {"question_id": 7, "image": "dup.png", "text": QUESTION}
    record = {
        "id": "7",
        "image": "dup.png",
        "conversations": [
            {"from": "human", "value": "<image>\n" + QUESTION},
            {"from": "gpt", "value": "A square."},
        ],
    }
    return Payload(
        (Part("image", "dup.png"), Part("text", QUESTION)),
        raw={
            "eval": (json.dumps(line) + "\n" + json.dumps(line) + "\n").encode(),
            "data": json.dumps([record, record]).encode(),
        },
    )


def _missing_fields(folder: Path) -> Payload:
    return Payload(
        (Part("text", QUESTION),),
        raw={
            "server": {"messages": [{"content": QUESTION}]},
            "processor": [{"content": QUESTION}],
            "eval": b'{"question_id": 1, "image": "x.png"}\n',
            "data": b'[{"id": "no-conversations"}]',
        },
    )


def _wrong_types(folder: Path) -> Payload:
    return Payload(
        (Part("text", QUESTION),),
        raw={
            "server": {"messages": [{"role": "user", "content": 5}]},
            "processor": [{"role": "user", "content": 5}],
            "eval": b'{"question_id": [1], "image": 5, "text": ["What?"]}\n',
            "data": b'[{"id": 1, "image": 5, "conversations": [{"from": "human", "value": '
            b'"<image>\\nq"}, {"from": "gpt", "value": "a"}]}]',
        },
    )


def _outside_folder(folder: Path) -> Payload:
    """An image beside (not inside) the media folder, named with `../`."""
    Image.new("RGB", (16, 16), (9, 9, 9)).save(folder.parent / "secret.png")
    return Payload((Part("image", "../secret.png"), Part("text", QUESTION)), as_path=True)


def _long_video(folder: Path) -> Payload:
    """10 hours at 1 fps, 16 x 16 pixels: 36000 real frames (a few MB)."""
    write_video(
        folder / "ten_hours.mp4",
        ramp_frames(LONG_VIDEO_SECONDS, 16, 16, step=0),
        fps=1,
        options={"preset": "ultrafast"},
    )
    return Payload((Part("video", "ten_hours.mp4"), Part("text", "What happens?")))


def _all(expectation: Expectation, **overrides: Expectation) -> dict[str, Expectation]:
    """`expectation` for every door, `overrides` for some."""
    return {door: overrides.get(door, expectation) for door in DOORS}


def _answered(
    answer: str = "an answer", inputs: str = "model inputs", **overrides: Expectation
) -> dict[str, Expectation]:
    """Accepted everywhere: `answer` where the door answers, `inputs` from the processor, no
    problem from data check; `overrides` for some doors."""
    return {
        **_all(Accepted(answer)),
        "processor": Accepted(inputs),
        "data": Accepted("no problem reported"),
        "vllm": Accepted(inputs),
        **overrides,
    }


VLLM_DECODES = NotApplicable("vLLM's image loader opens the file before the plug-in")
VLLM_PARSES = NotApplicable("vLLM parses the request and its messages before the plug-in")
VLLM_TOKENIZES = NotApplicable("vLLM decodes and tokenizes the text before the plug-in")
ONE_FILE = NotApplicable("one-shot chat takes one --image-file or --video-file")
ONE_VISUAL = NotApplicable("a question has one image or video")
IMAGE_TASK = NotApplicable("the synthetic task asks about images; video tasks share its reader")
NO_PARTS = NotApplicable("no content parts: text and one file")
NO_MESSAGES = NotApplicable("no JSON: a file and a query")
NO_FILE = NotApplicable("no question file: Python values")
LIMIT = "PIL.Image.MAX_IMAGE_PIXELS"
SCALED_BRIEF = f"scaled down so that its padded square fits {LIMIT}"
SCALED = f"an answer ({SCALED_BRIEF})"

CASES: list[HostileInput] = [
    HostileInput(
        "bomb",
        "decompression bomb: a 20000 x 20000 PNG header in 57 bytes",
        _bytes_file("bomb.png", png_header_only(20000, 20000)),
        _all(Rejected(LIMIT), data=Rejected(LIMIT), vllm=VLLM_DECODES),
    ),
    HostileInput(
        "truncated-image",
        "a PNG cut in half",
        _truncated_image,
        _all(
            Rejected("image file is truncated"),
            data=Rejected("[undecodable media]"),
            vllm=VLLM_DECODES,
        ),
    ),
    HostileInput(
        "corrupt-image",
        "bytes that are no image, named .png",
        _bytes_file("corrupt.png", b"these bytes are no image"),
        _all(
            Rejected("cannot identify image file"),
            data=Rejected("[undecodable media]"),
            vllm=VLLM_DECODES,
        ),
    ),
    HostileInput(
        "truncated-video",
        "an MP4 cut in half (its index, at the end, is lost)",
        _video("truncated.mp4", 10, 5, cut=0.5),
        _all(
            Rejected("Cannot decode video"), eval=IMAGE_TASK, data=Rejected("[undecodable media]")
        ),
    ),
    HostileInput(
        "corrupt-video",
        "bytes that are no video, named .mp4",
        _bytes_file("corrupt.mp4", b"these bytes hold no video frame", kind="video"),
        _all(
            Rejected("Cannot decode video"), eval=IMAGE_TASK, data=Rejected("[undecodable media]")
        ),
    ),
    HostileInput(
        "zero-frame-video",
        "an MP4 whose index lists frames but whose frame data is gone",
        _zero_frame_video,
        _all(
            Rejected("No decodable video frames"),
            eval=IMAGE_TASK,
            data=Rejected("[undecodable media]"),
        ),
    ),
    HostileInput(
        "one-frame-video",
        "an MP4 of one frame",
        _video("one_frame.mp4", 1, 5),
        _answered(
            processor=Accepted("model inputs with 1 frame", shows="frames [1]"),
            eval=IMAGE_TASK,
            vllm=Accepted("model inputs with 1 frame", shows="frames [1]"),
        ),
    ),
    HostileInput(
        "image-1x1",
        "an image of 1 x 1 pixel",
        _image("RGB", (1, 1), "dot.png"),
        _answered(),
    ),
    HostileInput(
        "image-1x10000",
        "an image of 1 x 10000 pixels (its padded square would be 10^8 pixels)",
        _image("RGB", (1, 10000), "strip.png"),
        _answered(SCALED, inputs=f"model inputs ({SCALED_BRIEF})"),
        slow=True,
    ),
    HostileInput(
        "image-1x1000000",
        "an image of 1 x 1000000 pixels, 1 KB as PNG (a 10^12-pixel square when padded)",
        _bytes_file("long_strip.png", _raw_png(1, 1_000_000)),
        _answered(SCALED, inputs=f"model inputs ({SCALED_BRIEF})"),
        slow=True,
    ),
    *[
        HostileInput(
            f"mode-{label}",
            f"a {mode} image",
            _image(mode, (20, 12), f"mode_{label}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt),
            _answered("an answer (converted to RGB)"),
        )
        for label, mode, fmt in [
            ("cmyk", "CMYK", "JPEG"),
            ("16bit", "I;16", "PNG"),
            ("palette", "P", "PNG"),
            ("rgba", "RGBA", "PNG"),
            ("la", "LA", "PNG"),
        ]
    ],
    HostileInput(
        "prompt-too-long",
        f"a prompt of 5000 words, past the tiny model's context of {CONTEXT_TOKENS} tokens",
        _text("word " * 5000),
        _all(
            Rejected("exceeds the model's context"),
            processor=Accepted("input_ids longer than the context (generate refuses them)"),
            data=Rejected("[over-length]"),
            vllm=Accepted("a prompt longer than the context (vLLM refuses it: max_model_len)"),
        ),
    ),
    HostileInput(
        "empty-text",
        "an empty message",
        _text(""),
        _answered(),
    ),
    HostileInput(
        "whitespace-text",
        "a message of spaces, tabs and newlines",
        _text(" \t\n  \n"),
        _answered(),
    ),
    HostileInput(
        "control-characters",
        "text with NUL, ESC sequences and BEL",
        _text("What\x00 is \x1b[31mthis\x1b[0m?\x07"),
        _answered(),
    ),
    HostileInput(
        "invalid-utf8",
        "the byte 0xff in the text: raw in JSON bodies and files, a lone surrogate in Python",
        _lone_surrogate,
        _all(
            Rejected("not valid Unicode"),
            server=Rejected("not valid JSON"),
            eval=Rejected("line 1: not JSON"),
            data=Rejected("not valid UTF-8"),
            vllm=VLLM_TOKENIZES,
        ),
    ),
    HostileInput(
        "escaped-surrogate",
        "valid JSON holding the escape \\udcff: a lone surrogate, no UTF-8 text",
        _escaped_surrogate,
        _all(Rejected("not valid Unicode"), vllm=VLLM_TOKENIZES),
    ),
    HostileInput(
        "many-images",
        "100 images in one message",
        _many_images(100),
        _all(
            Accepted("an answer; 100 images"),
            chat=ONE_FILE,
            eval=ONE_VISUAL,
            data=Accepted("no problem reported"),
            vllm=Accepted("one engine item of 100 images", shows="100 visuals"),
        ),
        slow=True,
    ),
    HostileInput(
        "unknown-part",
        "a content part of type 'audio_url'",
        _unknown_part,
        _all(
            Rejected("audio_url"),
            chat=NO_PARTS,
            eval=NO_PARTS,
            data=NotApplicable("unknown record keys are ignored, as in LLaVA's manifests"),
            vllm=VLLM_PARSES,
        ),
    ),
    HostileInput(
        "duplicate-ids",
        "the same question twice (same id and text)",
        _duplicate_ids,
        {
            "server": NotApplicable("no ids"),
            "processor": NotApplicable("no ids"),
            "chat": NotApplicable("no ids"),
            "eval": Rejected("appears twice"),
            "data": Accepted("no problem reported: both samples train"),
            "vllm": NotApplicable("no ids"),
        },
    ),
    HostileInput(
        "missing-fields",
        "a message without 'role'; a question without 'text'; a sample without 'conversations'",
        _missing_fields,
        {
            "server": Rejected("role"),
            "processor": Rejected("'role'"),
            "chat": NO_MESSAGES,
            "eval": Rejected("missing field 'text'"),
            "data": Rejected("'conversations' must be a non-empty list"),
            "vllm": VLLM_PARSES,
        },
    ),
    HostileInput(
        "wrong-types",
        "a number where text goes; lists and numbers for ids, images and text",
        _wrong_types,
        {
            "server": Rejected("content"),
            "processor": Rejected("'content' must be a string or a list"),
            "chat": NO_FILE,
            "eval": Rejected("'question_id' must be"),
            "data": Rejected("'image' must be"),
            "vllm": VLLM_PARSES,
        },
    ),
    HostileInput(
        "outside-folder",
        "an image named ../secret.png, outside the media folder",
        _outside_folder,
        {
            "server": Rejected("outside the folder", status=403),
            "processor": Accepted("the file is read: a Python caller names its own files"),
            "chat": Accepted("the file is read: the user names their own files"),
            "eval": Rejected("outside --visual-folder"),
            "data": Rejected("outside --image-folder"),
            "vllm": NotApplicable(
                "vLLM reads local files (--allowed-local-media-path) before the plug-in"
            ),
        },
    ),
    HostileInput(
        "ten-hour-video",
        f"a 10-hour video at 1 fps ({LONG_VIDEO_SECONDS} frames of 16 x 16 pixels)",
        _long_video,
        _answered(
            f"an answer from {MAX_VIDEO_FRAMES} frames (the frame cap)",
            processor=Accepted(
                f"model inputs with {MAX_VIDEO_FRAMES} frames (the cap)",
                shows=f"frames [{MAX_VIDEO_FRAMES}]",
            ),
            eval=IMAGE_TASK,
            data=Accepted(
                f"no problem reported, and that the video was capped at {MAX_VIDEO_FRAMES} frames",
                shows=f"1 video(s) at the frame cap: {MAX_VIDEO_FRAMES} frames sampled",
            ),
            vllm=Accepted(
                f"model inputs with {MAX_VIDEO_FRAMES} frames (the cap)",
                shows=f"frames [{MAX_VIDEO_FRAMES}]",
            ),
        ),
        slow=True,
        memory_mb=LONG_VIDEO_MEMORY_MB,
    ),
]
"""Every hostile input, in the order of the docs table."""
