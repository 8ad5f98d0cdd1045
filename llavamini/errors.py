"""Errors a command raises instead of ending the process.

A command's function raises these; only the command line (`llavamini.cli.main` and the
`python -m` entry points, `llavamini.flags.standalone_main`) turns them into an exit, so calling
a command from Python never ends the caller's process.
"""

from __future__ import annotations

import contextlib


class CommandError(Exception):
    """A command could not do what it was asked. The command line prints `error: MESSAGE` and
    exits with status 1."""

    def as_exit(self) -> SystemExit:
        """The exit of the command line for this error."""
        return SystemExit(f"error: {self}")


class UsageError(CommandError, ValueError):
    """A bad argument: a missing file, a checkpoint that does not load, a setting the command
    cannot honour. A `ValueError`, so callers that caught one before still do."""


class ChecksFailed(CommandError):
    """A check command found problems and has printed its report; the command line exits with
    status 1 and prints nothing more."""

    def as_exit(self) -> SystemExit:
        return SystemExit(1)


@contextlib.contextmanager
def exit_on_command_error():
    """Turn a `CommandError` raised inside into the command line's exit (entry points only)."""
    try:
        yield
    except CommandError as error:
        raise error.as_exit() from error
