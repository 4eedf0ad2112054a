"""The checks a ticket folder gets before any model is allocated, and the one that needs its weights in memory.

``check_ticket_folder`` matches the safetensors headers (names and shapes) with the model config.json describes,
built on the meta device: ``from_pretrained`` would randomly initialise whatever the files lack and only say so on
stderr. ``load_ticket``, ``gpt-tickets eval`` and ``push`` all use these checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PretrainedConfig

from ..errors import TicketError, first_line
from ..sparsity.masks import Mask, first_stray_weight, mask_checksum
from ..sparsity.nm import first_nm_violation
from .encoding import check_kept_values, dense_weight_files, load_packed_masks, read_header
from .format import (
    COMPACT_FILE,
    DENSE_INDEX_FILE,
    MASKS_FILE,
    TICKET_CONFIG_FILE,
    TicketConfig,
    parse_nm,
    read_ticket_config,
)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class WeightSet:
    """One encoding of the weights as its safetensors headers state it: tensor name -> (shape, file name)."""

    label: str  # how a message names it: the file, or the shard index
    tensors: dict[str, tuple[Shape, str]]
    compact: bool  # pruned weights stored as the 1-D values their masks keep


@dataclass(frozen=True)
class ModelLayout:
    """What config.json implies: every tensor of the model built from it on the meta device (no memory)."""

    shapes: dict[str, Shape]  # every state_dict entry, tied aliases included
    aliases: frozenset[str]  # entries tied to an earlier one: save_pretrained leaves them out, loading re-ties them
    parameters: frozenset[str]


def is_ticket_folder(folder: Path) -> bool:
    """Whether ``folder`` holds any file of the ticket format: such a folder gets every ticket check."""
    return any((folder / name).is_file() for name in (TICKET_CONFIG_FILE, MASKS_FILE, COMPACT_FILE))


def model_config(folder: Path) -> PretrainedConfig:
    """config.json through ``AutoConfig`` (no remote code): a foreign or damaged one fails with one line."""
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # transformers raises OSError, ValueError ... for a bad config
        raise TicketError(f"{folder} does not load as a transformers causal LM: {first_line(err)}") from None


def _read_weight_set(files: list[Path], label: str, compact: bool) -> WeightSet:
    tensors: dict[str, tuple[Shape, str]] = {}
    for path in files:
        for name, shape in read_header(path)[1].items():
            if name in tensors:
                raise TicketError(f"{label}: tensor {name!r} is in both {tensors[name][1]} and {path.name}")
            tensors[name] = (shape, path.name)
    return WeightSet(label, tensors, compact)


def _weight_sets(folder: Path, tcfg: TicketConfig) -> list[WeightSet]:
    """The headers of every weight file the ticket's format declares (shards stay inside the folder)."""
    sets = []
    if tcfg.weights_format in ("dense", "both"):
        files = dense_weight_files(folder)
        label = files[0].name if len(files) == 1 else f"the shards of {DENSE_INDEX_FILE}"
        sets.append(_read_weight_set(files, label, compact=False))
    if tcfg.weights_format in ("compact", "both"):
        sets.append(_read_weight_set([folder / COMPACT_FILE], COMPACT_FILE, compact=True))
    return sets


_NUMBERED = re.compile(r"^(.*?)\.(\d+)\.")  # 'transformer.h.3.attn.c_attn.weight' -> ('transformer.h', '3')


def _layer_counts(names: Iterable[str]) -> set[int]:
    """The lengths of the numbered module lists in the weight names: one is the stack of layers."""
    lists: dict[str, set[int]] = {}
    for name in names:
        match = _NUMBERED.match(name)
        if match:
            lists.setdefault(match[1], set()).add(int(match[2]))
    return {len(indices) for indices in lists.values()}


def _check_layer_count(declared: object, weights: WeightSet) -> None:
    """Cheap, and first: a config declaring 200000 layers is refused before any model, even on meta, is built.

    Some numbered module list of the header must have as many entries as config.json declares layers (a model may
    have other lists, e.g. a vision tower's): that bounds the meta build by the header's size.
    """
    counts = _layer_counts(weights.tensors)
    if type(declared) is not int or declared not in counts:
        found = " or ".join(str(n) for n in sorted(counts)) or "0"
        raise TicketError(
            f"config.json declares num_hidden_layers={declared!r}, {weights.label} holds the weights of {found} "
            f"layers (config.json and weights of different models?)"
        )


def _declared_layers(folder: Path) -> object:
    """config.json's layer count read as plain JSON, None when it cannot be found that way.

    Read before ``AutoConfig`` builds the config: for some model types (qwen2, gemma2) that makes a list entry per
    layer, so 10**8 declared layers would cost minutes and gigabytes before any check.
    """
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None  # AutoConfig says what is wrong with it
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    return data.get(CONFIG_MAPPING[model_type].attribute_map.get("num_hidden_layers", "num_hidden_layers"))


