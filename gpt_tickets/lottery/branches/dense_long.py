"""The dense model trained as long as round r's ticket was in all: does the ticket beat dense only because dense was
under-trained?

Round r's ticket is the end of r + 1 trainings of ``train.steps`` (round 0, then r retrainings), so the dense model
trains (r + 1) x ``train.steps`` steps from the run's initialisation, in r + 1 segments with warm restarts (a fresh
optimizer and schedule each, as a round): every segment ends a decay, so the dense model at j x ``train.steps`` is a
fair snapshot, and one training is evaluated at every round's step count. Segment j sees the data from step
j x ``train.steps`` on, in the order of seed S: with S = the run's seed, segment 0 is round 0, bitwise.
"""

from __future__ import annotations

import torch

from ...sparsity.masks import Mask
from .base import Branch, BranchParams, FinishedRound
from .registry import register


@register
class DenseLong(Branch):
    name = "dense_long"
    description = "the dense model trained (r + 1) x train.steps steps from the initialisation (data order: seed S)"

    def segments(self, params: BranchParams) -> int:
        return params.round + 1

    def data_seed(self, params: BranchParams) -> int:
        return params.seed

    def start(self, source: FinishedRound, params: BranchParams) -> tuple[dict[str, torch.Tensor], Mask]:
        return source.initial_weights(), source.run_dir.round_mask(0)  # round 0 trains under the full mask
