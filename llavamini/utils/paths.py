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
    root = os.path.normpath(folder)
    if os.path.isabs(path) or os.path.commonpath(
        [os.path.abspath(joined), os.path.abspath(root)]
    ) != os.path.abspath(root):
        raise ValueError(
            f"{path!r} is outside {flag} {folder!r}: name media relative to that folder, "
            f"without '..'."
        )
    return joined
