"""Selection: (weights, mask, score) -> the new mask keeping all but the lowest-scored share. No Accelerate.

Weights are pruned in pools, each ranked on its own at its own fraction: all weights together (scope ``global``),
each matrix alone (``layer``), or per group (``group_pools``); or row by row at a given count per matrix
(``prune_rows``: Wanda's comparison group, each output unit's incoming weights).

The cut is found without concatenating or sorting the scores, by a radix select over the bit patterns of the
float32 scores (for non-negative floats, integer order is value order): one pass counts the surviving scores' high
16 bits into a histogram, which names the bucket holding the k-th smallest; a second counts the low 16 bits inside
that bucket, which gives the exact cut; a third writes the new mask. Three passes over the weights where a
bisection needs ~32, and the memory of one matrix's temporaries plus the new mask (1.2 bytes per prunable weight on
GPT-2 small), on the weights' own device, so a 7B model is pruned where it lives instead of through a copy of all
its scores (``torch.cat`` + ``kthvalue``: 8 bytes per prunable weight; torch's own global pruning: 27; see
``benchmarks/selection.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from ..config.schema import SCOPES
from ..models.families import input_dim
from .masks import Mask
from .nm import grouped, ungrouped
from .report import weight_group
from .scores import Score, magnitude

_HALF = 16  # bits per radix digit
_HIGH_BINS = 1 << 15  # high halves of non-negative int32 bit patterns: 0 .. 0x7FFF (NaNs sort above +inf)
_LOW_BINS = 1 << _HALF

Scored = dict[str, torch.Tensor]


def _score_bits(score: Score, name: str, weight: torch.Tensor) -> torch.Tensor:
    """The scores as int32 bit patterns, which order like the values because scores are non-negative float32."""
    scores = score(name, weight)
    if scores.dtype != torch.float32:
        raise TypeError(f"score of {name!r} is {scores.dtype}; scores must be float32")
    return scores.contiguous().view(torch.int32)


def _keep(mask: Mask, name: str, weight: torch.Tensor) -> torch.Tensor:
    """One matrix's mask on its weight's device, moved there only while it is used (no copy on CPU)."""
    return mask[name].to(weight.device)


def _count(values: torch.Tensor, bins: int, name: str) -> torch.Tensor:
    """Histogram (on CPU) of the int32 ``values``; a negative one means a score below zero (or -0.0)."""
    try:
        return torch.bincount(values.view(-1), minlength=bins).cpu()
    except RuntimeError as err:  # bincount checks for negatives anyway: no extra pass on the common path
        if values.numel() and int(values.min()) < 0:
            raise _negative(name) from err
        raise


def _negative(name: str) -> ValueError:
    return ValueError(f"score of {name!r} has negative values (or -0.0); scores must be >= 0")


def _high_histogram(weights: Scored, mask: Mask, score: Score, pruned: int) -> torch.Tensor:
    """Pass 1: how many surviving scores have each high half, over all matrices of the group.

    The ``pruned`` entries are counted into bin 0 (multiplying by the mask is much cheaper than selecting the
    survivors) and taken out again.
    """
    hist = torch.zeros(_HIGH_BINS, dtype=torch.int64)
    for n, w in weights.items():
        high = (_score_bits(score, n, w) >> _HALF).mul_(_keep(mask, n, w))
        hist += _count(high, _HIGH_BINS, n)
    hist[0] -= pruned
    return hist


def _low_histogram(weights: Scored, mask: Mask, score: Score, high: int) -> torch.Tensor:
    """Pass 2: how many surviving scores in the bucket ``high`` have each low half."""
    hist = torch.zeros(_LOW_BINS, dtype=torch.int64)
    for n, w in weights.items():
        bits = _score_bits(score, n, w)
        in_bucket = ((bits >> _HALF) == high).logical_and_(_keep(mask, n, w))
        hist += _count(bits[in_bucket] & (_LOW_BINS - 1), _LOW_BINS, n)
    return hist


def _locate(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """(the bin holding the k-th smallest entry (1-based), how many entries lie in the bins below it)."""
    below = hist.cumsum(0)
    found = int(torch.searchsorted(below, k))  # the first bin whose running count reaches k
    return found, int(below[found - 1]) if found else 0


def _kth_smallest_bits(weights: Scored, mask: Mask, score: Score, k: int, pruned: int) -> tuple[int, int]:
    """(bit pattern of the k-th smallest surviving score (1-based), how many surviving scores are smaller)."""
    high, below_high = _locate(_high_histogram(weights, mask, score, pruned), k)
    low, below_low = _locate(_low_histogram(weights, mask, score, high), k - below_high)
    return high << _HALF | low, below_high + below_low


def _cut(weights: Scored, mask: Mask, score: Score, cut: int, ties: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass 3: keep the entries scored above ``cut`` and those tied at it after the first ``ties``.

    Tied entries go in parameter order, then flat index order, so every process decides alike.
    """
    for n, w in weights.items():
        keep = _keep(mask, n, w)
        bits = _score_bits(score, n, w)
        if ties == 0:
            yield n, (bits >= cut).logical_and_(keep).cpu()
            continue
        new = (bits > cut).logical_and_(keep)
        tied = (bits == cut).logical_and_(keep)
        n_tied = int(tied.sum())
        if n_tied > ties:  # the first `ties` go, the rest stay
            new.view(-1)[tied.flatten().nonzero().squeeze(1)[ties:]] = True
        ties = max(0, ties - n_tied)
        yield n, new.cpu()


