"""Shrink export: a ticket whose pruned units are whole MLP neurons (and, in the Llama family, whole KV groups),
written as a physically smaller standard model that plain ``AutoModelForCausalLM.from_pretrained`` loads.

A unit is removable when every masked entry of it is 0: its output weights are then zero, so it adds exactly nothing
and dropping its rows and columns leaves the logits unchanged (to float summation order). The smaller model is a
standard config (GPT-2: ``n_inner``; Llama, Mistral, Qwen2: ``intermediate_size``, ``num_attention_heads`` and
``num_key_value_heads`` with ``head_dim`` set explicitly), so every layer must lose the same number of units.
GPT-2's heads cannot be removed: its head size is fixed at ``n_embd / n_head``; masked heads stay as zeros.

The heads and neurons are those that ``prune.structure: units`` prunes (``models.families.unit_layouts``, read
through ``sparsity.units``), found from the mask alone, however it was found. What is shrink's own: the config keys
the kept counts set, and which heads must stay.
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

from ..config.schema import one_of
from ..data.tokenizer import save_pretrained_portable
from ..errors import ConfigError, TicketError
from ..io import atomic_write_json, atomic_write_text, replace_dir, share_like_other_files
from ..models.families import UnitLayout, unit_layouts
from ..quiet import library_bars_off
from ..reporting.tables import markdown_table
from ..sparsity.apply import detach_masks
from ..sparsity.masks import Mask, first_stray_weight
from ..sparsity.units import kept_positions, mask_without_units, surviving_units, unit_parameters
from .format import TicketConfig
from .load import load_ticket, load_ticket_tokenizer, ticket_folder

SHRINK_FILE = "shrink_config.json"  # which units of each layer were removed: marks a folder as a shrunk export
SHRUNK_SUFFIX = "_shrunk"  # export.format shrink writes <ticket>_shrunk/ beside the ticket


@dataclass(frozen=True)
class Shrinkable:
    """What shrink adds to a family's unit layouts: the config for the kept counts, and what its heads are."""

    config_keys: Callable[[PretrainedConfig, dict[str, int]], dict[str, Any]]  # kept units per layer by kind -> keys
    heads: str  # what a "heads" unit is, for the card and the errors
    heads_removable: bool = True

    def label(self, kind: str) -> str:
        return self.heads if kind == "heads" else "MLP neurons"


def _gpt2_keys(config: PretrainedConfig, kept: dict[str, int]) -> dict[str, Any]:
    return {"n_inner": kept["neurons"]}


def _llama_keys(config: PretrainedConfig, kept: dict[str, int]) -> dict[str, Any]:
    queries_per_group = config.num_attention_heads // config.num_key_value_heads
    return {
        "intermediate_size": kept["neurons"],
        "num_key_value_heads": kept["heads"],
        "num_attention_heads": kept["heads"] * queries_per_group,
        # explicit: hidden_size / num_attention_heads no longer gives it
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
    }


_LLAMA_LIKE = Shrinkable(_llama_keys, "KV groups")  # a unit_layouts head: a KV head with the query heads sharing it
SHRINKABLE: dict[str, Shrinkable] = {
    "gpt2": Shrinkable(_gpt2_keys, "attention heads", heads_removable=False),  # head size fixed at n_embd / n_head
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}


@dataclass
class ShrinkPlan:
    """Which units of each layer a mask removes (and, for GPT-2 heads, keeps as zeros), and the config they give."""

    model_type: str
    per_layer: dict[str, int]  # units per layer before, by kind ("heads", "neurons")
    labels: dict[str, str]  # by kind, as the card names them: "attention heads", "KV groups", "MLP neurons"
    removable: dict[str, bool]
    masked: dict[str, torch.Tensor]  # by kind: [layers, units] bool, True where the mask keeps nothing of the unit
    config_before: dict[str, Any] = field(default_factory=dict)  # the keys config_changes sets, as they were
    config_changes: dict[str, Any] = field(default_factory=dict)

    def removed(self, kind: str) -> torch.Tensor:
        return self.masked[kind] if self.removable[kind] else torch.zeros_like(self.masked[kind])

    def kept(self, kind: str) -> int:
        return self.per_layer[kind] - int(self.removed(kind)[0].sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "units_per_layer": self.per_layer,
            "removed": {kind: _indices(units) for kind, units in self.masked.items() if self.removable[kind]},
            "kept_as_zeros": {kind: _indices(units) for kind, units in self.masked.items() if not self.removable[kind]},
            "config_before": self.config_before,
            "config_changes": self.config_changes,
        }


def _indices(units: torch.Tensor) -> list[list[int]]:
    """Each layer's unit indices where ``units`` ([layers, units] bool) is True."""
    return [layer.nonzero().flatten().tolist() for layer in units]


def _family(model_type: str) -> Shrinkable:
    if model_type not in SHRINKABLE:
        raise ConfigError(
            f"model_type {model_type!r} has no shrink support; supported: {', '.join(SHRINKABLE)} "
            f"(export it as a dense ticket: export.format dense)"
        )
    return SHRINKABLE[model_type]