def _model_layout(config: PretrainedConfig, folder: Path) -> ModelLayout:
    """The model built from config.json on the meta device: its exact tensor names and shapes, in no memory."""
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as err:
        raise TicketError(
            f"{folder}/config.json does not describe a transformers causal LM: {first_line(err)}"
        ) from None
    first: dict[int, str] = {}
    shapes, aliases = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():  # keep_vars: tied entries are one object
        shapes[name] = tuple(tensor.shape)
        if first.setdefault(id(tensor), name) != name:
            aliases.add(name)
    parameters = frozenset(name for name, _ in model.named_parameters(remove_duplicate=False))
    return ModelLayout(shapes, frozenset(aliases), parameters)


def _check_mask_fits(name: str, m: torch.Tensor, layout: ModelLayout) -> None:
    """The mask belongs to a weight of the model config.json describes, with that weight's shape."""
    if name not in layout.parameters:
        raise TicketError(
            f"{MASKS_FILE} has a mask for {name!r}, which the model does not have (masks of a different model?)"
        )
    if tuple(m.shape) != layout.shapes[name]:
        raise TicketError(
            f"{MASKS_FILE}: mask {name!r} has shape {tuple(m.shape)}, the weight {layout.shapes[name]} "
            f"(masks of a different model?)"
        )


def _check_masks_fit(mask: Mask, layout: ModelLayout) -> None:
    for name, m in mask.items():
        _check_mask_fits(name, m, layout)


def _check_weights_fit(weights: WeightSet, layout: ModelLayout, mask: Mask) -> None:
    """The header holds exactly the tensors config.json implies (tied aliases optional), each with its shape.

    Without this, ``from_pretrained`` random-initialises whatever the file lacks and says so only on stderr.
    """
    for name, shape in layout.shapes.items():
        if name not in weights.tensors:
            if name in layout.aliases:
                continue
            raise TicketError(
                f"{weights.label}: tensor {name!r} of shape {shape}, which config.json implies, is missing "
                f"(config.json and weights of different models?)"
            )
        found, file = weights.tensors[name]
        if weights.compact and name in mask:
            _check_mask_fits(name, mask[name], layout)  # the kept values are counted with it
            check_kept_values(name, found, mask[name])
        elif found != shape:
            raise TicketError(f"{file}: tensor {name!r} has shape {found}, config.json implies {shape}")
    for name, (_, file) in weights.tensors.items():
        if name not in layout.shapes:
            raise TicketError(
                f"{file}: tensor {name!r} is not in the model config.json describes "
                f"(config.json and weights of different models?)"
            )


def _check_mask_checksum(mask: Mask, tcfg: TicketConfig) -> None:
    checksum = mask_checksum(mask)
    if tcfg.mask_checksum != checksum:
        raise TicketError(
            f"{MASKS_FILE} (checksum {checksum}) is not the masks file {TICKET_CONFIG_FILE} was written with "
            f"({tcfg.mask_checksum}): masks of a different ticket?"
        )


def check_nm_pattern(mask: Mask, model_type: str, nm: str | None) -> None:
    """A ticket recording an N:M pattern (``nm``) keeps it in every mask, on save and on load: TicketError, one line
    naming the first weight and group that break it."""
    if nm is None:
        return
    violation = first_nm_violation(mask, model_type, *parse_nm(nm))
    if violation:
        raise TicketError(f"the ticket's N:M pattern is {nm}, but {violation}")


def check_ticket_folder(folder: Path) -> tuple[TicketConfig, Mask]:
    """Every check that needs no weights in memory, before any model is allocated: ``ticket_config.json``, the
    masks, and the weight files' headers against config.json and the masks (names, shapes, layer count).

    ``load_ticket``, ``push_ticket`` and ``gpt-tickets eval`` all refuse a folder here, with the same line.
    """
    tcfg = read_ticket_config(folder)
    mask = load_packed_masks(folder / MASKS_FILE)
    sets = _weight_sets(folder, tcfg)
    declared = _declared_layers(folder)
    for weights in sets if declared is not None else []:
        _check_layer_count(declared, weights)
    config = model_config(folder)
    for weights in sets:  # again, as transformers reads config.json
        _check_layer_count(getattr(config, "num_hidden_layers", None), weights)
    layout = _model_layout(config, folder)
    for weights in sets:  # first: a config.json that disagrees with the weights is not blamed on the masks
        _check_weights_fit(weights, layout, mask)
    _check_masks_fit(mask, layout)
    _check_mask_checksum(mask, tcfg)
    check_nm_pattern(mask, config.model_type, tcfg.nm)
    return tcfg, mask


def check_ticket(model: torch.nn.Module, mask: Mask) -> None:
    """What needs the weights in memory: they are zero wherever the masks say (``check_ticket_folder`` did the rest)."""
    stray = first_stray_weight(model, mask)
    if stray:
        raise TicketError(f"weight {stray[0]!r} is non-zero at {stray[1]} positions where its mask is 0")
