"""Where the prunable weights of each decoder family live: the one place that knows module names.

A new family is one table entry: a regex per group over ``named_parameters()`` names, with the transformer
layer index captured as ``(?P<layer>...)`` so sparsity can be reported per layer; and, for structured masks, which
dimension of each weight is its input (``input_dim``) and which slices make up a head or a neuron (``UNIT_LAYOUTS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

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
    """The group and layer of a masked parameter: a prunable weight, or the bias of a prunable weight's module (unit
    masks mask the biases of removed heads and neurons); None when the table lists neither."""
    found = _classify_weight(model_type, module_weight(name))
    return PrunableWeight(name, found.group, found.layer) if found else None


def module_weight(name: str) -> str:
    """The weight of the module a parameter belongs to: itself for a weight, ``x.weight`` for ``x.bias``."""
    return name.removesuffix(".bias") + ".weight" if name.endswith(".bias") else name


def _classify_weight(model_type: str, name: str) -> PrunableWeight | None:
    for group, pattern in _patterns(model_type).items():
        match = re.fullmatch(pattern, name)
        if match:
            layer = match.groupdict().get("layer")
            return PrunableWeight(name, group, int(layer) if layer is not None else None)
    return None


def prunable_weights(model: torch.nn.Module, groups: list[str]) -> list[PrunableWeight]:
    """The weights of ``groups`` in ``model``, in parameter order (tied weights counted once)."""
    model_type = model.config.model_type
    found = [
        w for name, _ in model.named_parameters() if (w := _classify_weight(model_type, name)) and w.group in groups
    ]
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


def input_dim(model_type: str, name: str) -> int:
    """The dimension of a prunable weight that its inputs run along: 0 for GPT-2's Conv1D weights ([in, out]), 1 for
    nn.Linear ([out, in], the Llama family) and for embeddings ([vocab, hidden]: hidden is a tied LM head's input)."""
    weight = _classify_weight(model_type, name)
    if weight is None:
        raise ValueError(f"{name!r} is not a prunable weight of a {model_type} model")
    return 0 if model_type == "gpt2" and weight.group != "embeddings" else 1


# ------------------------------------------------------------------------------------ structured masks

@dataclass(frozen=True)
class UnitPart:
    """The entries of one weight that belong to unit u of a layer: ``width`` consecutive indices from
    ``offset + u * width`` along ``axis``.

    ``role``: ``pattern`` (a head's queries and keys: where it looks, not how much it adds), ``input`` (computes the
    unit's value) or ``output`` (writes the unit's value back into the residual stream). The bias of a pattern or
    input module holds the unit's entries at the same indices; an output module's bias is shared by all units.
    """

    module: str
    axis: int
    width: int
    role: str
    offset: int = 0


@dataclass(frozen=True)
class UnitLayout:
    """One kind of unit (``heads`` or ``neurons``) of one group: ``count`` units in each of ``layers`` layers,
    unit u of layer l made of the ``parts`` of the modules under ``prefix.format(layer=l)``.

    Every entry of the group's weights belongs to exactly one unit, so a unit mask covers the weights whole.
    """

    kind: str
    group: str
    prefix: str
    layers: int
    count: int
    parts: tuple[UnitPart, ...]

    def weight(self, layer: int, part: UnitPart) -> str:
        return f"{self.prefix.format(layer=layer)}{part.module}.weight"

    def bias(self, layer: int, part: UnitPart) -> str:
        """The bias of the part's module (if it has one): the unit's entries too, unless the part is an output."""
        return f"{self.prefix.format(layer=layer)}{part.module}.bias"


def _gpt2_units(config: PretrainedConfig) -> tuple[UnitLayout, ...]:
    """Head h: its query, key and value columns of ``c_attn`` (at 0, E and 2E) and its rows of ``attn.c_proj``;
    neuron i: column i of ``c_fc`` and row i of ``mlp.c_proj`` (Conv1D: [in, out])."""
    hidden, heads = config.n_embd, config.n_head
    size = hidden // heads
    attention = (
        UnitPart("attn.c_attn", 1, size, "pattern"),
        UnitPart("attn.c_attn", 1, size, "pattern", offset=hidden),
        UnitPart("attn.c_attn", 1, size, "input", offset=2 * hidden),
        UnitPart("attn.c_proj", 0, size, "output"),
    )
    mlp = (UnitPart("mlp.c_fc", 1, 1, "input"), UnitPart("mlp.c_proj", 0, 1, "output"))
    prefix, layers = "transformer.h.{layer}.", config.n_layer
    return (
        UnitLayout("heads", "attention", prefix, layers, heads, attention),
        UnitLayout("neurons", "mlp", prefix, layers, config.n_inner or 4 * hidden, mlp),
    )


def _llama_units(config: PretrainedConfig) -> tuple[UnitLayout, ...]:
    """A head is a KV group g (grouped-query attention: the query heads sharing one key/value head go together;
    with as many KV heads as heads, one head): its query heads' rows of ``q_proj``, its rows of ``k_proj`` and
    ``v_proj``, its query heads' columns of ``o_proj``. Neuron i: row i of ``gate_proj`` and ``up_proj``, column i
    of ``down_proj`` (nn.Linear: [out, in])."""
    heads = config.num_attention_heads
    groups = config.num_key_value_heads or heads
    size = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_group = heads // groups * size
    attention = (
        UnitPart("self_attn.q_proj", 0, per_group, "pattern"),
        UnitPart("self_attn.k_proj", 0, size, "pattern"),
        UnitPart("self_attn.v_proj", 0, size, "input"),
        UnitPart("self_attn.o_proj", 1, per_group, "output"),
    )
    mlp = (
        UnitPart("mlp.gate_proj", 0, 1, "input"),
        UnitPart("mlp.up_proj", 0, 1, "input"),
        UnitPart("mlp.down_proj", 1, 1, "output"),
    )
    prefix, layers = "model.layers.{layer}.", config.num_hidden_layers
    return (
        UnitLayout("heads", "attention", prefix, layers, groups, attention),
        UnitLayout("neurons", "mlp", prefix, layers, config.intermediate_size, mlp),
    )


UNIT_LAYOUTS: dict[str, Callable[[PretrainedConfig], tuple[UnitLayout, ...]]] = {
    "gpt2": _gpt2_units,
    "llama": _llama_units,
    "mistral": _llama_units,
    "qwen2": _llama_units,
}


def unit_layouts(config: PretrainedConfig) -> tuple[UnitLayout, ...]:
    """The heads and neurons of a model of this config (sizes from the config); a ConfigError for a family without
    a unit layout."""
    model_type = config.model_type
    if model_type not in UNIT_LAYOUTS:
        raise ConfigError(
            f"prune.structure=units has no head and neuron layout for model_type {model_type!r}; families with one: "
            f"{', '.join(sorted(UNIT_LAYOUTS))}"
        )
    return UNIT_LAYOUTS[model_type](config)
