"""N:M masks: at most N of every M consecutive entries along a weight's input dimension survive (2:4 is the layout
sparse tensor cores run), found by IMP like unstructured masks, each round a step closer to the pattern.

A group is M consecutive inputs of one output unit: for GPT-2's Conv1D (weight ``[in, out]``) M consecutive entries
of a column, for an ``nn.Linear`` (``[out, in]``) of a row (``models.families.input_dim`` says which).

The schedule: after round r of R every weight keeps ``T_r = round(G (M - r (M - N) / R))`` of its G x M entries,
which falls linearly from dense (round 0) to exactly N per group (round R), each group keeping floor or ceil of
``T_r / G`` (``group_cap``). Groups keep their largest |w| among the entries the previous round kept, so masks
nest; the groups that keep one more are those whose next entry is largest. A rule with a whole number per round
(``M - ceil(r (M - N) / R)``, the same in every group) only has M - N + 1 levels: 2:4 over 5 rounds would keep
3, 3, 2, 2, 2 per group, retraining the last two rounds on an unchanged mask, where this one removes a tenth of
every weight in each round. For R = 2 at 2:4 the two rules agree: 3:4, then 2:4.

Ranking within one matrix by |w| is ranking by any per-matrix rescaling of it (``normalized_magnitude``), so the
pattern needs no choice of score. Ties keep the lower index first, so every process derives the same mask.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError
from ..models.families import input_dim
from .masks import Mask


def kept_entries(groups: int, n: int, m: int, round: int, rounds: int) -> int:
    """T_r: how many of a weight's ``groups`` x ``m`` entries survive ``round`` of ``rounds`` (halves round up)."""
    if not 0 <= round <= rounds:
        raise ValueError(f"round={round} must be in 0..rounds={rounds}")
    twice = 2 * groups * (m * rounds - round * (m - n))  # 2R x the exact T_r: whole numbers throughout
    return (twice + rounds) // (2 * rounds)


def group_cap(n: int, m: int, round: int, rounds: int) -> int:
    """The most entries any group keeps after ``round`` of ``rounds``: ceil(M - r (M - N) / R); N after round R."""
    return m - round * (m - n) // rounds


def grouped(tensor: torch.Tensor, dim: int, m: int) -> torch.Tensor:
    """``tensor`` as [groups, m]: ``dim`` moved last and cut in runs of m, so a unit's groups follow each other."""
    return tensor.movedim(dim, -1).reshape(-1, m)


