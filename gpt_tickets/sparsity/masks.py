"""Masks: which entries of each prunable weight survive, kept *beside* a plain transformers model.

The masks never enter the model's ``state_dict``, so its keys stay those of the plain model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch

from ..io import atomic_save_tensors, load_tensors
from ..models.families import PrunableWeight


class Mask(dict):
    """name -> bool tensor; refuses anything that is not 0/1 (after open_lth's Mask), however it is filled."""

    def __init__(self, other: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] = (), **named) -> None:
        super().__init__()
        self.update(other, **named)

    def update(self, other=(), **named) -> None:  # dict.update and dict(...) skip __setitem__: route them through it
        for name, value in dict(other, **named).items():
            self[name] = value

    def setdefault(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if name not in self:
            self[name] = value
        return self[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        if value.dtype != torch.bool:
            if not bool(((value == 0) | (value == 1)).all()):
                raise ValueError(f"mask {name!r} holds values other than 0 and 1")
            value = value.bool()
        super().__setitem__(name, value)

    @classmethod
    def ones_like(cls, model: torch.nn.Module, weights: Iterable[PrunableWeight]) -> Mask:
        mask = cls()
        for w in weights:
            mask[w.name] = torch.ones_like(model.get_parameter(w.name), dtype=torch.bool, device="cpu")
        return mask

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        """A saved mask, checked against its digest when it carries one (every mask a run saves does)."""
        return cls(load_tensors(path, required=False))

    def save(self, path: str | Path) -> None:
        atomic_save_tensors({n: m.contiguous() for n, m in self.items()}, path)

    def num_remaining(self) -> int:
        return sum(int(m.sum()) for m in self.values())

    def numel(self) -> int:
        return sum(m.numel() for m in self.values())


def mask_checksum(mask: Mask) -> str:
    """A short digest of names and bits: equal masks on every rank, and the masks file that belongs to a ticket."""
    digest = hashlib.sha256()
    for name in sorted(mask):
        digest.update(name.encode())
        digest.update(mask[name].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def first_stray_weight(model: torch.nn.Module, mask: Mask) -> tuple[str, int] | None:
    """(name, count) of the first weight that is non-zero where its mask is 0; None when every one is clean."""
    for name, m in mask.items():
        weight = model.get_parameter(name).detach()
        stray = int(weight[~m.to(weight.device)].count_nonzero())
        if stray:
            return name, stray
    return None
