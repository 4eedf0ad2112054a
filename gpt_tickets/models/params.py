"""A model's parameters to and from disk: the unit of rewinding, of round hand-over and of branch start weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..io import atomic_save_tensors


def parameters_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter (tied weights once), the unit of rewinding and round hand-over."""
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in model.named_parameters()}


def save_parameters(model: torch.nn.Module, path: str | Path) -> None:
    atomic_save_tensors(parameters_cpu(model), path)


@torch.no_grad()
def load_parameters(model: torch.nn.Module, source: str | Path | dict[str, torch.Tensor]) -> None:
    tensors = load_file(str(source)) if isinstance(source, (str, Path)) else source
    names = {name for name, _ in model.named_parameters()}
    if set(tensors) != names:
        raise ValueError(f"parameter file does not match the model: differs in {sorted(set(tensors) ^ names)[:3]}")
    for name, value in tensors.items():
        model.get_parameter(name).copy_(value)
