"""Sparsity of a mask overall, per group (attention / MLP / ...), per layer and per weight: measured in one place.

Results (rounds, branches, ``ticket_config.json``) take their sparsity fields from a ``SparsityReport``, never by
counting again, so every file and table states the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.families import classify
from .masks import Mask


@dataclass(frozen=True)
class SparsityReport:
    """Shares of pruned weights; ``groups`` has one entry per group present (attention, mlp, embeddings, other)."""

    overall: float
    groups: dict[str, float]
    per_layer: dict[str, dict[str, float]]
    per_weight: dict[str, float]

    def group(self, name: str) -> float:
        return self.groups.get(name, 0.0)

    def summary(self) -> dict[str, float]:
        """Overall and per group, as ``ticket_config.json`` states it."""
        return {
            "overall": self.overall,
            **{g: self.groups[g] for g in ("attention", "mlp", "embeddings") if g in self.groups},
        }


def sparsity_report(mask: Mask, model_type: str) -> SparsityReport:
    totals: dict[str, list[int]] = {}
    per_layer: dict[str, dict[str, list[int]]] = {}
    per_weight: dict[str, float] = {}
    for name, m in mask.items():
        info = classify(model_type, name)
        group = info.group if info else "other"
        pruned, size = m.numel() - int(m.sum()), m.numel()
        per_weight[name] = pruned / size
        for key in ("overall", group):
            acc = totals.setdefault(key, [0, 0])
            acc[0], acc[1] = acc[0] + pruned, acc[1] + size
        if info and info.layer is not None:
            acc = per_layer.setdefault(str(info.layer), {}).setdefault(group, [0, 0])
            acc[0], acc[1] = acc[0] + pruned, acc[1] + size
    shares = {key: p / n for key, (p, n) in totals.items()}
    return SparsityReport(
        overall=shares.pop("overall", 0.0),
        groups=shares,
        per_layer={layer: {g: p / n for g, (p, n) in groups.items()} for layer, groups in per_layer.items()},
        per_weight=per_weight,
    )
