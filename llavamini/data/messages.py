"""Chat messages and media sources: transformers' chat format -> prompt turns and media.

A conversation is a list of `{"role", "content"}` messages. `parse_messages` is the one parser
of them (the processor's and the OpenAI server's): the system prompt, and per message its text
pieces and media parts in order. `parse_conversation` turns that into `(role, text)` turns with
`<image>` / `<video>` placeholders and the `(kind, source)` of the media, for
`LlavaMiniProcessor` (`llavamini.model.processing_llavamini`); `media_in_placeholder_order` does
the same for prompt strings and separate image and video lists. `to_pil_image`,
`to_video_frames` and `local_path` read media sources: PIL images, arrays, paths, `file://` and
base64 `data:` URLs (`decode_data_url`, the one decoder of those); nothing is downloaded.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from PIL import Image

from llavamini.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN
from llavamini.data.image_processing import load_image, open_rgb
from llavamini.data.tokenization import PLACEHOLDER
from llavamini.data.video import load_video

Messages = list[dict]
"""transformers' chat format: `{"role": "system" | "user" | "assistant", "content": str | parts}`
where a part is `{"type": "text", "text": ...}`, `{"type": "image", "image" | "path" | "url" |
"base64": ...}`, `{"type": "video", "video" | "path" | "url": ...}` or OpenAI's
`{"type": "image_url", "image_url": {"url": ...}}`."""


def placeholder_kinds(prompt: str) -> list[str]:
    """'image' / 'video' for each `<image>` / `<video>` placeholder of `prompt`, in order (the
    placeholders `llavamini.data.tokenization` turns into `IMAGE_TOKEN_INDEX`)."""
    return [
        "image" if token == DEFAULT_IMAGE_TOKEN else "video"
        for token in PLACEHOLDER.findall(prompt)
    ]


def media_per_text(media, counts: list[int], name: str) -> list[list]:
    """`images=` / `videos=` of `LlavaMiniProcessor.__call__` as one list per text: a list per
    text, or one flat list shared out in placeholder order; checked against `counts`, the
    placeholders of each text."""
    if media is None:
        media = []
    elif not isinstance(media, (list, tuple)):
        media = [media]
    if media and all(isinstance(item, (list, tuple)) for item in media):
        if len(media) != len(counts):
            raise ValueError(f"Got {name} for {len(media)} texts but {len(counts)} texts.")
        per_sample = [list(item) for item in media]
    else:  # one flat list, shared out in placeholder order
        flat, per_sample = list(media), []
        for count in counts:
            per_sample.append(flat[:count])
            flat = flat[count:]
        per_sample[-1].extend(flat)
    for number, (items, count) in enumerate(zip(per_sample, counts, strict=True)):
        if len(items) != count:
            placeholder = DEFAULT_IMAGE_TOKEN if name == "images" else DEFAULT_VIDEO_TOKEN
            raise ValueError(
                f"Text {number} has {count} {placeholder} placeholders but {len(items)} {name}."
            )
    return per_sample


def media_in_placeholder_order(
    prompts: list[str], images, videos
) -> list[list[tuple[str, object]]]:
    """Per prompt, the `(kind, source)` of its images and videos in placeholder order (as
    `parse_conversation` gives them): its k-th `<image>` takes its k-th image, its k-th
    `<video>` its k-th video; `images` / `videos` as `media_per_text` takes them."""
    kinds = [placeholder_kinds(prompt) for prompt in prompts]
    image_lists = media_per_text(images, [k.count("image") for k in kinds], "images")
    video_lists = media_per_text(videos, [k.count("video") for k in kinds], "videos")
    media = []
    for sample_kinds, sample_images, sample_videos in zip(
        kinds, image_lists, video_lists, strict=True
    ):
        left = {"image": iter(sample_images), "video": iter(sample_videos)}
        media.append([(kind, next(left[kind])) for kind in sample_kinds])
    return media


def is_batch(conversation) -> bool:
    return bool(conversation) and isinstance(conversation[0], (list, tuple))


def as_batch(conversation) -> list[Messages]:
    if not isinstance(conversation, (list, tuple)) or not conversation:
        raise ValueError("A conversation is a non-empty list of messages (or a list of those).")
    return list(conversation) if is_batch(conversation) else [conversation]


MEDIA_KEYS = {"image": ("image", "path", "url", "base64"), "video": ("video", "path", "url")}
URL_PARTS = {"image_url": "image", "video_url": "video"}
"""OpenAI's content parts `{"type": "image_url", "image_url": {"url": ...}}` (and vLLM's
`video_url`), and the media kind of each."""
MEDIA_PLACEHOLDERS = {"image": DEFAULT_IMAGE_TOKEN, "video": DEFAULT_VIDEO_TOKEN}


@dataclass(frozen=True)
class MediaPart:
    """One image or video of a message: its kind ('image' or 'video'), its source (as the part
    gave it: a path, URL, data URL, PIL image or array) and the index of its part."""

    kind: str
    source: object
    part: int


@dataclass(frozen=True)
class ParsedMessage:
    """One user or assistant message: its role, its index in the conversation, and its text
    pieces and media in content order."""

    role: str
    index: int
    pieces: tuple[str | MediaPart, ...]

    @property
    def texts(self) -> list[str]:
        return [piece for piece in self.pieces if isinstance(piece, str)]

    @property
    def media(self) -> list[MediaPart]:
        return [piece for piece in self.pieces if isinstance(piece, MediaPart)]

    def text(self) -> str:
        """The pieces joined by newlines, an image becoming `<image>` and a video `<video>`
        where its part is (transformers' convention)."""
        return "\n".join(
            piece if isinstance(piece, str) else MEDIA_PLACEHOLDERS[piece.kind]
            for piece in self.pieces
        )


def parse_messages(
    conversation: Messages, number: int = 0
) -> tuple[str | None, list[ParsedMessage]]:
    """One conversation in transformers' (or OpenAI's) chat format -> (its system prompt or
    None, its user and assistant messages), checked: the one parser of chat messages.

    Leading system messages are joined by newlines; a system message after another role is
    refused. A content string is one text piece, taken as it is (placeholders included);
    `None` content is an empty text, except in a user message. Only user messages may hold
    images and videos. Raises `ValueError` naming the conversation, message and part.
    """
    system, messages = [], []
    for index, message in enumerate(conversation):
        where = f"conversation {number}, message {index}"
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"{where}: a message is a dict with 'role' and 'content'.")
        role, content = message["role"], message.get("content")
        if role == "system":
            if messages:
                raise ValueError(f"{where}: system messages may only come first.")
            system.append("\n".join(_pieces(content, where, allow_media=False)))
            continue
        if role not in ("user", "assistant"):
            raise ValueError(
                f"{where}: role must be 'system', 'user' or 'assistant', not {role!r}."
            )
        if content is None and role == "user":
            raise ValueError(f"{where}: a user message needs 'content'.")
        pieces = _pieces(content, where, allow_media=role == "user")
        messages.append(ParsedMessage(role, index, tuple(pieces)))
    return ("\n".join(system) if system else None), messages


