"""Intra-op threads per process: the cores divided among the processes on this machine.

torch gives every process all the machine's cores, so N processes on one CPU machine fight over them (2 processes
on 2 cores ran 3.5x slower than with one thread each). An explicit ``OMP_NUM_THREADS`` (the user's, or the one a
launcher sets: accelerate and torchrun do) is respected. The thread count changes float reductions, hence the
last bits of results: it is logged with every run.
"""

from __future__ import annotations

import functools
import os

import torch


def choose_threads(environ: dict[str, str], default: int) -> tuple[int, str]:
    """(threads per process, why), from the environment and torch's default (the process's physical cores)."""
    explicit = environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit), "OMP_NUM_THREADS"
    local = environ.get("LOCAL_WORLD_SIZE", "").strip()
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, default // processes), f"{default} cores / {processes} local process{'es' * (processes > 1)}"


def set_intra_op_threads() -> str:
    """Set torch's intra-op threads for this process; returns what to log, e.g. ``2 threads (2 cores / 1 ...)``."""
    threads, why = choose_threads(dict(os.environ), _default_threads())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return f"{threads} thread{'s' * (threads > 1)} per process ({why})"


@functools.cache
def _default_threads() -> int:
    """torch's own choice, read once: before this module changes it."""
    return torch.get_num_threads()
