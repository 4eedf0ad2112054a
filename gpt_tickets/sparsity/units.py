"""Unit masks: whole attention heads and MLP neurons, pruned by IMP like single weights. Pure torch, no Accelerate.

A unit is every entry the family table (``models.families.UnitLayout``) gives it: a GPT-2 head's query, key and
value columns of ``c_attn`` with their biases and its rows of ``attn.c_proj``; a neuron's ``c_fc`` column and bias
and ``mlp.c_proj`` row; a Llama-family KV group (or neuron) likewise. A unit mask is an ordinary ``Mask`` over those
weights and biases, so training, saving and tickets need nothing new, and a removed unit adds exactly nothing: its
output rows (columns) are zero whatever its inputs compute.

**Score.** A unit's contribution is bounded by the product of the norms of the weights on its path. A GPT-2 neuron
adds ``c_proj_i * gelu(c_fc_i . x + b_i)`` and |gelu(z)| <= |z|, so its output norm is at most
||c_proj_i|| ||[c_fc_i, b_i]|| ||[x, 1]||; a Llama neuron's ``down_i silu(gate_i . x) (up_i . x)`` at most
||down_i|| ||gate_i|| ||up_i|| ||x||^2; a head's output is its output rows applied to a convex combination of its
values, at most ||O_h|| ||[V_h, b_v]|| max_t ||[x_t, 1]||, whatever its queries and keys (they only choose where it
looks). So a unit scores the product of the L2 (Frobenius) norms of its ``input`` and ``output`` parts, biases
included, queries and keys left out. Why not the L2 norm of all its weights together: a unit with a large input side
and a near-zero output side adds almost nothing yet would score high, and GPT-2 initialises ``c_proj``
1/sqrt(2 x layers) smaller than ``c_fc``, so a sum is mostly the input side; the product also ignores scale moved
between the two sides (an exact symmetry for ReLU-like activations, which training moves freely). Why not L1: the
Frobenius norm bounds what a matrix does to a vector (||W x|| <= ||W||_F ||x||), L1 of the entries only loosely, and
it grows with many small entries. Why not activations (Wanda-style, or Michel et al. 2019's head importance): those
need a calibration pass over data each round, where IMP prunes from the trained weights alone, as magnitude IMP
does, and every process derives the same mask from the same weights.

**Selection.** Heads compete only with heads and neurons only with neurons. Each round removes round(p x surviving)
of a pool, lowest score first, among the surviving units only (masks nest): ``global`` pools a kind over all layers,
``uniform`` pools each layer on its own, so every layer loses the same count (they start equal). Ties go in
(layer, unit) order, so every process decides alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from transformers import PretrainedConfig

from ..config.schema import ALLOCATIONS, PruneConfig, check
from ..models.families import PrunableWeight, UnitLayout, UnitPart, classify, prunable_weights, unit_layouts
from .masks import Mask
from .report import weight_group


def _fractions(fraction: float, group_fractions: Mapping[str, float] | None) -> dict[str, float]:
    """p per group: the group's own in ``group_fractions``, else ``fraction`` (kinds never share a pool)."""
    return {group: (group_fractions or {}).get(group, fraction) for group in ("attention", "mlp")}


def layouts_of(config: PretrainedConfig, groups: Iterable[str]) -> tuple[UnitLayout, ...]:
    """The unit kinds of ``groups`` (attention: heads, mlp: neurons) in a model of ``config``."""
    groups = set(groups)
    return tuple(layout for layout in unit_layouts(config) if layout.group in groups)


def _unit_entries(layout: UnitLayout, names: Iterable[str]) -> Iterable[tuple[int, UnitPart, str, int]]:
    """(layer, part, parameter name, axis) of every weight and existing bias holding the layout's unit entries."""
    names = set(names)
    for layer in range(layout.layers):
        for part in layout.parts:
            yield layer, part, layout.weight(layer, part), part.axis
            if part.role != "output" and layout.bias(layer, part) in names:
                yield layer, part, layout.bias(layer, part), 0


def unit_parameters(model: torch.nn.Module, groups: list[str]) -> list[PrunableWeight]:
    """What a unit mask covers: the weights of ``groups`` and the biases holding unit entries (a removed unit's
    bias is masked too), in parameter order. ConfigError for a family without a unit layout."""
    model_type = model.config.model_type
    present = dict(model.named_parameters())
    names = {w.name for w in prunable_weights(model, groups)}
    names |= {name for layout in layouts_of(model.config, groups) for *_, name, _ in _unit_entries(layout, present)}
    return [classify(model_type, name) for name in present if name in names]


def _per_unit(tensor: torch.Tensor, layout: UnitLayout, part: UnitPart, axis: int) -> torch.Tensor:
    """The part's entries of ``tensor`` as [units, entries of one unit]."""
    block = tensor.narrow(axis, part.offset, layout.count * part.width).movedim(axis, 0)
    return block.reshape(layout.count, -1)


