"""Branch names -> branch classes. A branch module registers itself on import; ``branches/__init__``, which Python
runs before this module, imports them all, so the table is full whenever ``get_branch`` is called."""

from __future__ import annotations

import difflib

from ...errors import ConfigError
from .base import Branch

BRANCHES: dict[str, type[Branch]] = {}


def register(cls: type[Branch]) -> type[Branch]:
    if cls.name in BRANCHES:
        raise ValueError(f"branch {cls.name!r} is registered twice")
    BRANCHES[cls.name] = cls
    return cls


def get_branch(name: str) -> Branch:
    """The branch called ``name``; an unknown name fails with a did-you-mean and the allowed names."""
    if name not in BRANCHES:
        close = difflib.get_close_matches(str(name), BRANCHES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown branch {name!r}; {hint}allowed: {', '.join(sorted(BRANCHES))}")
    return BRANCHES[name]()
