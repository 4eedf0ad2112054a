"""The errors a user can cause, each a one-line message naming the bad value and what is allowed.

The CLI turns every one of them into that line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad value in a run config or on the command line."""


class DataError(ConfigError):
    """Bad data input: a missing file, an unreachable dataset or tokenizer, a corpus too small."""


class RunError(ValueError):
    """A run directory the run cannot go on from: a damaged or foreign file, a diverged loss, a full disk."""


class TicketError(ValueError):
    """A ticket folder or repo that cannot be used; the message names the file and what is wrong."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of a library error, so the errors we raise from it stay one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
