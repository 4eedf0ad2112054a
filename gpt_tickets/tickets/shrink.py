"""Shrink export: a ticket whose pruned units are whole MLP neurons (and, in the Llama family, whole KV groups),
written as a physically smaller standard model that plain ``AutoModelForCausalLM.from_pretrained`` loads.

A unit is removable when every masked entry of it is 0: its output weights are then zero, so it adds exactly nothing
and dropping its rows and columns leaves the logits unchanged (to float summation order). The smaller model is a
standard config (GPT-2: ``n_inner``; Llama, Mistral, Qwen2: ``intermediate_size``, ``num_attention_heads`` and
``num_key_value_heads`` with ``head_dim`` set explicitly), so every layer must lose the same number of units.
GPT-2's heads cannot be removed: its head size is fixed at ``n_embd / n_head``; masked heads stay as zeros.

The unit layout is derived here from the masks' parameter names and the model config alone, independent of how the
mask was found.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from ..data.tokenizer import save_pretrained_portable
from ..errors import ConfigError, TicketError
from ..io import atomic_write_json, atomic_write_text, replace_dir, share_like_other_files
from ..quiet import library_bars_off
from ..reporting.tables import markdown_table
from ..sparsity.apply import detach_masks
from ..sparsity.masks import Mask, first_stray_weight
from .format import TicketConfig
from .load import load_ticket, load_ticket_tokenizer, ticket_folder

SHRINK_FILE = "shrink_config.json"  # which units of each layer were removed: marks a folder as a shrunk export
SHRUNK_SUFFIX = "_shrunk"  # export.format shrink writes <ticket>_shrunk/ beside the ticket


@dataclass(frozen=True)
class UnitPart:
    """The slice of one layer parameter that belongs to each unit: dim ``dim`` read as [outer, units, inner].

    ``outer`` > 1 where a parameter holds several blocks of the units side by side (GPT-2's ``c_attn``: q, k, v).
    """

    suffix: str  # the parameter's name inside its layer, e.g. "mlp.c_fc.weight"
    dim: int
    outer: int = 1

    @property
    def is_bias(self) -> bool:
        return self.suffix.endswith(".bias")


@dataclass(frozen=True)
class UnitKind:
    name: str  # "neuron", "KV group", "head"
    per_layer: int
    parts: tuple[UnitPart, ...]
    removable: bool = True  # False: GPT-2 heads, kept as zeros


@dataclass(frozen=True)
class Family:
    layer_prefix: str  # format with layer=i
    units: Callable[[PretrainedConfig], list[UnitKind]]
    resized: Callable[[PretrainedConfig, dict[str, int]], dict[str, Any]]  # config changes for the kept unit counts


def _gpt2_units(config: PretrainedConfig) -> list[UnitKind]:
    inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
    head = (UnitPart("attn.c_attn.weight", 1, 3), UnitPart("attn.c_attn.bias", 0, 3), UnitPart("attn.c_proj.weight", 0))
    neuron = (UnitPart("mlp.c_fc.weight", 1), UnitPart("mlp.c_fc.bias", 0), UnitPart("mlp.c_proj.weight", 0))
    return [UnitKind("head", config.n_head, head, removable=False), UnitKind("neuron", inner, neuron)]


def _llama_units(config: PretrainedConfig) -> list[UnitKind]:
    # A KV group: its key and value head and the query heads that share them (grouped-query attention).
    projections = [f"self_attn.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj") for w in ("weight", "bias")]
    group = (*(UnitPart(name, 0) for name in projections), UnitPart("self_attn.o_proj.weight", 1))
    gate_up = [f"mlp.{p}.{w}" for p in ("gate_proj", "up_proj") for w in ("weight", "bias")]
    neuron = (*(UnitPart(name, 0) for name in gate_up), UnitPart("mlp.down_proj.weight", 1))
    return [
        UnitKind("KV group", config.num_key_value_heads, group),
        UnitKind("neuron", config.intermediate_size, neuron),
    ]


def _gpt2_resized(config: PretrainedConfig, kept: dict[str, int]) -> dict[str, Any]:
    return {"n_inner": kept["neuron"]}


def _llama_resized(config: PretrainedConfig, kept: dict[str, int]) -> dict[str, Any]:
    queries_per_group = config.num_attention_heads // config.num_key_value_heads
    return {
        "intermediate_size": kept["neuron"],
        "num_key_value_heads": kept["KV group"],
        "num_attention_heads": kept["KV group"] * queries_per_group,
        # explicit: hidden_size / num_attention_heads no longer gives it
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
    }


_LLAMA_LIKE = Family("model.layers.{layer}.", _llama_units, _llama_resized)
FAMILIES: dict[str, Family] = {
    "gpt2": Family("transformer.h.{layer}.", _gpt2_units, _gpt2_resized),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}


@dataclass
class ShrinkPlan:
    """Which units of each layer a mask removes (and, for GPT-2 heads, keeps as zeros), and the config they give."""

    model_type: str
    per_layer: dict[str, int]  # units per layer before, by kind
    removable: dict[str, bool]
    masked: dict[str, list[list[int]]]  # by kind: each layer's entirely masked unit indices
    config_before: dict[str, Any] = field(default_factory=dict)  # the keys config_changes sets, as they were
    config_changes: dict[str, Any] = field(default_factory=dict)

    def removed(self, kind: str) -> list[list[int]]:
        return self.masked[kind] if self.removable[kind] else [[] for _ in self.masked[kind]]

    def kept(self, kind: str) -> int:
        return self.per_layer[kind] - len(self.removed(kind)[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "units_per_layer": self.per_layer,
            "removed": {kind: self.removed(kind) for kind in self.masked if self.removable[kind]},
            "kept_as_zeros": {kind: layers for kind, layers in self.masked.items() if not self.removable[kind]},
            "config_before": self.config_before,
            "config_changes": self.config_changes,
        }


def _family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} has no shrink support; supported: {', '.join(FAMILIES)} "
            f"(export it as a dense ticket: export.format dense)"
        )
    return FAMILIES[model_type]


def _unit_view(t: torch.Tensor, part: UnitPart, units: int) -> torch.Tensor:
    """``t`` as [outer, units, everything else]: entry [:, u, :] is unit u's share of the parameter."""
    return t.movedim(part.dim, 0).reshape(part.outer, units, -1)


def _unit_states(kind: UnitKind, prefix: str, mask: Mask) -> tuple[list[int], int]:
    """(entirely masked units, first partly masked unit or -1) of one layer.

    A weight without a mask counts as kept; a bias counts only when masked (with its output weights zero, an unmasked
    bias adds nothing either).
    """
    all_kept = torch.ones(kind.per_layer, dtype=torch.bool)
    none_kept = torch.ones(kind.per_layer, dtype=torch.bool)
    for part in kind.parts:
        name = prefix + part.suffix
        if name in mask:
            view = _unit_view(mask[name], part, kind.per_layer)
            all_kept &= view.all(dim=2).all(dim=0)
            none_kept &= ~view.any(dim=2).any(dim=0)
        elif not part.is_bias:
            none_kept[:] = False
    partial = (~all_kept & ~none_kept).nonzero()
    return none_kept.nonzero().flatten().tolist(), int(partial[0]) if len(partial) else -1


def _check_only_units(mask: Mask, covered: set[str]) -> None:
    for name, m in mask.items():
        if name not in covered and not bool(m.all()):
            raise ConfigError(
                f"the mask of {name!r} prunes {int((~m).sum())} single weights: shrink removes only whole heads and "
                f"neurons (export this ticket as dense: export.format dense)"
            )


def _check_uniform(plan: ShrinkPlan) -> None:
    for kind, layers in plan.masked.items():
        if not plan.removable[kind]:
            continue
        counts = [len(units) for units in layers]
        if len(set(counts)) > 1:
            raise ConfigError(
                f"layers differ in width: {kind}s removed per layer {counts}; a standard config needs the same count "
                f"in every layer (uniform allocation), so this ticket exports only as dense (export.format dense)"
            )
        if counts[0] == plan.per_layer[kind]:
            raise ConfigError(
                f"every {kind} of every layer is masked ({counts[0]} of {counts[0]}): a shrunk layer needs at least one"
            )


def plan_shrink(config: PretrainedConfig, mask: Mask) -> ShrinkPlan:
    """Which units ``mask`` removes in a model of ``config``; a mask that does not shrink is one ``ConfigError`` line.

    Needs no weights, so ``export.format: shrink`` checks it before writing anything.
    """
    family = _family(config.model_type)
    kinds = family.units(config)
    plan = ShrinkPlan(
        config.model_type,
        per_layer={k.name: k.per_layer for k in kinds},
        removable={k.name: k.removable for k in kinds},
        masked={k.name: [] for k in kinds},
    )
    covered: set[str] = set()
    for layer in range(config.num_hidden_layers):
        prefix = family.layer_prefix.format(layer=layer)
        for kind in kinds:
            masked, partial = _unit_states(kind, prefix, mask)
            if partial >= 0:
                raise ConfigError(
                    f"{kind.name} {partial} of layer {layer} is partly masked: shrink removes only whole units "
                    f"(a mask of single weights exports as dense: export.format dense)"
                )
            plan.masked[kind.name].append(masked)
            covered |= {prefix + part.suffix for part in kind.parts}
    _check_only_units(mask, covered)
    _check_uniform(plan)
    plan.config_before = family.resized(config, plan.per_layer)
    plan.config_changes = family.resized(config, {k.name: plan.kept(k.name) for k in kinds})
    return plan


def _positions(part: UnitPart, units: int, which: list[int], length: int) -> torch.Tensor:
    """Positions along ``part.dim`` (of size ``length``) that belong to the units ``which``."""
    return torch.arange(length).reshape(part.outer, units, -1)[:, which, :].reshape(-1)


def _shrunk_state(model: PreTrainedModel, plan: ShrinkPlan) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    family = FAMILIES[plan.model_type]
    for kind in family.units(model.config):
        if not kind.removable:
            continue
        for layer, removed in enumerate(plan.removed(kind.name)):
            prefix = family.layer_prefix.format(layer=layer)
            for part in kind.parts:
                name = prefix + part.suffix
                if name in state:
                    kept = [u for u in range(kind.per_layer) if u not in set(removed)]
                    index = _positions(part, kind.per_layer, kept, state[name].shape[part.dim])
                    state[name] = state[name].index_select(part.dim, index.to(state[name].device))
    return state


def unit_mask(model: PreTrainedModel, removed: dict[str, list[list[int]]]) -> Mask:
    """A mask of whole units over their weights and biases (kind -> each layer's unit indices, e.g.
    ``{"neuron": [[0, 5], [1, 2]]}``), as a structured pruner gives it: for benchmarks and examples."""
    family = _family(model.config.model_type)
    params = dict(model.named_parameters())
    mask = Mask()
    for kind in family.units(model.config):
        for layer, units in enumerate(removed.get(kind.name, [])):
            for part in kind.parts:
                name = family.layer_prefix.format(layer=layer) + part.suffix
                if name in params:
                    m = mask.get(name, torch.ones_like(params[name], dtype=torch.bool, device="cpu"))
                    mask[name] = m.index_fill(part.dim, _positions(part, kind.per_layer, units, m.shape[part.dim]), 0)
    return mask


def shrunk_config(config: PretrainedConfig, plan: ShrinkPlan) -> PretrainedConfig:
    smaller = copy.deepcopy(config)
    for key, value in plan.config_changes.items():
        setattr(smaller, key, value)
    return smaller


def _shrink(model: PreTrainedModel, mask: Mask) -> tuple[PreTrainedModel, ShrinkPlan]:
    stray = first_stray_weight(model, mask)
    if stray:
        raise TicketError(f"weight {stray[0]!r} is non-zero at {stray[1]} positions where its mask is 0")
    plan = plan_shrink(model.config, mask)
    with no_init_weights():  # every tensor is overwritten by the kept rows and columns below
        smaller = AutoModelForCausalLM.from_config(shrunk_config(model.config, plan), dtype=model.dtype)
    smaller.tie_weights()  # no_init_weights skips the tying too
    smaller.load_state_dict(_shrunk_state(model, plan))  # strict: a name or shape that does not fit fails here
    smaller.generation_config = copy.deepcopy(model.generation_config)
    return smaller.to(model.device).eval(), plan


@torch.no_grad()
def shrink_model(model: PreTrainedModel, mask: Mask) -> PreTrainedModel:
    """A standard model of the same family without the units ``mask`` removes entirely; its logits equal the masked
    model's.

    Raises ConfigError (one line) when the mask does not shrink: units only partly masked, single masked weights
    outside the units, layers losing different numbers of units, or a family without shrink support.
    """
    return _shrink(model, mask)[0]


_KIND_LABELS = {"neuron": "MLP neurons", "KV group": "KV groups", "head": "attention heads"}


def _sizes_table(plan: ShrinkPlan) -> str:
    rows = [["config key", "before", "after"]]
    rows += [[key, str(plan.config_before[key]), str(value)] for key, value in plan.config_changes.items()]
    return markdown_table(rows)


def _per_layer_table(plan: ShrinkPlan) -> str:
    kinds = list(plan.masked)
    header = [f"{_KIND_LABELS[k]} {'removed' if plan.removable[k] else 'kept as zeros'}" for k in kinds]
    rows = [["layer", *header]]
    for layer in range(len(plan.masked[kinds[0]])):
        rows.append([str(layer), *(f"{len(plan.masked[k][layer])} of {plan.per_layer[k]}" for k in kinds)])
    return markdown_table(rows)


def _heads_note(plan: ShrinkPlan) -> str:
    zeroed = sum(len(units) for kind, layers in plan.masked.items() if not plan.removable[kind] for units in layers)
    if not zeroed:
        return ""
    return (
        f"\nMasked attention heads ({zeroed}) stay in the model as zeros: GPT-2's head size is fixed at n_embd / "
        "n_head, so a head cannot be removed from a standard GPT-2 config. They add exactly nothing, as in the ticket, "
        "but this is a plain model without masks: fine-tuning it can make them non-zero again.\n"
    )


def _ticket_note(ticket: TicketConfig | None) -> str:
    if ticket is None or ticket.val_perplexity is None:
        return ""
    return f"The ticket's validation perplexity, and so this model's: {ticket.val_perplexity:.2f}.\n"


def shrunk_model_card(
    plan: ShrinkPlan, before: PreTrainedModel, after: PreTrainedModel, source: str, ticket: TicketConfig | None = None
) -> str:
    """The README.md of a shrunk export: what was removed per layer, the sizes before and after, how to load it.

    Args:
        source: what was shrunk, as the card's first words name it (e.g. "The ticket `runs/tiny/ticket`").
    """
    n_before, n_after = before.num_parameters(), after.num_parameters()
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [lottery-ticket, pruned, structured, gpt_tickets]
---

# Shrunk lottery ticket: {n_before:,} -> {n_after:,} parameters ({1 - n_after / n_before:.1%} fewer)

{source} with its entirely masked units removed, written by gpt_tickets (`gpt-tickets shrink`) as a standard
`{plan.model_type}` model. A removed unit's output weights were zero in the ticket, so it added exactly nothing: this
model's logits equal the masked ticket's (to float summation order).
{_ticket_note(ticket)}
Config before and after:

{_sizes_table(plan)}

Units per layer:

{_per_layer_table(plan)}
{_heads_note(plan)}
## Load it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

## Files

- `{SHRINK_FILE}`: the indices (in the ticket) of the units removed from each layer, and the config changes.
"""


def check_out_dir(out_dir: Path, ticket_dir: Path | None = None) -> None:
    """The shrunk model's folder: new, empty, or an earlier shrunk export (replaced); never the ticket itself."""
    if ticket_dir is not None and out_dir.resolve() == ticket_dir.resolve():
        raise ConfigError(f"the output folder {out_dir} is the ticket itself; give a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SHRINK_FILE).is_file():
        raise ConfigError(f"{out_dir} exists and is not a shrunk export (it has no {SHRINK_FILE}); give a new folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; give a new folder")


@torch.no_grad()
def write_shrunk(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    mask: Mask,
    out_dir: str | Path,
    source: str = "A masked model",
    ticket: TicketConfig | None = None,
) -> Path:
    """The shrunk model, its tokenizer, ``shrink_config.json`` and a model card in ``out_dir``, written atomically
    (a temp folder renamed into place); a mask that does not shrink fails before anything is written.

    Args:
        source: how the card names what was shrunk; ``ticket``: its ``ticket_config.json``, recorded beside.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    smaller, plan = _shrink(model, mask)
    record = {**plan.to_dict(), "parameters": {"before": model.num_parameters(), "after": smaller.num_parameters()}}
    if ticket is not None:
        record["ticket"] = {"mask_checksum": ticket.mask_checksum, "val_perplexity": ticket.val_perplexity}
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with library_bars_off():
        smaller.save_pretrained(tmp, safe_serialization=True)
    save_pretrained_portable(tokenizer, tmp)
    atomic_write_json(record, tmp / SHRINK_FILE)
    atomic_write_text(shrunk_model_card(plan, model, smaller, source, ticket), tmp / "README.md")
    share_like_other_files(*(p for p in tmp.iterdir() if p.is_file()))  # save_pretrained's weights come 0600
    replace_dir(tmp, out_dir)
    return out_dir


def shrink_ticket(ticket: str | Path, out_dir: str | Path, revision: str | None = None) -> Path:
    """Write the ticket (a folder or Hub repo, checked as ``load_ticket`` checks it) as a smaller standard model.

    See :func:`shrink_model` for what shrinks; anything else is one ``ConfigError``/``TicketError`` line, with
    nothing written.
    """
    folder = ticket_folder(ticket, revision)
    check_out_dir(Path(out_dir), folder)
    model = load_ticket(folder)
    detach_masks(model)
    return write_shrunk(
        model, load_ticket_tokenizer(folder), model.ticket.mask, out_dir, f"The ticket `{ticket}`", model.ticket.config
    )


def shrunk_dir(ticket_dir: str | Path) -> Path:
    """Where ``export.format: shrink`` writes the shrunk model: beside the ticket, ``<ticket>_shrunk``."""
    ticket_dir = Path(ticket_dir)
    return ticket_dir.with_name(ticket_dir.name + SHRUNK_SUFFIX)
