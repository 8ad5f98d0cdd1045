"""Fixtures of the bad-input battery: one server on loopback serving the tiny checkpoint
(`tests/conftest.py`'s `tiny_checkpoint`, loaded once as `loaded`)."""

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import running_server

REQUEST_TIMEOUT_S = 120
SERVER_FLAGS = ("--max-new-tokens", "3")


@pytest.fixture(scope="module")
def battery_client(tiny_checkpoint, tmp_path_factory) -> Iterator[httpx.Client]:
    media = tmp_path_factory.mktemp("served") / "media"
    media.mkdir()
    with (
        running_server(tiny_checkpoint, str(media), *SERVER_FLAGS) as url,
        httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client,
    ):
        yield client
