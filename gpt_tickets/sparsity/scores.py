"""Scores: weights -> non-negative float32 scores of the same shape; the lowest are pruned first.

A score is computed one matrix at a time, when selection asks for it, so no copy of all the weights ever exists. A
new score is one function here; selection (``select``) works for any of them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

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


def wanda(input_norms: Mapping[str, torch.Tensor]) -> Score:
    """|W_ij| x ||X_j||_2 (Sun et al. 2023, "A simple and effective pruning approach for large language models"):
    a weight matters as much as its magnitude times the size of the input feature it multiplies.

    ``input_norms[name]``: the L2 norm of each input feature of that weight's module over calibration tokens, shaped
    to broadcast against the weight (``calibration.input_norms`` gives [in, 1] for a GPT-2 Conv1D, [1, in] for an
    nn.Linear). Not a ``prune.score``: it needs a calibration pass, which the ``wanda`` branch makes.
    """

    def score(name: str, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().float().abs().mul_(input_norms[name].to(weight.device, torch.float32))

    return score


SCORES: dict[str, Score] = {"magnitude": magnitude, "normalized_magnitude": normalized_magnitude}
"""The scores ``prune.score`` names (``config.schema.SCORE_NAMES``: a test keeps the two equal)."""
