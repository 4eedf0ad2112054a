"""How a ticket's tensors are encoded in its safetensors files, and read back checked at every step.

- ``ticket_masks.safetensors``: one bit-packed uint8 tensor per pruned weight, named after the weight, the shapes in
  the file's metadata;
- ``ticket_compact.safetensors`` (formats ``compact`` and ``both``): each pruned weight as the values its mask keeps,
  in the mask's order, every other tensor as in ``model.safetensors``. With the masks' bitmaps this is the compact
  sparse encoding: at 90% sparsity 0.1 + 1/32 of the dense fp32 bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import TicketError, first_line
from ..io import atomic_save_tensors
from ..sparsity.masks import Mask
from .bitpack import pack_bits, unpack_bits
from .format import (
    COMPACT_FILE,
    COMPACT_FORMAT,
    DENSE_FILE,
    DENSE_INDEX_FILE,
    FORMAT_VERSION,
    MASKS_FILE,
    MASKS_FORMAT,
    SUPPORTED_FORMAT_VERSIONS,
)

# ------------------------------------------------------------------------------------------------- safetensors


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata and every tensor's shape, from the file's header alone: no tensor is read, nothing allocated.

    A missing, truncated or foreign file fails here with one line.
    """
    if not path.is_file():
        raise TicketError(f"{path.name} is missing from {path.parent}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as err:  # safetensors raises SafetensorError / OSError for truncated or foreign files
        raise TicketError(
            f"{path} is not a readable safetensors file (truncated or damaged?): {first_line(err)}"
        ) from None


def read_metadata(path: Path) -> dict[str, str]:
    """The header's metadata (format and version), with ``read_header``'s one-line errors."""
    return read_header(path)[0]


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    metadata = read_metadata(path)
    return load_file(str(path)), metadata


def _check_format(path: Path, metadata: dict[str, str], expected: str) -> None:
    found = metadata.get("format")
    if found != expected:
        raise TicketError(f"{path.name} has format {found!r}; gpt_tickets reads {expected!r}")
    version = metadata.get("format_version")
    if version not in {str(v) for v in SUPPORTED_FORMAT_VERSIONS}:
        raise TicketError(
            f"{path.name} has format_version {version!r}; this gpt_tickets reads {list(SUPPORTED_FORMAT_VERSIONS)}"
        )


# ------------------------------------------------------------------------------------------------------- masks


def save_packed_masks(mask: Mask, path: Path) -> None:
    shapes = {name: list(m.shape) for name, m in mask.items()}
    metadata = {"format": MASKS_FORMAT, "format_version": str(FORMAT_VERSION), "shapes": json.dumps(shapes)}
    atomic_save_tensors({name: pack_bits(m.cpu()) for name, m in mask.items()}, path, metadata=metadata)


def load_packed_masks(path: Path) -> Mask:
    packed, metadata = read_tensors(path)
    _check_format(path, metadata, MASKS_FORMAT)
    try:
        shapes = json.loads(metadata.get("shapes", ""))
    except json.JSONDecodeError:
        shapes = None
    if not isinstance(shapes, dict) or not all(
        isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s) for s in shapes.values()
    ):
        raise TicketError(f"{path.name}: the 'shapes' metadata is not a JSON map of weight names to shapes")
    if set(shapes) != set(packed):
        odd = sorted(set(shapes) ^ set(packed))[0]
        raise TicketError(f"{path.name}: tensor {odd!r} and the 'shapes' metadata disagree")
    mask = Mask()
    for name, bits in packed.items():
        try:
            mask[name] = unpack_bits(bits, tuple(shapes[name]))
        except ValueError as err:
            raise TicketError(f"{path.name}: mask {name!r}: {err}") from None
    return mask


# ------------------------------------------------------------------------------------------ compact encoding


def compact_tensors(dense: dict[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """Each masked tensor as the 1-D values its mask keeps; the others unchanged."""
    return {name: t[mask[name]].contiguous() if name in mask else t for name, t in dense.items()}


def dense_tensors(compact: dict[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """The inverse of :func:`compact_tensors`: zeros wherever the mask is 0."""
    missing = sorted(set(mask) - set(compact))
    if missing:
        raise TicketError(f"{COMPACT_FILE} lacks the pruned weight {missing[0]!r} named in {MASKS_FILE}")
    dense = {}
    for name, values in compact.items():
        if name not in mask:
            dense[name] = values
            continue
        m = mask[name]
        check_kept_values(name, tuple(values.shape), m)
        full = torch.zeros(m.shape, dtype=values.dtype)
        full[m] = values
        dense[name] = full
    return dense


def check_kept_values(name: str, shape: tuple[int, ...], mask: torch.Tensor) -> None:
    """A pruned weight in the compact file is the 1-D run of the values its mask keeps, nothing else."""
    kept = int(mask.sum())
    if len(shape) != 1:
        raise TicketError(
            f"{COMPACT_FILE}: {name!r} has shape {shape}; a pruned weight is stored as the 1-D run of the {kept} "
            f"values its mask keeps"
        )
    if shape[0] != kept:
        raise TicketError(
            f"{COMPACT_FILE}: {name!r} holds {shape[0]} values, its mask keeps {kept}; "
            f"the masks file belongs to a different ticket?"
        )


def save_compact(dense: dict[str, torch.Tensor], mask: Mask, path: Path) -> None:
    metadata = {"format": COMPACT_FORMAT, "format_version": str(FORMAT_VERSION)}
    atomic_save_tensors(compact_tensors(dense, mask), path, metadata=metadata)


def load_compact(path: Path, mask: Mask) -> dict[str, torch.Tensor]:
    compact, metadata = read_tensors(path)
    _check_format(path, metadata, COMPACT_FORMAT)
    return dense_tensors(compact, mask)


def dense_weight_files(folder: Path) -> list[Path]:
    """The file(s) ``save_pretrained`` wrote the weights to: one, or the shards its index names."""
    index = folder / DENSE_INDEX_FILE
    if not index.exists():
        return [folder / DENSE_FILE]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise TicketError(f"{index} is not a safetensors index (a JSON object with a weight_map)") from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:  # a name from JSON must not leave the folder
            raise TicketError(f"{DENSE_INDEX_FILE} names the shard {shard!r}, which is not a plain file name")
    return [folder / shard for shard in shards]


def read_dense_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor ``save_pretrained`` wrote into ``folder``, whether in one file or in shards."""
    tensors: dict[str, torch.Tensor] = {}
    for path in dense_weight_files(folder):
        tensors.update(read_tensors(path)[0])
    return tensors
