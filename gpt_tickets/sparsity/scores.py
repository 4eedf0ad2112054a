"""Scores: weights -> non-negative float32 scores of the same shape; the lowest are pruned first.

A score is computed one matrix at a time, when selection asks for it, so no copy of all the weights ever exists. A
new score is one function here; selection (``select``) works for any of them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Score = Callable[[str, torch.Tensor], torch.Tensor]
"""(weight name, weight) -> non-negative float32 tensor of the weight's shape."""


def magnitude(name: str, weight: torch.Tensor) -> torch.Tensor:
    """|w|: Frankle & Carbin's score."""
    return weight.detach().float().abs()


def normalized_magnitude(name: str, weight: torch.Tensor) -> torch.Tensor:
    """|w| / RMS of the matrix's non-zero entries: matrices compete on the shape of their distribution, not their scale.

    The score is invariant to a matrix's scale (c x W scores as W for c > 0) and its size, so GPT-2's residual
    projections (``c_proj``, initialised at 0.02/sqrt(2 n_layer)) are not stripped first for their smaller init
    std, as global |w| does. The RMS skips exact zeros, which in trained weights are earlier rounds' pruned entries,
    so they do not shrink the scale; an all-zero matrix scores 0. LAMP (Lee et al. 2021) normalises by sorted tail
    sums instead, at the cost of a sort per matrix.
    """
    scores = weight.detach().float().abs()
    survivors = int(scores.count_nonzero())
    if survivors == 0:
        return scores
    rms = torch.linalg.vector_norm(scores) / math.sqrt(survivors)
    return scores.div_(rms)


SCORES: dict[str, Score] = {"magnitude": magnitude, "normalized_magnitude": normalized_magnitude}
"""The scores ``prune.score`` names (``config.schema.SCORE_NAMES``: a test keeps the two equal)."""
