"""`vllm serve CKPT` (the plug-in found through its entry point) answers an OpenAI client's image
question with the transformers model's greedy tokens."""

import base64
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integrations.vllm.conftest import SKIP_REASON
from tests.integrations.vllm.test_greedy_parity import (
    NEW_TOKENS,
    image_message,
    picture,
    reference_answer,
)

vllm = pytest.importorskip("vllm", reason=SKIP_REASON)
openai = pytest.importorskip("openai", reason="the OpenAI client comes with vllm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """`vllm serve` on the tiny checkpoint -> its base URL; stopped after the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    command = [
        str(Path(sys.executable).parent / "vllm"), "serve", checkpoint,
        "--served-model-name", "tiny", "--port", str(port), "--dtype", "float32",
        "--enforce-eager", "--max-model-len", "512", "--gpu-memory-utilization", "0.2",
        "--kv-cache-memory-bytes", str(1 << 27),
    ]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not start in 300 s:\n{log.read_text()}")
                time.sleep(2)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_openai_chat_completion_matches_transformers(server, reference):
    image = picture(30)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    question = "What is unusual about this image?"
    response = server.chat.completions.create(
        model="tiny",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": question},
                ],
            }
        ],  # fmt: skip
        temperature=0,
        max_tokens=NEW_TOKENS,
        extra_body={"min_tokens": NEW_TOKENS, "return_token_ids": True},
    )
    choice = response.choices[0]
    tokens = getattr(choice, "token_ids", None) or choice.model_extra["token_ids"]
    # The PNG round trip is lossless, so the reference sees the same pixels.
    assert list(tokens) == reference_answer(reference, image_message(image, question))