def parse_conversation(
    conversation: Messages, number: int = 0
) -> tuple[list[tuple[str, str]], str | None, list[tuple[str, object]]]:
    """One conversation in transformers' chat format -> (`(role, text)` turns with
    placeholders, the system prompt of its leading system messages or None, the
    `(kind, source)` of its media in order), as `parse_messages` checks it.

    A content string is taken as it is; content parts are joined by newlines, an image part
    becoming `<image>` and a video part `<video>`.
    """
    system, messages = parse_messages(conversation, number)
    turns = [(message.role, message.text()) for message in messages]
    media = [(item.kind, item.source) for message in messages for item in message.media]
    return turns, system, media


def _pieces(content, where: str, allow_media: bool) -> list[str | MediaPart]:
    if content is None:
        return [""]
    if isinstance(content, str):
        return [content]
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"{where}: 'content' must be a string or a list of parts.")
    pieces = []
    for number, part in enumerate(content):
        here = f"{where}, part {number}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{here}: a text part needs a string 'text'.")
            pieces.append(part["text"])
            continue
        if kind in URL_PARTS:
            url = part.get(kind)
            part, kind = {"url": url.get("url") if isinstance(url, dict) else url}, URL_PARTS[kind]
        if kind not in MEDIA_KEYS:
            raise ValueError(
                f"{here}: 'type' must be 'text', 'image', 'image_url', 'video' or 'video_url', "
                f"got {kind!r}."
            )
        if not allow_media:
            raise ValueError(f"{here}: only user messages may hold images and videos.")
        sources = [part[key] for key in MEDIA_KEYS[kind] if part.get(key) is not None]
        if len(sources) != 1:
            raise ValueError(
                f"{here}: a {kind} part needs exactly one of {list(MEDIA_KEYS[kind])}."
            )
        source = sources[0]
        if part.get("base64") is not None and not source.startswith("data:"):
            source = "data:image;base64," + source  # transformers' raw base64 form
        pieces.append(MediaPart(kind, source, number))
    return pieces


