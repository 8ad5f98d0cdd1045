"""The OpenAI API's request side: the server's settings, the error type every failure becomes,
the request schema (the subset of OpenAI's chat-completions schema this server honours; other
fields are ignored) and `plan_request`, which checks what the schema cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from llavamini.conversation import ChatTemplate
from llavamini.data.messages import ParsedMessage, parse_messages
from llavamini.data.video import MAX_VIDEO_FRAMES
from llavamini.inference import GenerationSettings
from llavamini.serve.session import CHAT_DEFAULTS, resolve_template


@dataclass(frozen=True)
class ServerConfig:
    """How the server answers.

    Attributes:
        model_name: the id in `/v1/models` and in every response.
        conv_mode: the chat template (None: the checkpoint processor's conv mode);
            a request's `conv_mode` field overrides it.
        defaults: decoding settings for fields a request leaves out.
        video_fps: video frames per second of video (None: the checkpoint processor's).
        video_max_frames: cap on video frames per video (None: the checkpoint processor's).
        allowed_media_dir: the only folder local media paths may point into (None: no local
            paths at all).
        max_media_bytes: largest decoded data URL.
    """

    model_name: str
    conv_mode: str | None = None
    defaults: GenerationSettings = CHAT_DEFAULTS
    video_fps: float | None = None
    video_max_frames: int | None = MAX_VIDEO_FRAMES
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
    """One non-system message: its text (the text parts joined by newlines) and its media as
    `(kind, url, param)`."""

    role: str
    text: str
    media: list[tuple[str, str, str]]


@dataclass
class Plan:
    """A validated request, ready for the worker.

    Attributes:
        template: the chat template.
        system: the system prompt of the request's leading system messages (None: the
            template's own).
        settings: decoding settings.
        turns: the user and assistant messages, the last from the user.
    """

    template: ChatTemplate
    system: str | None
    settings: GenerationSettings
    turns: list[Turn]


def plan_request(request: ChatCompletionRequest, config: ServerConfig, processor) -> Plan:
    """Check what the schema cannot and gather what the worker needs; raises `ApiError`.

    The messages are parsed by `llavamini.data.messages.parse_messages`, as the processor
    parses them; the worker puts a user message's images and videos before its text (as
    `llavamini chat` and vLLM's server do).
    """
    if request.n != 1:
        raise ApiError(400, f"Only n=1 is supported, got n={request.n}.", param="n")
    if request.stop:
        raise ApiError(400, "Custom stop sequences are not supported; omit 'stop'.", param="stop")
    conv_mode = request.conv_mode or config.conv_mode
    try:
        template = resolve_template(conv_mode, processor)
    except KeyError as error:
        raise ApiError(400, error.args[0], param="conv_mode") from error
    try:
        system, messages = parse_messages(
            [message.model_dump(exclude_none=True) for message in request.messages]
        )
    except ValueError as error:
        raise ApiError(400, str(error), param="messages") from error
    if not messages or messages[-1].role != "user":
        raise ApiError(400, "The last message must come from the user.", param="messages")
    defaults = config.defaults
    max_new_tokens = request.max_completion_tokens or request.max_tokens
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens or defaults.max_new_tokens,
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
    )
    return Plan(template, system, settings, [_turn(message) for message in messages])


def _turn(message: ParsedMessage) -> Turn:
    media = [
        (
            item.kind,
            item.source,
            f"messages[{message.index}].content[{item.part}].{item.kind}_url.url",
        )
        for item in message.media
    ]
    return Turn(message.role, "\n".join(message.texts), media)