def _prune_group(weights: Scored, mask: Mask, fraction: float, score: Score) -> Iterator[tuple[str, torch.Tensor]]:
    """Remove round(fraction * surviving) of the surviving entries of these matrices, lowest score first."""
    surviving = sum(int(mask[n].sum()) for n in weights)
    n_prune = round(fraction * surviving)
    if n_prune == 0:
        yield from ((n, mask[n].to("cpu", copy=True)) for n in weights)
        return
    pruned = sum(mask[n].numel() for n in weights) - surviving
    cut, smaller = _kth_smallest_bits(weights, mask, score, n_prune, pruned)
    yield from _cut(weights, mask, score, cut, n_prune - smaller)


@dataclass(frozen=True)
class Pool:
    """Weights ranked against one another, and the share p of their surviving entries pruned in this round."""

    names: tuple[str, ...]
    fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction={self.fraction} must be in (0, 1)")
        if not self.names:
            raise ValueError("a pool needs at least one weight")


def scope_pools(names: Iterable[str], fraction: float, scope: str) -> list[Pool]:
    """``global``: the weights in one pool; ``layer``: each matrix a pool of its own."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not allowed; choose one of {', '.join(SCOPES)}")
    names = tuple(names)
    return [Pool(names, fraction)] if scope == "global" else [Pool((n,), fraction) for n in names]


def group_pools(
    names: Iterable[str],
    model_type: str,
    fraction: float,
    scope: str,
    group_fractions: Mapping[str, float] | None = None,
) -> list[Pool]:
    """The pools of IMP's selection: each group of ``group_fractions`` on its own, at its own fraction.

    The groups not listed are pooled together at ``fraction``, apart from the listed ones; ``scope`` then splits
    every pool per matrix or keeps it whole. Without ``group_fractions`` this is ``scope_pools``.
    """
    names = list(names)
    if not group_fractions:
        return scope_pools(names, fraction, scope)
    by_group: dict[str | None, list[str]] = {}
    for name in names:
        group = weight_group(model_type, name)
        by_group.setdefault(group if group in group_fractions else None, []).append(name)
    absent = [g for g in group_fractions if g not in by_group]
    if absent:
        raise ValueError(f"group_fractions names {', '.join(absent)}, which has no weights among those pruned")
    return [
        pool
        for group, members in by_group.items()
        for pool in scope_pools(members, fraction if group is None else group_fractions[group], scope)
    ]


@torch.no_grad()
def prune_pools(weights: Scored, mask: Mask, pools: Iterable[Pool], score: Score = magnitude) -> Mask:
    """Prune each pool on its own: its ``fraction`` of its surviving entries, lowest ``score`` first.

    Every weight of ``mask`` must be in exactly one pool; the new mask (on CPU) lists the weights in ``mask``'s order.
    """
    pools = list(pools)
    pooled = [n for pool in pools for n in pool.names]
    if sorted(pooled) != sorted(mask):
        raise ValueError("the pools must hold every masked weight exactly once")
    new = {}
    for pool in pools:
        new.update(_prune_group({n: weights[n] for n in pool.names}, mask, pool.fraction, score))
    return Mask({n: new[n] for n in mask})


def prune(weights: Scored, mask: Mask, fraction: float, scope: str, score: Score = magnitude) -> Mask:
    """Prune ``fraction`` of the entries that ``mask`` keeps, lowest ``score`` first.

    Args:
        weights: the trained values of (at least) every masked weight, on any device.
        mask: the current mask; pruned entries stay pruned.
        fraction: share p of the *remaining* weights to remove, so after r rounds 1-(1-p)^r are pruned.
        scope: ``global`` ranks all masked weights together; ``layer`` prunes p of each matrix separately.
        score: weights -> non-negative float32 scores (``scores.SCORES``; ``scores.magnitude``: Frankle & Carbin's
            |w|).

    Returns:
        the new mask, on CPU.
    """
    return prune_pools(weights, mask, scope_pools(mask, fraction, scope), score)


def magnitude_prune(weights: Scored, mask: Mask, fraction: float, scope: str) -> Mask:
    """``prune`` by |weight|: one round of IMP's selection."""
    return prune(weights, mask, fraction, scope, magnitude)


