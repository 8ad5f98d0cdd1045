"""The OpenAI API's responses: a `chat.completion` object, or server-sent events of
`chat.completion.chunk` objects ending with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from llavamini.serve.api_schema import ApiError, Plan
from llavamini.serve.api_worker import Backend
from llavamini.serve.session import GenerationCancelled, Reply

logger = logging.getLogger(__name__)


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
