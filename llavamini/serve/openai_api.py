"""The OpenAI-compatible HTTP API: `POST /v1/chat/completions` and `GET /v1/models` (FastAPI).

`create_app(loaded, config)` builds the app; `llavamini serve` (`server.py`) runs it with uvicorn.

Requests follow OpenAI's chat-completions schema. Message content is a string or a list of parts:
`{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}` and, as
vLLM does, `{"type": "video_url", "video_url": {"url": ...}}`. A URL is a base64 `data:` URL, or
a local path (plain or `file://`, relative ones taken from the folder) that must lie inside the
operator's `--allowed-media-dir` (read as a video or an image by its extension); remote `http(s)`
URLs are refused (the server never fetches). A user message's images and videos
go before its text, in order, as in training. A leading `system` message replaces the template's
system prompt. A non-standard `conv_mode` field picks another chat template. `model` is
accepted and not checked (a server serves one model); `n` must be 1 and `stop` is not supported.

One worker thread runs all preprocessing and generation, so concurrent requests wait their turn
in arrival order and never run the model at the same time. Every error is a JSON body in OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`: 4xx for bad input (with the field in
`param`), 500 for a failure of the server itself; the server keeps serving either way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote, urlparse

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavamini.conversation import ChatTemplate
from llavamini.inference import GenerationSettings
from llavamini.model.loading import LoadedModel
from llavamini.serve.session import (
    CHAT_DEFAULTS,
    ChatSession,
    GenerationCancelled,
    Reply,
    resolve_template,
    with_system_prompt,
)

logger = logging.getLogger(__name__)

VIDEO_SUFFIX_BY_MIME = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/x-m4v": ".m4v",
}
"""Video types accepted in data URLs, and the suffix of their temporary files."""

IMAGE_SUFFIX = ".image"
"""Suffix of an uploaded image's temporary file (PIL reads by content)."""


@dataclass(frozen=True)
class ServerConfig:
    """How the server answers.

    Attributes:
        model_name: the id in `/v1/models` and in every response.
        conv_mode: the chat template (None: the checkpoint processor's conv mode);
            a request's `conv_mode` field overrides it.
        defaults: decoding settings for fields a request leaves out.
        fps: video frames per second of video (None: the checkpoint processor's).
        max_frames: cap on video frames per video (None: the checkpoint processor's).
        allowed_media_dir: the only folder local media paths may point into (None: no local
            paths at all).
        max_media_bytes: largest decoded data URL.
    """

    model_name: str
    conv_mode: str | None = None
    defaults: GenerationSettings = CHAT_DEFAULTS
    fps: float | None = None
    max_frames: int | None = 180
    allowed_media_dir: str | None = None
    max_media_bytes: int = 100 * 2**20


class ApiError(Exception):
    """An error answered as OpenAI's error JSON with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        error_type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code, self.error_type = code, error_type

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status)


# Request schema (the subset of OpenAI's that this server honours; other fields are ignored).


class MediaURL(BaseModel):
    url: str
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: MediaURL


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    conv_mode: str | None = None
    """Not OpenAI's: the chat template for this request."""


@dataclass
class Turn:
    """One non-system message: its text and its media as `(kind, url, param)`."""

    role: str
    text: str
    media: list[tuple[str, str, str]]


@dataclass
class Plan:
    """A validated request, ready for the worker."""

    template: ChatTemplate
    settings: GenerationSettings
    turns: list[Turn]


def plan_request(request: ChatCompletionRequest, config: ServerConfig, processor) -> Plan:
    """Check what the schema cannot and gather what the worker needs; raises `ApiError`."""
    if request.n != 1:
        raise ApiError(400, f"Only n=1 is supported, got n={request.n}.", param="n")
    if request.stop:
        raise ApiError(400, "Custom stop sequences are not supported; omit 'stop'.", param="stop")
    conv_mode = request.conv_mode or config.conv_mode
    try:
        template = resolve_template(conv_mode, processor)
    except KeyError as error:
        raise ApiError(400, error.args[0], param="conv_mode") from error
    system, turns = _split_messages(request.messages)
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "The last message must come from the user.", param="messages")
    defaults = config.defaults
    max_new_tokens = request.max_completion_tokens or request.max_tokens
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens or defaults.max_new_tokens,
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
    )
    return Plan(with_system_prompt(template, system), settings, turns)


def _split_messages(messages: list[Message]) -> tuple[str | None, list[Turn]]:
    """Leading system messages (joined) and the turns after them."""
    system, turns = [], []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if message.role == "system":
            if turns:
                raise ApiError(400, "System messages must come first.", param=param)
            system.append(_text_only(message, param))
        elif message.role == "assistant":
            turns.append(Turn("assistant", _text_only(message, param), []))
        else:
            turns.append(_user_turn(message, param))
    return ("\n".join(system) if system else None), turns


def _text_only(message: Message, param: str) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        return ""
    texts = []
    for j, part in enumerate(message.content):
        if not isinstance(part, TextPart):
            raise ApiError(
                400, f"{message.role} messages may contain only text.", f"{param}.content[{j}]"
            )
        texts.append(part.text)
    return "\n".join(texts)