def local_path(source: str) -> str:
    """A plain path, or the path of a `file://` URL; other URLs raise `ValueError` (media are
    read locally: nothing is downloaded)."""
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme in ("http", "https"):
        raise ValueError(
            f"Remote media are not fetched ({source}): download it and pass the file's path."
        )
    return source


def to_pil_image(image) -> Image.Image:
    """A PIL image, path (str or `os.PathLike`), `file://` URL, base64 `data:` URL or
    `(H, W, 3)` uint8 array -> RGB."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith("data:"):
            return _decode_data_url(image)
        return load_image(local_path(image))
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"An image array must be (H, W, 3) uint8, got {array.dtype} {array.shape}."
        )
    return Image.fromarray(array)


def to_video_frames(video, fps: float, max_frames: int | None) -> np.ndarray:
    """A video file (path, `os.PathLike` or `file://` URL) -> its frames sampled at `fps`, capped
    at `max_frames` (`llavamini.data.video.load_video`); decoded frames `(T, H, W, 3)` uint8 ->
    taken as they are, already sampled."""
    if isinstance(video, os.PathLike):
        video = os.fspath(video)
    if isinstance(video, str):
        return load_video(local_path(video), fps, max_frames)
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"Video frames must be a (T, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}."
        )
    return frames


class DataURLTooLarge(ValueError):
    """A data URL whose content is over the caller's limit."""


def decode_data_url(url: str, max_bytes: int | None = None) -> tuple[str, bytes]:
    """A base64 `data:` URL -> (its media type, e.g. 'image/png' ('' when it names none), its
    bytes): the one decoder of data URLs.

    Raises `DataURLTooLarge` when the content would be over `max_bytes` (checked before
    decoding), `ValueError` when the URL is not base64 or its payload is not valid base64.
    """
    header, comma, payload = url.partition(",")
    mime, *options = header.removeprefix("data:").split(";")
    if not url.startswith("data:") or not comma or "base64" not in options:
        raise ValueError(
            f"Expected a data URL like data:<type>;base64,<data>, got one starting {header[:40]!r}."
        )
    # Four base64 characters carry three bytes: refuse oversized uploads before decoding them.
    if max_bytes is not None and len(payload) // 4 * 3 > max_bytes:
        raise DataURLTooLarge(f"The data URL is over the limit of {max_bytes} bytes.")
    try:
        return mime, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"The data URL is not valid base64: {error}") from error


def _decode_data_url(url: str) -> Image.Image:
    _, data = decode_data_url(url)
    return open_rgb(io.BytesIO(data), "the image of a data URL")
