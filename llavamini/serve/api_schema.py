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
from llavamini.data.video import MAX_VIDEO_FRAMES
from llavamini.inference import GenerationSettings
from llavamini.serve.session import (
    CHAT_DEFAULTS,
    resolve_template,
    with_system_prompt,
)


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
    max_frames: int | None = MAX_VIDEO_FRAMES
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
