"""Library output a run does not need: progress bars of steps that take a second, and harmless warnings.

A newcomer reads these as errors, and in a redirected log a progress bar is a flood of lines. What a run has to say
it prints itself, one line per phase.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def interactive() -> bool:
    """Whether a person watches stderr (a terminal): only then are training progress bars worth drawing."""
    return sys.stderr.isatty()


@contextmanager
def _bars_off(is_on: Callable[[], bool], off: Callable[[], None], on: Callable[[], None]) -> Iterator[None]:
    was_on = is_on()
    off()
    try:
        yield
    finally:
        if was_on:
            on()


@contextmanager
def library_bars_off() -> Iterator[None]:
    """No progress bars from transformers (loading or writing weights) or datasets (``map``) inside the block."""
    import datasets
    from transformers.utils import logging as hf_logging

    with (
        _bars_off(hf_logging.is_progress_bar_enabled, hf_logging.disable_progress_bar, hf_logging.enable_progress_bar),
        _bars_off(datasets.is_progress_bar_enabled, datasets.disable_progress_bars, datasets.enable_progress_bars),
    ):
        yield


@contextmanager
def silenced(logger_name: str, below: int = logging.ERROR) -> Iterator[None]:
    """Drop one library logger's messages below ``below`` inside the block (a known-harmless warning)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(below)
    try:
        yield
    finally:
        logger.setLevel(level)
