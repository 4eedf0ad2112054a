"""Round r's mask on the weights of another step of dense training: from how early does a ticket train?

Frankle et al. 2020 ("Linear mode connectivity and the lottery ticket hypothesis") found that larger models need
late rewinding: the mask works from step k > 0 of dense training, not from the initialisation. This branch asks it
of a finished run without recomputing its rounds, from any step round 0 saved (0, ``prune.rewind_step`` and
``prune.rewind_points``). Its seed sets its data order, so the run's seed at the run's rewind step retrains round r
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config.schema import RunConfig
from ...sparsity.masks import Mask
from ..run_dir import RunDir
from .base import Branch, BranchParams, FinishedRound
from .registry import register


@dataclass(frozen=True)
class RewindStepParams(BranchParams):
    """``rewind``: the step of round 0 whose saved weights the branch starts from (0: the initialisation)."""

    rewind: int


@register
class RewindStep(Branch):
    name = "rewind_step"
    description = "round r's mask on round 0's weights at step `rewind` (seed S: the data order)"
    Params = RewindStepParams

    def data_seed(self, params: BranchParams) -> int:
        return params.seed

    def check(self, params: RewindStepParams, cfg: RunConfig) -> None:
        RunDir(cfg.output_dir).weights_at(params.rewind, cfg)  # a step round 0 did not save: one line, listing them

    def start(self, source: FinishedRound, params: RewindStepParams) -> tuple[dict[str, torch.Tensor], Mask]:
        return source.weights_at(params.rewind), source.mask()
