"""Sparsity of a mask overall, per group (attention / MLP / ...), per layer, kind and weight: measured in one place.

Results (rounds, branches, ``ticket_config.json``) take their sparsity fields from a ``SparsityReport``, never by
counting again, so every file and table states the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..models.families import PRUNABLE_PATTERNS, classify, module_weight
from .masks import Mask


@dataclass(frozen=True)
class SparsityReport:
    """Shares of pruned weights; ``groups`` has one entry per group present (attention, mlp, embeddings, other).

    ``per_kind`` pools each kind of weight over the layers (GPT-2: ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
    ``mlp.c_proj``), which shows what a score strips first. ``per_module`` pools each module's weight and masked bias
    (unit masks mask the biases of removed heads and neurons), keyed by the weight's name; ``per_weight`` is every
    masked parameter on its own. A masked bias counts in its module's kind, so a unit mask reports the same kinds as
    an unstructured one; overall, group and layer shares count every masked entry, biases included.
    """

    overall: float
    groups: dict[str, float]
    per_layer: dict[str, dict[str, float]]
    per_kind: dict[str, float]
    per_module: dict[str, float]
    per_weight: dict[str, float]

    def group(self, name: str) -> float:
        return self.groups.get(name, 0.0)

    def summary(self) -> dict[str, float]:
        """Overall and per group, as ``ticket_config.json`` states it."""
        return {
            "overall": self.overall,
            **{g: self.groups[g] for g in ("attention", "mlp", "embeddings") if g in self.groups},
        }


def weight_group(model_type: str, name: str) -> str:
    """The group of a masked weight (attention, mlp, embeddings); ``other`` where the family table does not list it."""
    info = classify(model_type, name)
    return info.group if info else "other"


def weight_kind(model_type: str, name: str) -> str:
    """A weight's name without its layer prefix and ``.weight``: ``transformer.h.3.mlp.c_fc.weight`` -> ``mlp.c_fc``.

    Weights outside the layers (embeddings) keep their full name, less ``.weight``; a masked bias (unit masks) is of
    its module's kind: ``transformer.h.3.mlp.c_fc.bias`` -> ``mlp.c_fc``.
    """
    stem = module_weight(name).removesuffix(".weight")
    info = classify(model_type, name)
    if info is None or info.layer is None:
        return stem
    match = re.fullmatch(PRUNABLE_PATTERNS[model_type][info.group], module_weight(name))
    return stem[match.end("layer") + 1 :]


def sparsity_report(mask: Mask, model_type: str) -> SparsityReport:
    totals: dict[str, list[int]] = {}
    kinds: dict[str, list[int]] = {}
    modules: dict[str, list[int]] = {}
    per_layer: dict[str, dict[str, list[int]]] = {}
    per_weight: dict[str, float] = {}
    for name, m in mask.items():
        info, group = classify(model_type, name), weight_group(model_type, name)
        pruned, size = m.numel() - int(m.sum()), m.numel()
        per_weight[name] = pruned / size
        kind, module = weight_kind(model_type, name), module_weight(name)
        for counts, key in ((totals, "overall"), (totals, group), (kinds, kind), (modules, module)):
            _add(counts, key, pruned, size)
        if info and info.layer is not None:
            _add(per_layer.setdefault(str(info.layer), {}), group, pruned, size)
    shares = _shares(totals)
    return SparsityReport(
        overall=shares.pop("overall", 0.0),
        groups=shares,
        per_layer={layer: _shares(groups) for layer, groups in per_layer.items()},
        per_kind=_shares(kinds),
        per_module=_shares(modules),
        per_weight=per_weight,
    )


def _add(counts: dict[str, list[int]], key: str, pruned: int, size: int) -> None:
    acc = counts.setdefault(key, [0, 0])
    acc[0], acc[1] = acc[0] + pruned, acc[1] + size


def _shares(counts: dict[str, list[int]]) -> dict[str, float]:
    return {key: pruned / size for key, (pruned, size) in counts.items()}
