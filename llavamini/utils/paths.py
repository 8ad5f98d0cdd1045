"""Paths that data files name: relative to a folder, and never outside it."""

from __future__ import annotations

import os


def join_inside(folder: str, path: str, flag: str) -> str:
    """`folder/path`, or `ValueError` when the result lies outside `folder`: a relative name
    that climbs out with `..`, or an absolute one elsewhere (a question or sample file must not
    make the reader open files outside the folder it was given). An absolute name inside
    `folder` is taken as it is (so `folder` '/' accepts every absolute name).

    The check is on the path's text, not on where symbolic links lead: data folders are often
    links to other disks. `flag` names the option that set `folder`, for the message.
    """
    joined = os.path.normpath(os.path.join(folder, path))
    root = os.path.abspath(folder)
    if os.path.commonpath([os.path.abspath(joined), root]) != root:
        raise ValueError(
            f"{path!r} is outside {flag} {folder!r}: name media relative to that folder "
            f"(without '..'), or give {flag} a folder that holds them."
        )
    return joined
