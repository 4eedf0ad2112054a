"""Unstructured weight masks kept *beside* a plain transformers model.

The masks never enter the model's ``state_dict`` (its keys stay those of the plain model), and masked weights are
exactly zero at every moment the outside world can observe: after every optimizer step and at every save.
Gradients of masked weights are zeroed before the step, so Adam's moments stay zero there too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file

from .architectures import PrunableWeight, classify
from .io import atomic_save_tensors


class Mask(dict):
    """name -> bool tensor; refuses anything that is not 0/1 (after open_lth's Mask)."""

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
        mask = cls()
        for name, value in load_file(str(path)).items():
            mask[name] = value
        return mask

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


class MaskedParameters:
    """The model's prunable parameters paired with their masks, on the parameters' device.

    Built once per round so the two calls inside the training step are a tight loop of in-place multiplies. The masks
    stay bool (1 byte per weight; on a CPU run they share the Mask's memory), not a float copy of every weight.
    """

    def __init__(self, model: torch.nn.Module, mask: Mask) -> None:
        self.pairs = []
        for name, m in mask.items():
            param = model.get_parameter(name)
            if param.shape != m.shape:
                raise ValueError(f"mask {name!r} has shape {tuple(m.shape)}, the weight {tuple(param.shape)}")
            self.pairs.append((param, m.to(device=param.device)))

    def optimized_by(self, optimizer: torch.optim.Optimizer) -> bool:
        ids = {id(param) for param, _ in self.pairs}
        return any(id(p) in ids for group in optimizer.param_groups for p in group["params"])

    def follow_devices(self) -> None:
        """Move masks to where their parameters now are (a loaded ticket may be moved with ``model.to("cuda")``)."""
        self.pairs = [(param, m if m.device == param.device else m.to(param.device)) for param, m in self.pairs]

    @torch.no_grad()
    def zero_weights(self) -> None:
        for param, m in self.pairs:
            param.mul_(m)

    @torch.no_grad()
    def zero_grads(self) -> None:
        for param, m in self.pairs:
            if param.grad is not None:
                param.grad.mul_(m)


@torch.no_grad()
def first_stray_weight(model: torch.nn.Module, mask: Mask) -> tuple[str, int] | None:
    """(name, count) of the first weight that is non-zero where its mask is 0; None when every one is clean."""
    for name, m in mask.items():
        weight = model.get_parameter(name).detach()
        stray = int(weight[~m.to(weight.device)].count_nonzero())
        if stray:
            return name, stray
    return None


def sparsity_report(mask: Mask, model_type: str) -> dict:
    """Share of pruned weights overall, per group (attention / MLP / ...), per layer and per weight."""
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
    return {
        **{key: p / n for key, (p, n) in totals.items()},
        "per_layer": {layer: {g: p / n for g, (p, n) in groups.items()} for layer, groups in per_layer.items()},
        "per_weight": per_weight,
    }
