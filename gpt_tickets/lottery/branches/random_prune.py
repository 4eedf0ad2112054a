"""Random masks with exactly round r's sparsity in every matrix, on the rewind weights: is the mask itself special?

Keeping each matrix's count (not only the overall share) separates "which weights" from "how many per layer", the
layer-wise distribution a global magnitude cut decides (Frankle et al. 2021, "Pruning neural networks at
initialization: why are we missing the mark?").
"""

from __future__ import annotations

import torch

from ...config.schema import RunConfig
from ...sparsity.masks import Mask
from .base import Branch, BranchParams, FinishedRound, require_unstructured
from .registry import register


def random_mask_like(mask: Mask, seed: int) -> Mask:
    """Each matrix keeps exactly as many entries as in ``mask``, chosen uniformly at random (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    randomized = Mask()
    for name, m in mask.items():
        kept = torch.zeros(m.numel(), dtype=torch.bool)
        kept[torch.randperm(m.numel(), generator=generator)[: int(m.sum())]] = True
        randomized[name] = kept.view(m.shape)
    return randomized


@register
class RandomPrune(Branch):
    name = "random_prune"
    description = "random masks with round r's per-matrix sparsity, on the rewind weights (seed S)"

    def check(self, params: BranchParams, cfg: RunConfig) -> None:
        require_unstructured(self.name, cfg)

    def start(self, source: FinishedRound, params: BranchParams) -> tuple[dict[str, torch.Tensor], Mask]:
        return source.rewind_weights(), random_mask_like(source.mask(), params.seed)
