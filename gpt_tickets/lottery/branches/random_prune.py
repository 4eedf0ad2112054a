"""Random masks with exactly round r's counts, in the ticket's structure, on the rewind weights: is the mask itself
special?

Keeping the counts where the ticket's pruning decided them (not only the overall share) separates "which weights" from
"how many per layer", the layer-wise distribution a global cut decides (Frankle et al. 2021, "Pruning neural networks
at initialization: why are we missing the mark?"). By ``prune.structure``: ``weights``, each matrix keeps exactly its
count of entries, anywhere in it; ``units``, each layer keeps exactly its count of heads and of neurons, whole units
(``sparsity.units.random_units_like``); ``nm``, each group of M inputs keeps exactly its count, so the control is as
N:M as the ticket (``sparsity.nm.random_groups_like``). A control in another structure than the ticket's would
measure the structure, not the mask.
"""

from __future__ import annotations

import torch

from ...sparsity.masks import Mask
from ...sparsity.nm import random_groups_like
from ...sparsity.units import random_units_like
from .base import Branch, BranchParams, FinishedRound
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
    description = (
        "random masks with round r's counts in the ticket's structure (weights: per matrix; units: heads and neurons "
        "per layer; nm: per group of M), on the rewind weights (seed S)"
    )

    def start(self, source: FinishedRound, params: BranchParams) -> tuple[dict[str, torch.Tensor], Mask]:
        return source.rewind_weights(), random_mask_in_structure(source, params.seed)


def random_mask_in_structure(source: FinishedRound, seed: int) -> Mask:
    """The round's mask redrawn at random in the run's ``prune.structure``, its counts kept (module docstring)."""
    prune = source.run_dir.stored_config().prune
    mask = source.mask()
    if prune.structure == "units":
        return random_units_like(mask, source.model.config, seed)
    if prune.structure == "nm":
        return random_groups_like(mask, source.model.config.model_type, prune.nm_pattern()[1], seed)
    return random_mask_like(mask, seed)
