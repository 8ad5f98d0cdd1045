"""The OpenAI API's media: a content part's URL becomes a local file, from a base64 `data:` URL
(decoded by `llavamini.data.messages.decode_data_url`, as the processor decodes one, and written
to a temporary folder) or a local path inside the operator's `--allowed-media-dir`;
remote URLs are refused (the server never fetches).
"""

from __future__ import annotations

import os

from llavamini.data.messages import DataURLTooLarge, decode_data_url, local_path
from llavamini.serve.api_schema import ApiError, ServerConfig

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


def media_file(kind: str, url: str, param: str, config: ServerConfig, folder: str) -> str:
    """A local file holding the media of one content part (written into `folder` for a data
    URL); raises `ApiError` for anything not allowed or malformed."""
    if url.startswith("data:"):
        return _write_data_url(kind, url, param, config.max_media_bytes, folder)
    if url.startswith(("http://", "https://")):
        raise ApiError(
            400, "Remote URLs are not fetched; send the file as a base64 data URL.", param=param
        )
    return allowed_local_path(local_path(url), config.allowed_media_dir, param)


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
    try:
        mime, data = decode_data_url(url, max_bytes)
    except DataURLTooLarge as error:
        raise ApiError(413, f"{error} (the server's limit)", param=param) from error
    except ValueError as error:
        raise ApiError(400, str(error), param=param) from error
    if kind == "image" and not mime.startswith("image/"):
        raise ApiError(400, f"An image_url data URL needs an image/* type, got {mime!r}.", param)
    if kind == "video" and mime not in VIDEO_SUFFIX_BY_MIME:
        raise ApiError(
            400,
            f"Video type {mime!r} is not supported; use one of {sorted(VIDEO_SUFFIX_BY_MIME)}.",
            param,
        )
    suffix = IMAGE_SUFFIX if kind == "image" else VIDEO_SUFFIX_BY_MIME[mime]
    path = os.path.join(folder, f"{len(os.listdir(folder))}{suffix}")
    with open(path, "wb") as file:
        file.write(data)
    return path
