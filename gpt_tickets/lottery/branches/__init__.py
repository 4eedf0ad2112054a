"""Branches: plug-ins that train something else from a finished round (controls, baselines, ...)."""

from . import dense_long, oneshot, random_prune, random_reinit, rewind_step  # noqa: F401  (each registers itself)
from .base import Branch, BranchParams, FinishedRound
from .registry import BRANCHES, get_branch, register
from .runner import run_branch, train_branch, train_branches

__all__ = [
    "BRANCHES",
    "Branch",
    "BranchParams",
    "FinishedRound",
    "get_branch",
    "register",
    "run_branch",
    "train_branch",
    "train_branches",
]
