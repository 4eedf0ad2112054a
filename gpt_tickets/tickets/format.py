"""The ticket format: file names, versions, allowed values and ``ticket_config.json`` as a typed record.

A ticket folder is a plain transformers model folder plus ``ticket_config.json``, ``ticket_masks.safetensors`` and,
for the compact formats, ``ticket_compact.safetensors`` (see ``encoding``). This module is a leaf (it imports only
the errors), so the run config checks ``export.format`` against the list defined here.

Everything read from a downloaded folder is data: file names are fixed here, and every string that could choose a
code path (format names and versions) is checked against a fixed set of values before it is used.
"""

from __future__ import annotations

import dataclasses
import json
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TicketError, first_line

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
WEIGHT_FORMATS = ("dense", "compact", "both")
# export.format: a weight format, or shrink (a dense ticket plus the smaller standard model beside it, see shrink.py)
EXPORT_FORMATS = (*WEIGHT_FORMATS, "shrink")

TICKET_CONFIG_FILE = "ticket_config.json"
MASKS_FILE = "ticket_masks.safetensors"
COMPACT_FILE = "ticket_compact.safetensors"
DENSE_FILE = "model.safetensors"
DENSE_INDEX_FILE = "model.safetensors.index.json"

MASKS_FORMAT = "gpt_tickets/packed-bits"
COMPACT_FORMAT = "gpt_tickets/compact"

_NM = re.compile(r"(\d{1,6}):(\d{1,6})")


def parse_nm(text: object) -> tuple[int, int]:
    """An N:M pattern (``"2:4"``: at most N of every M consecutive inputs kept) as (N, M); ValueError saying what is
    wrong otherwise. Here because the ticket records it: the run config and the ticket check the same syntax."""
    match = _NM.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{_short(text)} is not N:M; write two positive integers N < M, e.g. 2:4")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        why = "N >= M prunes nothing" if n >= m else "N=0 keeps nothing"
        raise ValueError(f"{_short(text)} keeps N={n} of every M={m}; N must be in 1..M-1 ({why}), e.g. 2:4")
    return n, m


@dataclass
class TicketConfig:
    """``ticket_config.json``: how a ticket was found, what it holds, and its sparsity."""

    weights_format: str
    seed: int
    rounds: int
    fraction_per_round: float
    scope: str
    rewind_step: int
    groups: list[str]
    sparsity: dict[str, float]  # overall, attention, mlp (and embeddings when pruned)
    per_layer_sparsity: dict[str, dict[str, float]]
    mask_checksum: str
    gpt_tickets_version: str
    base_model: str | None = None  # Hub id or folder (init=pretrained)
    base_model_revision: str | None = None
    base_config: dict[str, Any] | None = None  # model_type and config keys (init=scratch)
    val_perplexity: float | None = None  # the ticket's, and the dense model's, on the run's validation data
    dense_val_perplexity: float | None = None
    nm: str | None = None  # the N:M pattern every mask keeps (prune.structure nm), checked on save and on load
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = TICKET_CONFIG_FILE) -> TicketConfig:
        """Checked field by field: a foreign or damaged file fails with one line naming the key."""
        if not isinstance(data, dict):
            raise TicketError(f"{where} must hold a JSON object")
        version = data.get("format_version")
        if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:
            raise TicketError(
                f"{TICKET_CONFIG_FILE} has format_version {_short(version)}; this gpt_tickets reads "
                f"{list(SUPPORTED_FORMAT_VERSIONS)} (a newer gpt_tickets may read it)"
            )
        weights = data.get("weights_format")
        if weights not in WEIGHT_FORMATS:
            raise TicketError(
                f"{TICKET_CONFIG_FILE} has weights_format {_short(weights)}; allowed: {', '.join(WEIGHT_FORMATS)}"
            )
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING:
                    raise TicketError(f"{where} lacks the entry {f.name!r}; re-export the ticket")
                continue
            if not _matches(data[f.name], hints[f.name]):
                raise TicketError(f"{where}: {f.name}={_short(data[f.name])} is not of type {hints[f.name]}")
            values[f.name] = data[f.name]
        if values.get("nm") is not None:
            try:
                parse_nm(values["nm"])
            except ValueError as err:
                raise TicketError(f"{where}: nm={err}") from None
        return cls(**values)  # keys this version does not know are ignored: newer writers may add facts


def _short(value: Any) -> str:
    """A value from a foreign file, as a short one-line repr (a nested or huge value is abbreviated)."""
    return reprlib.repr(value)


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a field's type (ints pass for floats; containers are checked one level deep)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(annotation)
        return isinstance(value, dict) and all(isinstance(k, str) and _matches(v, item) for k, v in value.items())
    if annotation is Any:
        return True
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def read_ticket_config(folder: Path) -> TicketConfig:
    path = folder / TICKET_CONFIG_FILE
    if not path.is_file():
        raise TicketError(f"{folder} is not a gpt_tickets ticket: it has no {TICKET_CONFIG_FILE}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise TicketError(f"{path} is not valid JSON: {first_line(err)}") from None
    return TicketConfig.from_dict(data, str(path))
