"""The battery's front doors: each takes a `Payload` and returns an `Outcome`.

A door returns `Outcome(accepted=True, detail=...)` when it answered and
`Outcome(accepted=False, detail=<the error text>, status=...)` when it refused the input the
documented way (a 4xx JSON error, a command's `CommandError` with its message, the `ValueError` /
`FileNotFoundError` of a library call, a report line of `data check`). Anything else (a 500,
another exception type, a traceback in what the user sees) fails the test through
`pytest.fail` or the exception itself.
"""

from __future__ import annotations

import base64
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llavamini.errors import CommandError
from tests.battery.cases import Payload

ANSWER_TOKENS = 3
"""New tokens per answer: enough to show the door answered, cheap on 2 CPU cores."""

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".mp4": "video/mp4", ".wav": "audio/wav"}


@dataclass(frozen=True)
class Outcome:
    """What a door did with one input.

    Attributes:
        accepted: it answered.
        detail: the answer (or a summary of it) or the error text shown to the user.
        status: the HTTP status (server) or None.
    """

    accepted: bool
    detail: str
    status: int | None = None


@dataclass(frozen=True)
class DoorContext:
    """What the doors share: the media folder of the case, the loaded tiny model and its
    folder, a server's client and a scratch folder."""

    media: Path
    scratch: Path
    loaded: object
    checkpoint: str
    client: httpx.Client | None = None


def data_url(path: Path) -> str:
    mime = MIME.get(path.suffix, "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def server_body(payload: Payload, media: Path) -> dict | bytes:
    """The request body of `payload`: its own raw one, or one user message with media as
    data URLs (or paths relative to the server's media folder)."""
    if "server" in payload.raw:
        return payload.raw["server"]
    parts = []
    for part in payload.media:
        url = part.value if payload.as_path else data_url(media / part.value)
        key = f"{part.kind}_url" if part.kind in ("image", "video") else part.kind
        parts.append({"type": key, key: {"url": url}})
    parts.append({"type": "text", "text": payload.text})
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": ANSWER_TOKENS,
    }


def post(client: httpx.Client, body: dict | bytes, stream: bool = False) -> Outcome:
    """POST one chat completion; a streamed one is read to the end and its deltas joined."""
    if isinstance(body, bytes):
        response = client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        return _response_outcome(response)
    if not stream:
        return _response_outcome(client.post("/v1/chat/completions", json=body))
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            response.read()
            return _response_outcome(response)
        pieces = []
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: ") :])
                assert "error" not in chunk, chunk
                pieces += [c["delta"].get("content", "") for c in chunk["choices"]]
    return Outcome(True, "".join(pieces), 200)


def _response_outcome(response: httpx.Response) -> Outcome:
    if response.status_code >= 500:
        pytest.fail(f"the server answered {response.status_code}: {response.text}")
    body = response.json()
    if response.status_code == 200:
        return Outcome(True, body["choices"][0]["message"]["content"], 200)
    error = body["error"]
    assert "Traceback" not in error["message"], error
    return Outcome(False, error["message"], response.status_code)


def server_door(payload: Payload, context: DoorContext, monkeypatch) -> Outcome:
    return post(context.client, server_body(payload, context.media))


def processor_door(payload: Payload, context: DoorContext, monkeypatch) -> Outcome:
    conversation = payload.raw.get("processor")
    if conversation is None:
        content = [
            {"type": part.kind, "path": str(context.media / part.value)} for part in payload.media
        ]
        conversation = [
            {"role": "user", "content": [*content, {"type": "text", "text": payload.text}]}
        ]
    try:
        inputs = context.loaded.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True
        )
    except (ValueError, FileNotFoundError) as error:
        return Outcome(False, str(error))
    visuals = inputs.get("images", [[]])[0]
    frames = [v.shape[0] for v in visuals if v.dim() == 5]
    return Outcome(
        True, f"{inputs['input_ids'].shape[1]} tokens, {len(visuals)} visuals, frames {frames}"
    )


def chat_door(payload: Payload, context: DoorContext, monkeypatch) -> Outcome:
    from llavamini.inference import GenerationSettings
    from llavamini.model.loading import ModelSpec
    from llavamini.serve import cli
    from llavamini.serve.session import resolve_template

    loaded = context.loaded
    # The model is loaded once per session; `chat` is run from the file checks on.
    monkeypatch.setattr(
        cli,
        "load_chat_model",
        lambda model, inputs: (loaded, resolve_template(None, loaded.processor)),
    )
    media = payload.media
    assert len(media) <= 1, "one-shot chat takes one file"
    files = {}
    if media:
        files[f"{media[0].kind}_file"] = str(context.media / media[0].value)
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            cli.chat(
                ModelSpec(context.checkpoint),
                GenerationSettings(max_new_tokens=ANSWER_TOKENS),
                options=cli.ChatOptions(query=payload.text, **files),
            )
    except CommandError as error:  # what the command line prints after "error: "
        return Outcome(False, str(error))
    return Outcome(True, out.getvalue())


def _run_cli(argv: list[str]) -> tuple[int | str | None, str]:
    """`llavamini ARGV` in-process: `(exit code, stdout + stderr)`; code None for success."""
    from llavamini.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as error:
            code = error.code
    printed = out.getvalue() + err.getvalue()
    assert "Traceback" not in printed, printed
    return code, printed


def eval_door(payload: Payload, context: DoorContext, monkeypatch) -> Outcome:
    import llavamini.eval.runner as runner

    monkeypatch.setattr(runner, "load_model", lambda config: context.loaded)
    questions = context.scratch / "questions.jsonl"
    raw = payload.raw.get("eval")
    if raw is None:
        media = payload.media
        assert len(media) <= 1, "a question has one visual"
        line = {"question_id": 1, "text": payload.text}
        if media:
            line["image"] = media[0].value
        raw = (json.dumps(line) + "\n").encode()
    questions.write_bytes(raw)
    answers = context.scratch / "answers.jsonl"
    code, printed = _run_cli(
        ["eval", "run", "synthetic", "--model-path", context.checkpoint,
         "--questions", str(questions), "--visual-folder", str(context.media),
         "--answers-file", str(answers), "--max-new-tokens", str(ANSWER_TOKENS),
         "--num-workers", "0"]
    )  # fmt: skip
    if code not in (None, 0):
        return Outcome(False, code if isinstance(code, str) else printed)
    lines = answers.read_text().splitlines()
    return Outcome(True, f"{len(lines)} answers")


def data_door(payload: Payload, context: DoorContext, monkeypatch) -> Outcome:
    manifest = context.scratch / "manifest.json"
    raw = payload.raw.get("data")
    if raw is None:
        record = {"id": "sample", "conversations": [
            {"from": "human", "value": "<image>\n" * len(payload.media) + payload.text},
            {"from": "gpt", "value": "An answer."},
        ]}  # fmt: skip
        for part in payload.media:
            record.setdefault(part.kind, []).append(part.value)
        raw = json.dumps([record]).encode()
    manifest.write_bytes(raw)
    code, printed = _run_cli(
        ["data", "check", "--data", str(manifest), "--image-folder", str(context.media),
         "--tokenizer", context.checkpoint]
    )  # fmt: skip
    if code not in (None, 0):
        return Outcome(False, code if isinstance(code, str) else printed)
    return Outcome(True, printed.strip())


DOOR_FUNCTIONS = {
    "server": server_door,
    "processor": processor_door,
    "chat": chat_door,
    "eval": eval_door,
    "data": data_door,
}
"""`(payload, context, monkeypatch) -> Outcome` per `DOORS` name."""
