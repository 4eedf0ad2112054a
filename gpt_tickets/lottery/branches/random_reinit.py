"""Round r's mask on freshly initialised weights (another seed): a ticket must beat it (Frankle & Carbin's control)."""

from __future__ import annotations

import torch

from ...models.build import random_init
from ...sparsity.masks import Mask
from .base import Branch, BranchParams, FinishedRound
from .registry import register


@register
class RandomReinit(Branch):
    name = "random_reinit"
    description = "round r's mask on freshly initialised weights (seed S)"

    def start(self, source: FinishedRound, params: BranchParams) -> tuple[dict[str, torch.Tensor], Mask]:
        fresh = random_init(source.model.config, seed=params.seed)
        return {n: p.detach() for n, p in fresh.named_parameters()}, source.mask()