def surviving_units(mask: Mask, layout: UnitLayout, unit: str | None = None) -> torch.Tensor:
    """[layers, units] bool: which units of ``layout`` the mask keeps. A weight absent from the mask keeps every
    entry; a bias counts only where masked (a removed unit's output is zero whatever its bias adds before it). A
    ValueError when a unit is partly masked (the mask is not a unit mask), naming it ``unit`` (default: the kind)."""
    whole = torch.ones(layout.layers, layout.count, dtype=torch.bool)
    some = torch.zeros_like(whole)
    for layer, part, name, axis in _unit_entries(layout, mask):
        if name not in mask:
            some[layer] = True
            continue
        entries = _per_unit(mask[name], layout, part, axis)
        whole[layer] &= entries.all(1)
        some[layer] |= entries.any(1)
    if not torch.equal(whole, some):
        layer, index = (whole != some).nonzero()[0].tolist()
        name = unit or layout.kind[:-1]
        raise ValueError(f"{name} {index} of layer {layer} is partly masked; the mask is not a unit mask")
    return whole


@torch.no_grad()
def unit_scores(weights: Mapping[str, torch.Tensor], layout: UnitLayout) -> torch.Tensor:
    """[layers, units] float64 on CPU: the product of the L2 norms of each unit's input and output parts (weights and
    biases; queries and keys left out), the bound on its contribution the module docstring derives."""
    squares = {}
    for layer, part, name, axis in _unit_entries(layout, weights):
        if part.role != "pattern":
            entries = _per_unit(weights[name].detach(), layout, part, axis)
            norm = torch.linalg.vector_norm(entries, dim=1, dtype=torch.float64).square().cpu()
            squares[layer, part] = squares.get((layer, part), 0) + norm
    scores = torch.ones(layout.layers, layout.count, dtype=torch.float64)
    for (layer, _), square in squares.items():
        scores[layer] *= square.sqrt()
    return scores


def _lowest(scores: torch.Tensor, alive: torch.Tensor, fraction: float) -> torch.Tensor:
    """Which of the alive units go: round(fraction x alive) with the lowest scores, ties in index order."""
    candidates = alive.nonzero().squeeze(1)
    count = round(fraction * len(candidates))
    order = torch.sort(scores[candidates], stable=True).indices[:count]
    removed = torch.zeros_like(alive)
    removed[candidates[order]] = True
    return removed


