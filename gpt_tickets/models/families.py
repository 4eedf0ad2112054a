"""Where the prunable weights of each decoder family live: the one place that knows module names.

A new family is one table entry: a regex per group over ``named_parameters()`` names, with the transformer
layer index captured as ``(?P<layer>...)`` so sparsity can be reported per layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError

_LLAMA_LIKE = {
    "attention": r"model\.layers\.(?P<layer>\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight",
    "mlp": r"model\.layers\.(?P<layer>\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight",
    "embeddings": r"model\.embed_tokens\.weight",
}

PRUNABLE_PATTERNS: dict[str, dict[str, str]] = {
    # GPT-2's c_attn / c_proj / c_fc are Conv1D (weight [in, out]); unstructured masks don't care.
    "gpt2": {
        "attention": r"transformer\.h\.(?P<layer>\d+)\.attn\.(c_attn|c_proj)\.weight",
        "mlp": r"transformer\.h\.(?P<layer>\d+)\.mlp\.(c_fc|c_proj)\.weight",
        "embeddings": r"transformer\.(wte|wpe)\.weight",
    },
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}


@dataclass(frozen=True)
class PrunableWeight:
    name: str
    group: str
    layer: int | None


def classify(model_type: str, name: str) -> PrunableWeight | None:
    """The group and layer of a parameter name, or None when the table does not list it as prunable."""
    for group, pattern in _patterns(model_type).items():
        match = re.fullmatch(pattern, name)
        if match:
            layer = match.groupdict().get("layer")
            return PrunableWeight(name, group, int(layer) if layer is not None else None)
    return None


def prunable_weights(model: torch.nn.Module, groups: list[str]) -> list[PrunableWeight]:
    """The weights of ``groups`` in ``model``, in parameter order (tied weights counted once)."""
    model_type = model.config.model_type
    found = [w for name, _ in model.named_parameters() if (w := classify(model_type, name)) and w.group in groups]
    missing = [g for g in groups if not any(w.group == g for w in found)]
    if missing:
        raise ConfigError(
            f"no {', '.join(missing)} weights found in this {model_type} model; the name table "
            "in gpt_tickets/models/families.py does not match it"
        )
    return found


def _patterns(model_type: str) -> dict[str, str]:
    if model_type not in PRUNABLE_PATTERNS:
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(PRUNABLE_PATTERNS))}"
        )
    return PRUNABLE_PATTERNS[model_type]
