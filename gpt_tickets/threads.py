"""Intra-op threads per process: the cores divided among the processes on this machine.

torch gives every process all the machine's cores, so N processes on one CPU machine fight over them (2 processes
on 2 cores ran 3.5x slower than with one thread each). When several processes share the machine
(``LOCAL_WORLD_SIZE`` > 1) and ``OMP_NUM_THREADS`` is unset, each takes its share; an explicit ``OMP_NUM_THREADS``
(the user's, or the one a launcher sets: accelerate and torchrun do) and a single process's own setting (torch's
default, or ``torch.set_num_threads``) are kept. The thread count changes float reductions, hence the last bits of
results: it is logged with every run.
"""

from __future__ import annotations

import functools
import os

import torch


def choose_threads(environ: dict[str, str], current: int) -> tuple[int, str]:
    """(threads per process, why), from the environment and the process's current intra-op threads."""
    explicit = environ.get("OMP_NUM_THREADS", "").strip()
    if explicit:
        return current, "OMP_NUM_THREADS"
    local = environ.get("LOCAL_WORLD_SIZE", "").strip()
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    if processes == 1:
        return current, "one process: torch's setting"
    return max(1, current // processes), f"{current} cores / {processes} local processes"


@functools.cache
def set_intra_op_threads() -> str:
    """Set this process's intra-op threads once; returns what to log, e.g. ``4 threads per process (8 cores / 2
    local processes)``."""
    threads, why = choose_threads(dict(os.environ), torch.get_num_threads())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return f"{threads} thread{'s' * (threads > 1)} per process ({why})"