def units_to_remove(scores: torch.Tensor, alive: torch.Tensor, fraction: float, allocation: str) -> torch.Tensor:
    """[layers, units] bool: the units one round removes; ``global`` ranks all layers together, ``uniform`` removes
    round(fraction x that layer's survivors) from every layer."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation={allocation!r} is not allowed; choose one of {', '.join(ALLOCATIONS)}")
    if allocation == "uniform":
        return torch.stack([_lowest(s, a, fraction) for s, a in zip(scores, alive, strict=True)])
    return _lowest(scores.flatten(), alive.flatten(), fraction).view_as(alive)


def _apply_removals(mask: Mask, layout: UnitLayout, removed: torch.Tensor) -> None:
    """Zero every entry of the ``removed`` units in ``mask`` (in place); a weight absent from ``mask`` is left out."""
    for layer, part, name, axis in _unit_entries(layout, mask):
        if name not in mask:
            continue
        shape = [1] * mask[name].dim()
        shape[axis] = -1
        block = mask[name].narrow(axis, part.offset, layout.count * part.width)
        block &= (~removed[layer]).repeat_interleave(part.width).view(shape)


def kept_positions(
    like: Mapping[str, torch.Tensor], removed: Mapping[UnitLayout, torch.Tensor]
) -> dict[str, tuple[int, torch.Tensor]]:
    """(unit axis, indices along it that stay) of each of ``like``'s parameters holding entries of the layouts in
    ``removed`` ([layers, units] bool per layout): what ``index_select`` keeps when those units leave the model. A
    parameter holding several parts (GPT-2's ``c_attn``: q, k, v) loses the entries of all of them."""
    axes = {name: axis for layout in removed for *_, name, axis in _unit_entries(layout, like) if name in like}
    lines = Mask()  # each parameter as one line along its unit axis (size 1 elsewhere): all _apply_removals needs
    for name, axis in axes.items():
        shape = [1] * like[name].dim()
        shape[axis] = like[name].shape[axis]
        lines[name] = torch.ones(shape, dtype=torch.bool)
    for layout, units in removed.items():
        _apply_removals(lines, layout, units)
    return {name: (axes[name], lines[name].flatten().nonzero().flatten()) for name in lines}


def mask_without_units(like: Mapping[str, torch.Tensor], removed: Mapping[UnitLayout, torch.Tensor]) -> Mask:
    """A mask over ``like``'s parameters keeping every entry except those of the ``removed`` units ([layers, units]
    bool per layout): the unit mask that a set of units gives, to build one or to compare a mask against."""
    mask = Mask({name: torch.ones_like(t, dtype=torch.bool, device="cpu") for name, t in like.items()})
    for layout, units in removed.items():
        _apply_removals(mask, layout, units)
    return mask


@torch.no_grad()
def prune_units(
    weights: Mapping[str, torch.Tensor],
    mask: Mask,
    model: torch.nn.Module,
    fraction: float,
    allocation: str = "global",
    group_fractions: Mapping[str, float] | None = None,
) -> Mask:
    """One round of IMP over units: remove p of the surviving heads and p of the surviving neurons, lowest
    ``unit_scores`` first.

    Args:
        weights: the trained values of (at least) every masked parameter, on any device.
        mask: the current unit mask, exactly ``unit_parameters(model, groups)`` of its groups; removed units stay
            removed.
        model: the model (its config gives the sizes; its parameters which biases exist).
        fraction: p of the surviving units of each kind removed per round, so after r rounds 1-(1-p)^r up to
            rounding.
        allocation: ``global`` (a kind ranked over all layers) or ``uniform`` (round(p x survivors) of every layer).
        group_fractions: {attention: p_heads, mlp: p_neurons} overrides ``fraction`` per kind.

    Returns:
        the new mask, on CPU, in ``mask``'s order.
    """
    groups = [g for g in ("attention", "mlp") if any(weight_group(model.config.model_type, n) == g for n in mask)]
    expected = {w.name for w in unit_parameters(model, groups)}
    if set(mask) != expected:
        raise ValueError(f"the mask must hold exactly the unit parameters of {', '.join(groups)} (unit_parameters)")
    fractions = _fractions(fraction, group_fractions)
    new = Mask({name: m.to("cpu", copy=True) for name, m in mask.items()})
    for layout in layouts_of(model.config, groups):
        alive = surviving_units(mask, layout)
        removed = units_to_remove(unit_scores(weights, layout), alive, fractions[layout.group], allocation)
        _apply_removals(new, layout, removed)
    return new


def check_unit_schedule(config: PretrainedConfig, prune: PruneConfig) -> None:
    """Before anything is written: every round of ``prune`` removes at least one unit of each kind pruned, and never
    the last (of a layer, under ``uniform``; of the model, under ``global``). ConfigError, one line, otherwise, and
    for a family without a unit layout."""
    fractions = _fractions(prune.fraction, prune.group_fractions)
    allocation = prune.unit_allocation
    for layout in layouts_of(config, prune.groups):
        uniform = allocation == "uniform"
        left = layout.count if uniform else layout.count * layout.layers
        where = "per layer" if uniform else "in all layers"
        sizes = f"{layout.count} {layout.kind} per layer x {layout.layers} layers"
        fraction = fractions[layout.group]
        for r in range(1, prune.rounds + 1):
            removed = round(fraction * left)
            check(
                removed > 0,
                f"prune.allocation={allocation}: round {r} of prune.rounds={prune.rounds} removes round({fraction} x "
                f"{left}) = 0 of the {left} {layout.kind} left {where} ({sizes}); choose fewer rounds or a larger "
                "fraction",
            )
            check(
                removed < left,
                f"prune.allocation={allocation}: round {r} of prune.rounds={prune.rounds} removes round({fraction} x "
                f"{left}) = {removed}, all the {layout.kind} left {where} ({sizes}); choose fewer rounds or a smaller "
                "fraction",
            )
            left -= removed


def random_units_like(mask: Mask, config: PretrainedConfig, seed: int) -> Mask:
    """A random unit mask with ``mask``'s count of surviving heads and neurons in every layer: random_prune's control
    for a unit ticket, so it differs from the ticket only in which units survive, not in how many per layer.

    Every unit kind ``mask`` covers, layer by layer in ``unit_layouts`` order, keeps that many units drawn uniformly
    at random (seeded); a removed unit loses every entry, its biases too, as in ``prune_units``. A ValueError when
    ``mask`` is not a unit mask.
    """
    generator = torch.Generator().manual_seed(seed)
    removed: dict[UnitLayout, torch.Tensor] = {}
    for layout in layouts_of(config, {weight_group(config.model_type, name) for name in mask}):
        removed[layout] = torch.zeros(layout.layers, layout.count, dtype=torch.bool)
        for layer, count in enumerate(surviving_units(mask, layout).sum(1).tolist()):
            removed[layout][layer, torch.randperm(layout.count, generator=generator)[count:]] = True
    return mask_without_units(mask, removed)