def _user_turn(message: Message, param: str) -> Turn:
    if message.content is None:
        raise ApiError(400, "A user message needs content.", param=f"{param}.content")
    if isinstance(message.content, str):
        return Turn("user", message.content, [])
    texts, media = [], []
    for j, part in enumerate(message.content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ImagePart):
            media.append(("image", part.image_url.url, f"{param}.content[{j}].image_url.url"))
        else:
            media.append(("video", part.video_url.url, f"{param}.content[{j}].video_url.url"))
    return Turn("user", "\n".join(texts), media)


# Media: data URLs and allowed local files.


def media_file(kind: str, url: str, param: str, config: ServerConfig, folder: str) -> str:
    """A local file holding the media of one content part (written into `folder` for a data
    URL); raises `ApiError` for anything not allowed or malformed."""
    if url.startswith("data:"):
        return _write_data_url(kind, url, param, config.max_media_bytes, folder)
    if url.startswith(("http://", "https://")):
        raise ApiError(
            400, "Remote URLs are not fetched; send the file as a base64 data URL.", param=param
        )
    path = unquote(urlparse(url).path) if url.startswith("file://") else url
    return allowed_local_path(path, config.allowed_media_dir, param)


def allowed_local_path(path: str, allowed_dir: str | None, param: str) -> str:
    """`path` (relative paths are taken from `allowed_dir`) if it resolves, symbolic links
    followed, to a place inside `allowed_dir`; otherwise a 403 `ApiError`."""
    if allowed_dir is None:
        raise ApiError(
            403,
            "Local file paths are disabled on this server: send a base64 data URL, or start the "
            "server with --allowed-media-dir.",
            param=param,
            code="local_paths_disabled",
            error_type="permission_error",
        )
    root = os.path.realpath(allowed_dir)
    resolved = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([resolved, root]) != root:
        raise ApiError(
            403,
            f"{path!r} is outside the folder this server may read (--allowed-media-dir).",
            param=param,
            code="path_not_allowed",
            error_type="permission_error",
        )
    return resolved


def _write_data_url(kind: str, url: str, param: str, max_bytes: int, folder: str) -> str:
    header, comma, payload = url.partition(",")
    mime, *options = header[len("data:") :].split(";")
    if not comma or "base64" not in options:
        raise ApiError(400, "Expected a data URL like data:<type>;base64,<data>.", param=param)
    if kind == "image" and not mime.startswith("image/"):
        raise ApiError(400, f"An image_url data URL needs an image/* type, got {mime!r}.", param)
    if kind == "video" and mime not in VIDEO_SUFFIX_BY_MIME:
        raise ApiError(
            400,
            f"Video type {mime!r} is not supported; use one of {sorted(VIDEO_SUFFIX_BY_MIME)}.",
            param,
        )
    # Four base64 characters carry three bytes: refuse oversized uploads before decoding them.
    if len(payload) // 4 * 3 > max_bytes:
        raise ApiError(
            413, f"The data URL is over the server's limit of {max_bytes} bytes.", param=param
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ApiError(400, f"The data URL is not valid base64: {error}", param=param) from error
    suffix = IMAGE_SUFFIX if kind == "image" else VIDEO_SUFFIX_BY_MIME[mime]
    path = os.path.join(folder, f"{len(os.listdir(folder))}{suffix}")
    with open(path, "wb") as file:
        file.write(data)
    return path


# Generation, on the one worker thread.


class Backend:
    """The loaded model and the single worker thread that uses it."""

    def __init__(self, loaded: LoadedModel, config: ServerConfig):
        self.loaded = loaded
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llavamini-generate")
        self.tasks: set[asyncio.Task] = set()

    def keep(self, task: asyncio.Task) -> None:
        """Hold a reference to a background task until it ends (asyncio keeps only weak ones)."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, plan: Plan, on_text=None, cancel=None) -> Reply:
        """Queue `answer` on the worker and wait for it; errors other than `ApiError` and
        cancellation become a 500 `ApiError` (logged with their traceback)."""
        loop = asyncio.get_running_loop()
        job = functools.partial(self.answer, plan, on_text, cancel)
        try:
            return await loop.run_in_executor(self.executor, job)
        except (ApiError, GenerationCancelled):
            raise
        except Exception as error:
            logger.exception("Generation failed")
            raise ApiError(
                500, f"Internal error: {type(error).__name__}: {error}", error_type="server_error"
            ) from error

    def answer(self, plan: Plan, on_text=None, cancel=None) -> Reply:
        """Build the conversation (decoding its media) and answer its last user message."""
        session = ChatSession(
            self.loaded,
            plan.template,
            plan.settings,
            fps=self.config.fps,
            max_frames=self.config.max_frames,
        )
        with tempfile.TemporaryDirectory(prefix="llavamini-serve-") as folder:
            for turn in plan.turns:
                for kind, url, param in turn.media:
                    self._attach(session, kind, url, param, folder)
                if turn is not plan.turns[-1]:
                    self._add_turn(session, turn)
        try:
            return session.ask(plan.turns[-1].text, on_text=on_text, cancel=cancel)
        except ValueError as error:  # prompt too long for the context, '<image>' in the text
            raise ApiError(400, str(error), param="messages") from error

    def _attach(self, session, kind: str, url: str, param: str, folder: str) -> None:
        path = media_file(kind, url, param, self.config, folder)
        try:
            session.attach(path, kind)
        except FileNotFoundError as error:
            raise ApiError(400, str(error), param=param, code="file_not_found") from error
        except ValueError as error:
            # Point at the request field rather than the server's temporary file.
            message = (
                str(error).replace(path, "<upload>") if path.startswith(folder) else str(error)
            )
            raise ApiError(400, f"Cannot use this {kind}: {message}", param=param) from error

    @staticmethod
    def _add_turn(session, turn: Turn) -> None:
        try:
            session.add_turn(turn.role, turn.text)
        except ValueError as error:
            raise ApiError(400, str(error), param="messages") from error


# Responses.


def _usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def completion_body(reply: Reply, completion_id: str, created: int, model: str) -> dict:
    """A `chat.completion` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": _usage(reply),
    }


