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

The parts: `api_schema.py` (settings, errors, request schema and checks), `api_media.py` (data
URLs and allowed local files), `api_worker.py` (the worker thread), `api_stream.py` (response
bodies and server-sent events) and this module (the app).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavamini.model.loading import LoadedModel
from llavamini.serve.api_schema import ApiError, ChatCompletionRequest, ServerConfig, plan_request
from llavamini.serve.api_stream import ChunkWriter, completion_body, stream_completion
from llavamini.serve.api_worker import Backend

__all__ = ["ServerConfig", "create_app", "default_model_name"]


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


FASTAPI_BODY_ERROR = "There was an error parsing the body"
"""FastAPI's whole message for a body it cannot decode (bytes that are not UTF-8, say)."""


def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    if error.status_code == 400 and error.detail == FASTAPI_BODY_ERROR:
        cause = error.__cause__ or error.__context__
        reason = f": {cause}" if cause is not None else ""
        message = f"The request body is not valid JSON in UTF-8{reason}."
        return ApiError(400, message).response()
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
