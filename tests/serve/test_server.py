"""`llavamini serve` on loopback, called over real HTTP: plain, streamed, concurrent and
malformed requests, bad media, and `GET /v1/models`."""

import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import llavamini.serve.session as session_module
from tests.conftest import png_header_only, running_server

REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def base_url(tiny_checkpoint, media_dir):
    """The `serve` command's server, on a free loopback port, in a background thread."""
    with running_server(tiny_checkpoint, str(media_dir), "--max-new-tokens", "5") as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as http:
        yield http


def data_url(path, mime):
    with open(path, "rb") as file:
        return f"data:{mime};base64,{base64.b64encode(file.read()).decode()}"


def user_message(text, *media):
    """A user message: `media` are `(kind, url)` with kind 'image' or 'video'."""
    parts = [{"type": f"{kind}_url", f"{kind}_url": {"url": url}} for kind, url in media]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def completion(client, messages, **fields):
    return client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": messages, **fields}
    )


def stream_events(client, body):
    """The `data:` payloads of a streamed completion, in order."""
    events = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    return events


def test_models_lists_the_checkpoint(client, tiny_checkpoint):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == [os.path.basename(tiny_checkpoint)]


def test_plain_completion_with_an_image(client, media_dir):
    url = data_url(media_dir / "picture.png", "image/png")
    response = completion(client, [user_message("What is this?", ("image", url))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(
        choice["message"]["content"], str
    )
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_sends_openai_chunks_and_done(client, media_dir):
    messages = [
        user_message("Describe the clip.", ("video", data_url(media_dir / "clip.mp4", "video/mp4")))
    ]
    plain = completion(client, messages).json()["choices"][0]["message"]["content"]
    events = stream_events(
        client, {"messages": messages, "stream_options": {"include_usage": True}}
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    assert deltas[-1]["finish_reason"] in ("stop", "length")
    assert all(delta["finish_reason"] is None for delta in deltas[:-1])
    streamed = "".join(delta["delta"].get("content", "") for delta in deltas)
    assert streamed == plain  # greedy: the same answer, streamed or not, to the character
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_history_system_prompt_and_local_files(client, media_dir):
    messages = [
        {"role": "system", "content": "You answer in one word."},
        user_message("What is it?", ("image", "picture.png")),  # relative to the allowed folder
        {"role": "assistant", "content": "A square."},
        user_message("And this?", ("image", f"file://{media_dir / 'picture.png'}")),
    ]
    tokens = {}
    for name, conversation in [
        ("full", messages),
        ("last turn", [messages[0], messages[-1]]),
        ("default system prompt", [messages[-1]]),
    ]:
        response = completion(client, conversation)
        assert response.status_code == 200, response.text
        tokens[name] = response.json()["usage"]["prompt_tokens"]
    assert tokens["full"] > tokens["last turn"] + 5  # the earlier turns were sent
    # The template's system prompt is far longer than "You answer in one word.".
    assert tokens["default system prompt"] > tokens["last turn"] + 10


def test_concurrent_requests_are_served_one_generation_at_a_time(client, monkeypatch):
    active, most = [0], [0]
    lock = threading.Lock()
    real_generate = session_module.generate

    def counting_generate(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.05)  # widen the window in which an overlap would show
            return real_generate(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(session_module, "generate", counting_generate)

    def one_request(i):
        if i % 2:
            return stream_events(client, {"messages": [user_message(f"Question {i}")]})[-1]
        response = completion(client, [user_message(f"Question {i}")])
        return response.status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one_request, range(6), timeout=REQUEST_TIMEOUT_S))
    assert results == [200, "[DONE]"] * 3
    assert most[0] == 1


BAD_REQUESTS = [
    # (name, raw body or JSON, expected status, text in the message, expected param or None)
    ("not JSON", b'{"messages": [', 400, "not valid JSON", None),
    ("no messages", {"model": "tiny"}, 400, "messages", "messages"),
    ("empty messages", {"messages": []}, 400, "messages", "messages"),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "role", None),
    ("bad part", {"messages": [user_message("hi", ("audio", "x"))]}, 400, "type", None),
    (
        "assistant last",
        {"messages": [{"role": "assistant", "content": "hi"}]},
        400,
        "last",
        "messages",
    ),
    (
        "bad temperature",
        {"messages": [user_message("hi")], "temperature": -1},
        400,
        "temperature",
        "temperature",
    ),
    ("n > 1", {"messages": [user_message("hi")], "n": 2}, 400, "n=1", "n"),
    ("stop", {"messages": [user_message("hi")], "stop": ["x"]}, 400, "stop", "stop"),
    (
        "conv mode",
        {"messages": [user_message("hi")], "conv_mode": "llava_v0"},
        400,
        "Unknown conv mode",
        "conv_mode",
    ),
    ("too long", {"messages": [user_message("word " * 5000)]}, 400, "context", "messages"),
    ("literal <image>", {"messages": [user_message("see <image>")]}, 400, "<image>", "messages"),
]


def media_request(kind, url):
    return {"messages": [user_message("What is it?", (kind, url))]}


PARAM = "messages[0].content[0]"
BAD_MEDIA = [
    # (name, kind, url or a function of the media folder, status, text in the message)
    ("not base64", "image", "data:image/png;base64,@@@", 400, "base64"),
    ("not a data URL", "image", "data:image/png,abc", 400, "data URL"),
    ("wrong type", "image", "data:text/plain;base64,aGk=", 400, "image/*"),
    (
        "unreadable image",
        "image",
        lambda m: data_url(m / "not_an_image.png", "image/png"),
        400,
        "Cannot read image",
    ),
    (
        "no video frames",
        "video",
        lambda m: data_url(m / "no_frames.mp4", "video/mp4"),
        400,
        "video",
    ),
    (
        "decompression bomb",
        "image",
        lambda m: "data:image/png;base64,"
        + base64.b64encode(png_header_only(20000, 20000)).decode(),
        400,
        "400000000 pixels",
    ),
    ("video type", "video", "data:video/x-unknown;base64,aGk=", 400, "not supported"),
    ("remote URL", "image", "https://example.com/cat.png", 400, "Remote URLs"),
    ("missing file", "image", "missing.png", 400, "missing.png"),
    ("outside the folder", "image", "../../../etc/hostname", 403, "outside"),
    ("absolute outside", "image", "/etc/hostname", 403, "outside"),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "text", "param"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS]
)
def test_bad_requests_get_openai_errors(client, name, body, status, text, param):
    if isinstance(body, bytes):
        response = client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert text in error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("name", "kind", "url", "status", "text"), BAD_MEDIA, ids=[r[0] for r in BAD_MEDIA]
)
def test_bad_media_gets_openai_errors(client, media_dir, name, kind, url, status, text):
    url = url(media_dir) if callable(url) else url
    for stream in (False, True):  # a streamed request fails before its stream starts
        response = client.post(
            "/v1/chat/completions", json={**media_request(kind, url), "stream": stream}
        )
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert text in error["message"] and error["param"] == f"{PARAM}.{kind}_url.url"


def test_symbolic_links_cannot_leave_the_allowed_folder(client, media_dir, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes((media_dir / "picture.png").read_bytes())
    link = media_dir / "link.png"
    link.symlink_to(outside)
    try:
        response = completion(client, [user_message("hi", ("image", "link.png"))])
    finally:
        link.unlink()
    assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"


def test_unknown_routes_answer_json_and_the_server_keeps_serving(client, media_dir):
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/chat/completions").status_code == 405
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={**media_request("image", "picture.png"), "stream": True},
    ) as response:
        next(response.iter_lines())  # a client that leaves after the first event
    assert client.get("/v1/models").status_code == 200
    assert completion(client, [user_message("still there?")]).status_code == 200


def test_local_paths_are_refused_without_an_allowed_folder(loaded, media_dir):
    from fastapi.testclient import TestClient

    from llavamini.serve.openai_api import ServerConfig, create_app

    app = create_app(loaded, ServerConfig(model_name="tiny"))
    with TestClient(app) as test_client:
        response = test_client.post(
            "/v1/chat/completions", json=media_request("image", str(media_dir / "picture.png"))
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "local_paths_disabled"
