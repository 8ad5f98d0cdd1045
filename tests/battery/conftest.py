"""Fixtures of the bad-input battery: one tiny checkpoint, loaded once, and one server on
loopback serving it."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from llavamini.apps.tiny import build_tiny_checkpoint
from llavamini.model.loading import load_pretrained
from tests.conftest import TEST_IMAGE_SIZE

STARTUP_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def battery_checkpoint(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("battery") / "tiny-llava-mini"
    return build_tiny_checkpoint(str(folder), seed=0, image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def battery_loaded(battery_checkpoint):
    return load_pretrained(battery_checkpoint)


@contextmanager
def running_server(checkpoint: str, media_dir: str, *flags: str) -> Iterator[str]:
    """`llavamini serve` on a free loopback port in a background thread; yields its URL."""
    from llavamini.serve import server

    args = server.build_parser().parse_args(
        ["--model-path", checkpoint, "--max-new-tokens", "3", "--allowed-media-dir", media_dir,
         *flags]
    )  # fmt: skip
    uvicorn_server = server.build_server(**args.func.arguments(args))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # the OS picks a free port
    port = listener.getsockname()[1]
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [listener]})
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not uvicorn_server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uvicorn_server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        listener.close()
    assert not thread.is_alive(), "the server did not shut down"


@pytest.fixture(scope="module")
def battery_client(battery_checkpoint, tmp_path_factory) -> Iterator[httpx.Client]:
    media = tmp_path_factory.mktemp("served") / "media"
    media.mkdir()
    with (
        running_server(battery_checkpoint, str(media)) as url,
        httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client,
    ):
        yield client
