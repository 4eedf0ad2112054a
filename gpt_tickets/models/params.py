"""A model's parameters to and from disk: the unit of rewinding, of round hand-over and of branch start weights."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RunError
from ..io import atomic_save_tensors, load_tensors


def parameters_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter (tied weights once), the unit of rewinding and round hand-over."""
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in model.named_parameters()}


def save_parameters(model: torch.nn.Module, path: str | Path) -> None:
    atomic_save_tensors(parameters_cpu(model), path)


@torch.no_grad()
def load_parameters(model: torch.nn.Module, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Copy saved parameters into ``model``; a file of another model (names or shapes) is refused in one line."""
    tensors = load_tensors(source) if isinstance(source, (str, Path)) else source
    params = dict(model.named_parameters())
    odd = sorted(set(tensors) ^ set(params)) or [n for n in params if tensors[n].shape != params[n].shape]
    if odd:
        what = source if isinstance(source, (str, Path)) else "the parameters"
        raise RunError(f"{what} do not fit the model: parameter {odd[0]!r} is missing, extra or of another shape")
    for name, value in tensors.items():
        params[name].copy_(value)
