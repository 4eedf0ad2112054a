"""Scores: weights -> non-negative float32 scores of the same shape; the lowest are pruned first.

A score is computed one matrix at a time, when selection asks for it, so no copy of all the weights ever exists. A
new score is one function here; selection (``select``) works for any of them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Score = Callable[[str, torch.Tensor], torch.Tensor]
"""(weight name, weight) -> non-negative float32 tensor of the weight's shape."""


def magnitude(name: str, weight: torch.Tensor) -> torch.Tensor:
    """|w|: Frankle & Carbin's score."""
    return weight.detach().float().abs()


SCORES: dict[str, Score] = {"magnitude": magnitude}