def _wholly_masked(mask: Mask, layout: UnitLayout, label: str) -> torch.Tensor:
    """[layers, units] bool: the units the mask keeps nothing of; a partly masked unit is one ConfigError line."""
    try:
        return ~surviving_units(mask, layout, label[:-1])
    except ValueError as err:
        raise ConfigError(
            f"{err}: shrink removes only whole units (a mask of single weights exports as dense: export.format dense)"
        ) from None


def _check_only_units(mask: Mask, masked: dict[UnitLayout, torch.Tensor]) -> None:
    """Every masked entry belongs to a wholly masked unit: the mask is the unit mask of those units."""
    of_units = mask_without_units(mask, masked)
    for name, m in mask.items():
        single = int((of_units[name] & ~m).sum())
        if single:
            raise ConfigError(
                f"the mask of {name!r} prunes {single} single weights: shrink removes only whole heads and "
                f"neurons (export this ticket as dense: export.format dense)"
            )


def _check_uniform(plan: ShrinkPlan) -> None:
    for kind, units in plan.masked.items():
        if not plan.removable[kind]:
            continue
        counts = units.sum(1).tolist()
        if len(set(counts)) > 1:
            raise ConfigError(
                f"layers differ in width: {plan.labels[kind]} removed per layer {counts}; a standard config needs the "
                f"same count in every layer (uniform allocation), so this ticket exports only as dense "
                f"(export.format dense)"
            )
        if counts[0] == plan.per_layer[kind]:
            raise ConfigError(
                f"every {plan.labels[kind][:-1]} of every layer is masked ({counts[0]} of {counts[0]}): a shrunk "
                f"layer needs at least one"
            )


def plan_shrink(config: PretrainedConfig, mask: Mask) -> ShrinkPlan:
    """Which units ``mask`` removes in a model of ``config``; a mask that does not shrink is one ``ConfigError`` line.

    Needs no weights, so ``export.format: shrink`` checks it before writing anything. A layout whose weights the mask
    leaves out (an MLP-only ticket's heads) keeps every unit.
    """
    family = _family(config.model_type)
    layouts = unit_layouts(config)
    masked = {layout: _wholly_masked(mask, layout, family.label(layout.kind)) for layout in layouts}
    _check_only_units(mask, masked)
    plan = ShrinkPlan(
        config.model_type,
        per_layer={layout.kind: layout.count for layout in layouts},
        labels={layout.kind: family.label(layout.kind) for layout in layouts},
        removable={layout.kind: layout.kind != "heads" or family.heads_removable for layout in layouts},
        masked={layout.kind: units for layout, units in masked.items()},
    )
    _check_uniform(plan)
    plan.config_before = family.config_keys(config, plan.per_layer)
    plan.config_changes = family.config_keys(config, {kind: plan.kept(kind) for kind in plan.per_layer})
    return plan


def _shrunk_state(model: PreTrainedModel, plan: ShrinkPlan) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    removed = {layout: plan.removed(layout.kind) for layout in unit_layouts(model.config)}
    for name, (axis, kept) in kept_positions(state, removed).items():
        state[name] = state[name].index_select(axis, kept.to(state[name].device))
    return state


def unit_mask(model: PreTrainedModel, removed: dict[str, list[list[int]]]) -> Mask:
    """A mask of whole units over their weights and biases (kind -> each layer's unit indices, e.g.
    ``{"neurons": [[0, 5], [1, 2]]}``), as a structured pruner gives it: for benchmarks and examples."""
    layouts = unit_layouts(model.config)
    for kind in removed:
        one_of("unit kind", kind, tuple(layout.kind for layout in layouts))
    layouts = [layout for layout in layouts if layout.kind in removed]
    weights = unit_parameters(model, [layout.group for layout in layouts])
    units = {layout: torch.zeros(layout.layers, layout.count, dtype=torch.bool) for layout in layouts}
    for layout, of_layout in units.items():
        for layer, indices in enumerate(removed[layout.kind]):
            of_layout[layer, indices] = True
    return mask_without_units({w.name: model.get_parameter(w.name) for w in weights}, units)


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


def _sizes_table(plan: ShrinkPlan) -> str:
    rows = [["config key", "before", "after"]]
    rows += [[key, str(plan.config_before[key]), str(value)] for key, value in plan.config_changes.items()]
    return markdown_table(rows)


def _per_layer_table(plan: ShrinkPlan) -> str:
    kinds = list(plan.masked)
    header = [f"{plan.labels[k]} {'removed' if plan.removable[k] else 'kept as zeros'}" for k in kinds]
    rows = [["layer", *header]]
    for layer in range(len(plan.masked[kinds[0]])):
        rows.append([str(layer), *(f"{int(plan.masked[k][layer].sum())} of {plan.per_layer[k]}" for k in kinds)])
    return markdown_table(rows)


def _heads_note(plan: ShrinkPlan) -> str:
    zeroed = sum(int(units.sum()) for kind, units in plan.masked.items() if not plan.removable[kind])
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
