"""Magnitude pruning as a pure function of (weights, mask) -> new mask. No Accelerate, no training state."""

from __future__ import annotations

import torch

from .masks import Mask


def _prune_smallest(magnitudes: torch.Tensor, keep: torch.Tensor, fraction: float) -> torch.Tensor:
    """Turn off round(fraction * surviving) of the surviving entries with the smallest magnitude.

    Scores only the surviving entries and selects with ``topk(largest=False)``, exactly as
    ``torch.nn.utils.prune`` does for an iterative L1 prune, so both break magnitude ties the same way.
    """
    surviving = keep.nonzero().squeeze(1)
    n_prune = round(fraction * surviving.numel())
    new_keep = keep.clone()
    if n_prune:
        smallest = torch.topk(magnitudes[surviving], k=n_prune, largest=False).indices
        new_keep[surviving[smallest]] = False
    return new_keep


@torch.no_grad()
def magnitude_prune(weights: dict[str, torch.Tensor], mask: Mask, fraction: float, scope: str) -> Mask:
    """Prune ``fraction`` of the weights that ``mask`` keeps, by |weight|.

    Args:
        weights: the trained values of every masked weight (same names as ``mask``).
        mask: the current mask; pruned entries stay pruned.
        fraction: share p of the *remaining* weights to remove, so after r rounds 1-(1-p)^r are pruned.
        scope: ``global`` ranks all masked weights together; ``layer`` prunes p of each matrix separately.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1)")
    names = list(mask)
    if scope == "layer":
        flat = {
            n: _prune_smallest(weights[n].detach().float().abs().flatten().cpu(), mask[n].flatten(), fraction)
            for n in names
        }
    elif scope == "global":
        magnitudes = torch.cat([weights[n].detach().float().abs().flatten().cpu() for n in names])
        keep = _prune_smallest(magnitudes, torch.cat([mask[n].flatten() for n in names]), fraction)
        flat = dict(zip(names, keep.split([mask[n].numel() for n in names]), strict=True))
    else:
        raise ValueError(f"scope={scope!r} is not allowed; choose global or layer")
    new = Mask()
    for n in names:
        new[n] = flat[n].view(mask[n].shape).clone()
    return new
