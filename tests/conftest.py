"""Offline, seeded, tiny: every test builds what it needs in-process."""

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Any accidental download fails fast instead of hanging on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from llavamini.apps.tiny import build_tiny_checkpoint, tiny_config  # noqa: E402
from llavamini.constants import IMAGE_TOKEN_INDEX  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
"""`../shared` beside the checkout: reference fixtures and assets, present in CI only."""

TEST_IMAGE_SIZE = 56  # a 4 x 4 patch grid: fast, and still square-grid compression
VOCAB = 96


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test saying why."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (reference fixtures) exists only in CI checkouts")
    return path


def make_config(**overrides):
    """The test-size tiny config (56 px images, vocabulary of 96)."""
    return tiny_config(VOCAB, image_size=TEST_IMAGE_SIZE, **overrides)


def make_model(seed: int = 0, **overrides):
    from llavamini import LlavaMiniForCausalLM

    torch.manual_seed(seed)
    return LlavaMiniForCausalLM(make_config(**overrides)).eval()


def random_images(batch: int, parts: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, parts, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, generator=generator)


@pytest.fixture(scope="session")
def tiny_model():
    return make_model()


def write_video(path, frames, fps: int, codec: str = "libx264", options: dict | None = None):
    """Encode `frames` `(T, H, W, 3)` uint8 as a video file with PyAV (which can write it)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = options or {}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ramp_frames(count: int, height: int, width: int, step: int) -> np.ndarray:
    """`count` flat frames, frame i filled with grey level `step * i`."""
    levels = (np.arange(count) * step).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


def decode_with_placeholders(tokenizer, ids: list[int]) -> str:
    """The prompt text of `ids`, each `IMAGE_TOKEN_INDEX` written as `<image>`."""
    pieces, piece = [], []
    for token in ids + [IMAGE_TOKEN_INDEX]:
        if token == IMAGE_TOKEN_INDEX:
            pieces.append(tokenizer.decode(piece))
            piece = []
        else:
            piece.append(token)
    return "<image>".join(pieces)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG of `width` x `height` pixels in a few dozen bytes: signature, header, end; no pixel
    data (a decompression bomb's dimensions without its cost, for the size checks)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


QUANTIZATION_WIDTH = 256
"""LLM width of the quantization tests' checkpoint: a multiple of the int4 group (128) and of
GGUF's blocks (32), so every LLM linear is quantized (torchao leaves a layer whose input width
the group does not divide unquantized)."""


def build_quantization_checkpoint(folder: str, **overrides) -> str:
    """A tiny checkpoint of LLM width `QUANTIZATION_WIDTH`, stored in bfloat16 as the release
    (loading then maps its tensors); `overrides` go to its config."""
    from llavamini import LlavaMiniForCausalLM

    build_tiny_checkpoint(
        folder,
        image_size=TEST_IMAGE_SIZE,
        hidden_size=QUANTIZATION_WIDTH,
        intermediate_size=2 * QUANTIZATION_WIDTH,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
        **overrides,
    )
    LlavaMiniForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def quantization_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 24 ids with an image placeholder, and their two images."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 400, (2, 24), generator=generator)
    ids[:, 3] = IMAGE_TOKEN_INDEX
    return ids, random_images(2)


def bfloat16_logits(checkpoint: str, inputs) -> torch.Tensor:
    """The logits (float32) of `checkpoint` loaded unquantized in bfloat16 for `inputs`."""
    from llavamini.model.loading import ModelSpec

    model = ModelSpec(checkpoint, device="cpu", dtype="bfloat16").load().model
    with torch.inference_mode():
        return model(input_ids=inputs[0], images=inputs[1]).logits.float()


REQUIRE_TORCHAO = os.environ.get("LLAVAMINI_REQUIRE_TORCHAO") == "1"
"""Set by .ci/run, which installs the 'quant' extra: a missing torchao fails, never skips."""


def needs_torchao() -> None:
    """Skip a test of CPU quantization where torchao (the 'quant' extra) is not installed, saying
    how to install it; under LLAVAMINI_REQUIRE_TORCHAO=1 fail instead."""
    import importlib.util

    if importlib.util.find_spec("torchao") is not None:
        return
    message = (
        "CPU quantization needs torchao: bash scripts/setup.sh train,video,serve,qlora,quant,dev"
    )
    if REQUIRE_TORCHAO:
        pytest.fail(message)
    # allow_module_level: a test module may call this at import to skip all its tests.
    pytest.skip(message, allow_module_level=True)


REQUIRE_LLAMA_CPP = os.environ.get("LLAVAMINI_REQUIRE_LLAMA_CPP") == "1"
"""Set by .ci/run, which installs the 'llamacpp' extra: a missing llama.cpp fails, never skips."""


def needs_llama_cpp() -> None:
    """Skip a test module of the llama.cpp LLM where llama-cpp-python and gguf (the 'llamacpp'
    extra) are not installed, saying how to install them; under LLAVAMINI_REQUIRE_LLAMA_CPP=1
    fail instead."""
    from llavamini.model.llama_cpp import llama_cpp_available

    if llama_cpp_available():
        return
    message = (
        "The llama.cpp LLM needs llama-cpp-python and gguf: bash scripts/setup.sh "
        "train,video,serve,qlora,quant,llamacpp,dev (compiles llama.cpp, ~10 minutes)"
    )
    if REQUIRE_LLAMA_CPP:
        pytest.fail(message)
    pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session", autouse=True)
def gguf_dir(tmp_path_factory):
    """GGUF files of quantized CPU loads (`llavamini.model.llama_cpp.cached_gguf`) go to a
    temporary folder, not the user's cache; commands the tests start inherit it."""
    previous = os.environ.get("LLAVAMINI_GGUF_DIR")
    os.environ["LLAVAMINI_GGUF_DIR"] = str(tmp_path_factory.mktemp("gguf"))
    yield
    if previous is None:
        del os.environ["LLAVAMINI_GGUF_DIR"]
    else:
        os.environ["LLAVAMINI_GGUF_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny random LLaVA-Mini saved like a release (Llama-3.1 tokenizer tokens)."""
    folder = tmp_path_factory.mktemp("serve") / "tiny-llava-mini"
    return build_tiny_checkpoint(str(folder), seed=0, image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def loaded(tiny_checkpoint):
    from llavamini.model.loading import ModelSpec

    return ModelSpec(tiny_checkpoint, device="cpu").load()


SERVER_STARTUP_TIMEOUT_S = 30


@contextmanager
def running_server(checkpoint: str, media_dir: str, *flags: str) -> Iterator[str]:
    """`llavamini serve` (`flags` after `--model-path` and `--allowed-media-dir`) on a free
    loopback port in a background thread; yields its URL and checks it shuts down."""
    from llavamini.serve import server

    args = server.build_parser().parse_args(
        ["--model-path", checkpoint, "--allowed-media-dir", media_dir, *flags]
    )
    assert args.host == "127.0.0.1"
    uvicorn_server = server.build_server(**args.func.arguments(args))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # the OS picks a free port; no race with other tests
    port = listener.getsockname()[1]
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [listener]})
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT_S
        while not uvicorn_server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uvicorn_server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=SERVER_STARTUP_TIMEOUT_S)
        listener.close()
    assert not thread.is_alive(), "the server did not shut down"
