"""Wanda's calibration pass: the L2 norm of every input feature of the pruned matrices over calibration tokens.

Forward hooks on the pruned weights' modules add each batch's per-feature sum of squares into one float64 vector per
matrix; no activation outlives its hook, so the pass needs the memory of dense inference plus those vectors. Pure
torch, no Accelerate: every process computes the same norms from the same blocks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def module_input_dim(module: nn.Module, name: str) -> int:
    """The weight dimension that indexes the module's input features: 1 for nn.Linear ([out, in]), 0 for
    transformers' Conv1D ([in, out]: GPT-2's c_attn, c_proj, c_fc).

    Read from the module, not from the family table (``models.families.input_dim``, which answers for a weight's
    name where no model is at hand: N:M groups, per-row comparisons): the hook sees what the module's forward
    multiplies, so the module's class decides, and a module whose input is not features is refused (an embedding
    reads token ids; the table gives it its hidden dimension, a tied LM head's input). The module is the ground
    truth: tests/test_input_dims.py checks the table against it on every prunable weight of every family.
    """
    if isinstance(module, nn.Linear):
        return 1
    if isinstance(module, Conv1D):
        return 0
    raise ValueError(f"{name} belongs to a {type(module).__name__}, whose input features Wanda cannot name")


def _add_squares(total: torch.Tensor):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        features = inputs[0].detach()
        total.add_(features.reshape(-1, features.shape[-1]).float().square().sum(0))  # float32 per batch, 64 over all

    return hook


@torch.no_grad()
def input_norms(
    model: nn.Module, names: Iterable[str], blocks: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """For each weight in ``names``: ||X_j||_2 of its module's input features over every token of ``blocks``
    ([n_blocks, block_size] token ids, fed ``batch_size`` blocks per forward pass in eval mode), shaped to broadcast
    against the weight (``scores.wanda``'s input). The hooks are removed and the model's mode restored however the
    pass ends.
    """
    device = next(model.parameters()).device
    totals: dict[str, tuple[torch.Tensor, int]] = {}
    handles = []
    training = model.training
    try:
        for name in names:
            module = model.get_submodule(name.rpartition(".")[0])
            dim = module_input_dim(module, name)
            total = torch.zeros(model.get_parameter(name).shape[dim], dtype=torch.float64, device=device)
            totals[name] = total, dim
            handles.append(module.register_forward_hook(_add_squares(total)))
        model.eval()
        for batch in blocks.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False, logits_to_keep=1)  # no full logits: only inputs matter
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return {name: total.sqrt().float().unsqueeze(1 - dim) for name, (total, dim) in totals.items()}