def sse(data: dict | str) -> str:
    """One server-sent event carrying `data` (JSON unless a plain string like '[DONE]')."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class ChunkWriter:
    """`chat.completion.chunk` events of one streamed completion."""

    def __init__(self, completion_id: str, created: int, model: str):
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }

    def delta(self, delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return sse({**self.base, "choices": [choice]})

    def usage(self, reply: Reply) -> str:
        return sse({**self.base, "choices": [], "usage": _usage(reply)})


async def stream_completion(
    backend: Backend, plan: Plan, writer: ChunkWriter, include_usage: bool
) -> StreamingResponse:
    """Start generating; answer a 4xx/5xx JSON error if it fails before the first piece of text,
    else stream the answer as server-sent events ending with `data: [DONE]`."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def on_text(text: str) -> None:  # runs on the worker thread
        loop.call_soon_threadsafe(events.put_nowait, ("text", text))

    async def generate() -> None:
        try:
            events.put_nowait(("done", await backend.run(plan, on_text, cancel)))
        except GenerationCancelled:
            logger.info("A streaming client went away; its generation was stopped.")
        except ApiError as error:
            events.put_nowait(("error", error))

    backend.keep(asyncio.create_task(generate()))
    try:
        first = await events.get()
    except asyncio.CancelledError:  # the client went away while waiting in the queue
        cancel.set()
        raise
    if first[0] == "error":
        raise first[1]
    return StreamingResponse(
        _events(first, events, writer, include_usage, cancel),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    first, events: asyncio.Queue, writer: ChunkWriter, include_usage: bool, cancel
) -> AsyncIterator[str]:
    try:
        yield writer.delta({"role": "assistant", "content": ""})
        kind, value = first
        while kind == "text":
            yield writer.delta({"content": value})
            kind, value = await events.get()
        if kind == "done":
            yield writer.delta({}, finish_reason=value.finish_reason)
            if include_usage:
                yield writer.usage(value)
        else:  # an error after the answer started: OpenAI's error object as an event
            yield sse({"error": {"message": value.message, "type": value.error_type}})
        yield sse("[DONE]")
    finally:
        cancel.set()  # a client that disconnects closes this generator: stop generating


# The app.


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    errors = error.errors()
    if errors and errors[0].get("type") == "json_invalid":
        detail = errors[0].get("ctx", {}).get("error", "")
        return ApiError(400, f"The request body is not valid JSON: {detail}".strip()).response()
    problems = []
    for item in errors[:3]:
        where = ".".join(str(part) for part in item.get("loc", ())[1:]) or "body"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    param = ".".join(str(part) for part in errors[0].get("loc", ())[1:]) if errors else ""
    return ApiError(400, "Invalid request body: " + "; ".join(problems), param or None).response()


def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return ApiError(error.status_code, str(error.detail), error_type=error_type).response()


def create_app(loaded: LoadedModel, config: ServerConfig) -> FastAPI:
    """The FastAPI app answering with `loaded`; its worker thread stops with the app."""
    if config.conv_mode is None:  # resolved once here, not per request
        config = dataclasses.replace(config, conv_mode=loaded.processor.conv_mode)
    backend = Backend(loaded, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        backend.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="LLaVA-Mini", lifespan=lifespan)
    app.state.backend = backend
    app.add_exception_handler(ApiError, lambda request, error: error.response())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    created = int(time.time())

    @app.get("/v1/models")
    async def list_models() -> dict:
        model = {"id": config.model_name, "object": "model", "created": created}
        return {"object": "list", "data": [{**model, "owned_by": "llavamini"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        plan = plan_request(request, config, loaded.processor)
        completion_id, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            writer = ChunkWriter(completion_id, now, config.model_name)
            return await stream_completion(backend, plan, writer, include_usage)
        reply = await backend.run(plan)
        return completion_body(reply, completion_id, now, config.model_name)

    return app


def default_model_name(model_path: str) -> str:
    """The served model id: the checkpoint folder's name (or the hub id)."""
    return (
        os.path.basename(os.path.normpath(model_path)) if os.path.isdir(model_path) else model_path
    )