def ungrouped(groups: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """Inverse of ``grouped``: back to ``shape`` (contiguous)."""
    moved = [*shape[:dim], *shape[dim + 1 :], shape[dim]]
    return groups.reshape(moved).movedim(-1, dim).contiguous()


def _caps(sorted_scores: torch.Tensor, previous_counts: torch.Tensor, target: int) -> torch.Tensor:
    """Per group, floor(target / G) or one more, the extra ones going to the groups whose next entry is largest.

    A group the previous round left with only floor entries cannot take one more (masks nest), so it competes
    below every group that can; among equal entries the lower group goes first.
    """
    groups = sorted_scores.shape[0]
    base, extra = divmod(target, groups)
    caps = torch.full((groups,), base, dtype=torch.long, device=sorted_scores.device)
    if extra:
        eligible = previous_counts > base
        nxt = sorted_scores[:, base].masked_fill(~eligible, float("-inf"))
        caps[torch.sort(nxt, descending=True, stable=True).indices[:extra]] += 1
    return caps


@torch.no_grad()
def _prune_weight(weight: torch.Tensor, keep: torch.Tensor, dim: int, m: int, target: int) -> torch.Tensor:
    """One weight's new mask (on CPU): ``target`` entries in all, floor or ceil of its mean per group."""
    kept = grouped(keep.to(weight.device), dim, m)
    scores = grouped(weight.detach().float().abs(), dim, m).masked_fill(~kept, float("-inf"))
    # Each entry's place in its group, 0 the largest; equal scores put the lower index first (a stable sort).
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    ranks = order.argsort(dim=-1)
    counts = kept.sum(-1)
    allowed = torch.minimum(counts, _caps(sorted_scores, counts, target))
    return ungrouped(ranks < allowed[:, None], keep.shape, dim).cpu()


def first_indivisible(weights: Mapping[str, torch.Tensor], model_type: str, m: int) -> tuple[str, int] | None:
    """(name, input size) of the first of ``weights`` (or masks) whose input size M does not divide; None when M
    divides all."""
    for name, tensor in weights.items():
        size = tensor.shape[input_dim(model_type, name)]
        if size % m:
            return name, size
    return None


def _indivisible_line(weights: Mapping[str, torch.Tensor], model_type: str, m: int) -> str | None:
    found = first_indivisible(weights, model_type, m)
    return f"weight {found[0]!r} has {found[1]} inputs, which M={m} does not divide" if found else None


def prune_nm(
    trained: Mapping[str, torch.Tensor],
    previous: Mask,
    model_type: str,
    n: int,
    m: int,
    *,
    round: int,
    rounds: int,
) -> Mask:
    """Round ``round`` of IMP toward N:M: every weight keeps ``kept_entries`` of its entries, floor or ceil of the
    mean in every group of M consecutive inputs, by largest trained |w| among the entries ``previous`` kept.

    Args:
        trained: the trained values of (at least) every weight in ``previous``, on any device.
        previous: round ``round`` - 1's mask; pruned entries stay pruned.
        model_type: tells each weight's input dimension (``models.families.input_dim``).
        n, m: the pattern after the last round, 0 < n < m; m divides every weight's input size.
        round, rounds: 1..R, and R (round R keeps exactly n of every m).

    Returns:
        the new mask, on CPU, in ``previous``'s order.
    """
    if not 0 < n < m:
        raise ValueError(f"N:M={n}:{m} needs 0 < N < M")
    indivisible = _indivisible_line(previous, model_type, m)
    if indivisible:
        raise ValueError(indivisible)
    new = Mask()
    for name, keep in previous.items():
        target = kept_entries(keep.numel() // m, n, m, round, rounds)
        new[name] = _prune_weight(trained[name], keep, input_dim(model_type, name), m, target)
    return new


def first_nm_violation(mask: Mask, model_type: str, n: int, m: int) -> str | None:
    """Where ``mask`` first breaks N:M (a group keeping more than n of m, or inputs m does not cut into groups), as
    one line naming the weight and the group; None when every weight keeps the pattern."""
    try:
        dims = {name: input_dim(model_type, name) for name in mask}
    except (ValueError, ConfigError) as err:  # a mask of a bias, or of a family without a name table
        return str(err)
    indivisible = _indivisible_line(mask, model_type, m)
    if indivisible:
        return indivisible
    for name, keep in mask.items():
        dim = dims[name]
        counts = grouped(keep, dim, m).sum(-1)
        over = (counts > n).nonzero()
        if len(over):
            group = int(over[0])
            unit, first = divmod(group, keep.shape[dim] // m)
            return (
                f"weight {name!r} keeps {int(counts[group])} of the {m} inputs {first * m}..{first * m + m - 1} of "
                f"output {unit}, more than N={n}"
            )
    return None


def random_groups_like(mask: Mask, model_type: str, m: int, seed: int) -> Mask:
    """A random mask in which every group of ``m`` consecutive inputs keeps as many entries as ``mask``'s group, at
    positions drawn uniformly at random within the group (seeded): random_prune's control for an N:M ticket, so it
    keeps the pattern and every group's count and differs only in which entries survive. A ValueError when ``m``
    does not divide a weight's input size."""
    indivisible = _indivisible_line(mask, model_type, m)
    if indivisible:
        raise ValueError(indivisible)
    generator = torch.Generator().manual_seed(seed)
    randomized = Mask()
    for name, keep in mask.items():
        dim = input_dim(model_type, name)
        groups = grouped(keep.cpu(), dim, m)
        # A uniformly random order of each group's positions; its first ``count`` positions survive.
        ranks = torch.rand(groups.shape, generator=generator).argsort(dim=-1).argsort(dim=-1)
        randomized[name] = ungrouped(ranks < groups.sum(-1, keepdim=True), keep.shape, dim)
    return randomized
