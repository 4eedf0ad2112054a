"""Magnitude pruning as a pure function of (weights, mask) -> new mask. No Accelerate, no training state.

The cut is found without concatenating or sorting the weights: the k-th smallest surviving magnitude is located by
bisection over the bit patterns of float32 magnitudes (for non-negative floats, integer order is value order), each
step one counting pass over the matrices. Memory stays at one matrix's temporaries, on the weights' own device, so a
7B model is pruned where it lives instead of in a CPU copy several times its size.
"""

from __future__ import annotations

import torch

from .masks import Mask

_INF_BITS = 0x7F800000  # float32 +inf


def _magnitude_bits(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs().view(torch.int32)


def _count_at_most(weights: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], bits: int) -> int:
    return sum(int((keep[n] & (_magnitude_bits(w) <= bits)).sum()) for n, w in weights.items())


def _kth_smallest_bits(weights: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], k: int) -> int:
    """Bit pattern of the k-th smallest surviving magnitude (1-based): the least b with count(|w| <= b) >= k."""
    lo, hi = 0, _INF_BITS
    while lo < hi:
        mid = (lo + hi) // 2
        if _count_at_most(weights, keep, mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _prune_group(weights: dict[str, torch.Tensor], mask: Mask, fraction: float) -> dict[str, torch.Tensor]:
    """Remove round(fraction * surviving) of the surviving entries of these matrices, smallest magnitude first.

    Entries tied at the cut are removed in parameter order, then flat index order, so every process decides alike.
    """
    keep = {n: mask[n].to(w.device) for n, w in weights.items()}
    n_prune = round(fraction * sum(int(m.sum()) for m in keep.values()))
    if n_prune == 0:
        return {n: m.clone() for n, m in keep.items()}
    cut = _kth_smallest_bits(weights, keep, n_prune)
    ties_left = n_prune - _count_at_most(weights, keep, cut - 1)
    new = {}
    for n, w in weights.items():
        bits = _magnitude_bits(w)
        survives = keep[n] & (bits > cut)
        tied = (keep[n] & (bits == cut)).flatten().nonzero().squeeze(1)
        kept_ties = tied[ties_left:]
        ties_left = max(0, ties_left - tied.numel())
        survives.view(-1)[kept_ties] = True
        new[n] = survives
    return new


@torch.no_grad()
def magnitude_prune(weights: dict[str, torch.Tensor], mask: Mask, fraction: float, scope: str) -> Mask:
    """Prune ``fraction`` of the weights that ``mask`` keeps, by |weight|.

    Args:
        weights: the trained values of (at least) every masked weight, on any device.
        mask: the current mask; pruned entries stay pruned.
        fraction: share p of the *remaining* weights to remove, so after r rounds 1-(1-p)^r are pruned.
        scope: ``global`` ranks all masked weights together; ``layer`` prunes p of each matrix separately.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1)")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r} is not allowed; choose global or layer")
    names = list(mask)
    groups = [names] if scope == "global" else [[n] for n in names]
    new = Mask()
    for group in groups:
        for name, keep in _prune_group({n: weights[n] for n in group}, mask, fraction).items():
            new[name] = keep.cpu()
    return new