def _prune_row_by_row(bits: torch.Tensor, dim: int, count: int) -> torch.Tensor:
    """One matrix's mask with ``count`` entries pruned: floor(count / rows) in every row, one more in each of the
    first count mod rows rows (output units in index order), the lowest score first within a row, ties to the
    lower input index. A row is an output unit's incoming weights: the entries along the input dimension ``dim``."""
    rows = grouped(bits, dim, bits.shape[dim])  # [output units, inputs]
    base, extra = divmod(count, rows.shape[0])
    per_row = torch.full((rows.shape[0], 1), base, dtype=torch.long, device=bits.device)
    per_row[:extra] += 1
    ranks = rows.argsort(dim=-1, stable=True).argsort(dim=-1)  # each entry's place in its row, 0 the lowest
    return ungrouped(ranks >= per_row, bits.shape, dim)


@torch.no_grad()
def prune_rows(weights: Scored, counts: Mapping[str, int], model_type: str, score: Score = magnitude) -> Mask:
    """Prune ``counts[name]`` entries of each weight, spread over its rows as evenly as possible (Wanda's comparison
    group: each output unit loses the same share of its inputs, whatever the scale of other matrices' scores).

    Args:
        weights: the values of (at least) every weight in ``counts``, on any device.
        counts: how many entries of each weight to prune, 0..its size; a weight at 0 stays whole (and is not scored).
        model_type: tells each weight's input dimension (``models.families.input_dim``), along which a row runs.
        score: weights -> non-negative float32 scores; a row's lowest go first, ties to the lower input index.

    Returns:
        the new mask on CPU, in ``counts``'s order: floor(c / rows) pruned in every row of a weight, one more in
        each of its first c mod rows rows, so each weight's count is exactly c.
    """
    new = Mask()
    for name, count in counts.items():
        weight = weights[name]
        if not 0 <= count <= weight.numel():
            raise ValueError(f"count {count} for {name!r} is not allowed; choose 0..{weight.numel()}")
        if count == 0:
            new[name] = torch.ones(weight.shape, dtype=torch.bool)
            continue
        bits = _score_bits(score, name, weight)
        if int(bits.min()) < 0:
            raise _negative(name)
        new[name] = _prune_row_by_row(bits, input_dim(model_type, name), count).cpu()
    return new
