"""`vllm serve CKPT` (the plug-in found through its entry point) answers an OpenAI client's image
question, and a `video_url` question sampled as `llavamini chat` samples the file, with the
transformers model's greedy tokens."""

import base64
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llavamini.data.video import MAX_VIDEO_FRAMES
from tests.conftest import write_video
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
        "--trust-request-mm-kwargs",  # the per-request frame cap below
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


def answer_tokens(client, content: list[dict], **extra) -> list[int]:
    """Greedy `NEW_TOKENS` tokens of the server for one user message."""
    return answer(client, content, **extra)[0]


def answer(client, content: list[dict], **extra) -> tuple[list[int], int]:
    """`answer_tokens`, and the prompt's length in tokens as the server counted it (one per
    frame of a video: LLaVA-Mini gives each frame one vision token)."""
    response = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=NEW_TOKENS,
        extra_body={"min_tokens": NEW_TOKENS, "return_token_ids": True, **extra},
    )
    choice = response.choices[0]
    tokens = list(getattr(choice, "token_ids", None) or choice.model_extra["token_ids"])
    return tokens, response.usage.prompt_tokens


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


VIDEO_SECONDS, VIDEO_FPS = 5, 4
"""The test video: 20 frames at 4 fps, of which the project's 1 fps policy takes 5 (vLLM's own
loader would take all 20)."""


def test_a_video_url_is_sampled_as_llavamini_chat_samples_the_file(
    server, reference, checkpoint, tmp_path
):
    from llavamini.model.loading import ModelSpec
    from llavamini.serve.session import ChatSession, resolve_template

    count = VIDEO_SECONDS * VIDEO_FPS
    frames = np.stack([np.asarray(picture(60 + t)) for t in range(count)])
    path = write_video(tmp_path / "clip.mp4", frames, fps=VIDEO_FPS)
    url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    question = "What happens?"
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}]

    processor, model = reference
    conversation = [{"role": "user", "content": [
        {"type": "video", "path": str(path)}, {"type": "text", "text": question}]}]  # fmt: skip
    # `llavamini chat --video-file clip.mp4 --query ...` builds exactly these inputs.
    loaded = ModelSpec(checkpoint, device="cpu").load()
    session = ChatSession(
        loaded, resolve_template(None, loaded.processor), max_frames=MAX_VIDEO_FRAMES
    )
    session.attach(str(path))
    chat_prompt, chat_visuals = session.prompt(question)
    policy = processor.with_video_policy(session.processor.video_fps, MAX_VIDEO_FRAMES)
    inputs = policy.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert chat_prompt == policy.apply_chat_template(conversation, add_generation_prompt=True)
    assert chat_visuals[0].shape[0] == VIDEO_SECONDS  # 1 fps
    assert torch.equal(inputs["images"][0][0], chat_visuals[0])
    expected = reference_answer((policy, model), conversation)
    tokens, length = answer(server, content)
    assert tokens == expected
    # The frame cap per request, as `llavamini chat --max-frames 2`.
    capped = reference_answer((processor.with_video_policy(1.0, 2), model), conversation)
    capped_tokens, capped_length = answer(
        server, content, mm_processor_kwargs={"video_max_frames": 2}
    )
    assert capped_tokens == capped
    # The tiny model may answer alike whatever the frames; the prompt's length tells how many
    # the server sampled (one vision token each): 5 at 1 fps, not vLLM's 20, and 2 when capped.
    assert length - capped_length == VIDEO_SECONDS - 2


def test_an_undecodable_video_url_is_a_client_error(server):
    url = "data:video/mp4;base64," + base64.b64encode(b"these bytes hold no video").decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "Hi?"}]
    with pytest.raises(openai.BadRequestError):
        answer_tokens(server, content)
