"""Paths that data files name: relative to a folder, and never outside it."""

from __future__ import annotations

import os


def join_inside(folder: str, path: str, flag: str) -> str:
    """`folder/path`, or `ValueError` when `path` is absolute or climbs out of `folder` with
    `..` (a question or sample file must not make the reader open files elsewhere).

    The check is on the path's text, not on where symbolic links lead: data folders are often
    links to other disks. `flag` names the option that set `folder`, for the message.
    """
    joined = os.path.normpath(os.path.join(folder, path))
    root = os.path.abspath(folder)
    inside = os.path.commonpath([os.path.abspath(joined), root]) == root
    if os.path.isabs(path) or not inside:
        raise ValueError(
            f"{path!r} is outside {flag} {folder!r}: name media relative to that folder, "
            f"without '..'."
        )
    return joined
