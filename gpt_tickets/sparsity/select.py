"""Selection: (weights, mask, score) -> the new mask keeping all but the lowest-scored share. No Accelerate.

The cut is found without concatenating or sorting the scores: the k-th smallest surviving score is located by
bisection over the bit patterns of float32 scores (for non-negative floats, integer order is value order), each step
one counting pass over the matrices. Memory stays at one matrix's temporaries, on the weights' own device, so a 7B
model is pruned where it lives instead of in a CPU copy several times its size.
"""

from __future__ import annotations

import torch

from ..config.schema import SCOPES
from .masks import Mask
from .scores import Score, magnitude

_INF_BITS = 0x7F800000  # float32 +inf


Scored = dict[str, torch.Tensor]


def _score_bits(score: Score, name: str, weight: torch.Tensor) -> torch.Tensor:
    return score(name, weight).contiguous().view(torch.int32)


def _count_at_most(weights: Scored, keep: Scored, score: Score, bits: int) -> int:
    return sum(int((keep[n] & (_score_bits(score, n, w) <= bits)).sum()) for n, w in weights.items())


def _kth_smallest_bits(weights: Scored, keep: Scored, score: Score, k: int) -> int:
    """Bit pattern of the k-th smallest surviving score (1-based): the least b with count(score <= b) >= k."""
    lo, hi = 0, _INF_BITS
    while lo < hi:
        mid = (lo + hi) // 2
        if _count_at_most(weights, keep, score, mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _prune_group(weights: Scored, mask: Mask, fraction: float, score: Score) -> Scored:
    """Remove round(fraction * surviving) of the surviving entries of these matrices, lowest score first.

    Entries tied at the cut are removed in parameter order, then flat index order, so every process decides alike.
    """
    keep = {n: mask[n].to(w.device) for n, w in weights.items()}
    n_prune = round(fraction * sum(int(m.sum()) for m in keep.values()))
    if n_prune == 0:
        return {n: m.clone() for n, m in keep.items()}
    cut = _kth_smallest_bits(weights, keep, score, n_prune)
    ties_left = n_prune - _count_at_most(weights, keep, score, cut - 1)
    new = {}
    for n, w in weights.items():
        bits = _score_bits(score, n, w)
        survives = keep[n] & (bits > cut)
        tied = (keep[n] & (bits == cut)).flatten().nonzero().squeeze(1)
        kept_ties = tied[ties_left:]
        ties_left = max(0, ties_left - tied.numel())
        survives.view(-1)[kept_ties] = True
        new[n] = survives
    return new


@torch.no_grad()
def prune(weights: Scored, mask: Mask, fraction: float, scope: str, score: Score = magnitude) -> Mask:
    """Prune ``fraction`` of the entries that ``mask`` keeps, lowest ``score`` first.

    Args:
        weights: the trained values of (at least) every masked weight, on any device.
        mask: the current mask; pruned entries stay pruned.
        fraction: share p of the *remaining* weights to remove, so after r rounds 1-(1-p)^r are pruned.
        scope: ``global`` ranks all masked weights together; ``layer`` prunes p of each matrix separately.
        score: weights -> non-negative scores (``scores.magnitude``: Frankle & Carbin's |w|).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1)")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not allowed; choose one of {', '.join(SCOPES)}")
    names = list(mask)
    groups = [names] if scope == "global" else [[n] for n in names]
    new = Mask()
    for group in groups:
        for name, keep in _prune_group({n: weights[n] for n in group}, mask, fraction, score).items():
            new[name] = keep.cpu()
    return new


def magnitude_prune(weights: Scored, mask: Mask, fraction: float, scope: str) -> Mask:
    """``prune`` by |weight|: one round of IMP's selection."""
    return prune(weights, mask, fraction, scope, magnitude)
