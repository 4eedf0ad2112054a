"""Boolean masks as packed bits: 1 bit per weight instead of torch's 1 byte (8x smaller files).

Bits are packed little-endian within each byte (like ``numpy.packbits(..., bitorder="little")``) over the mask
flattened in C order; the last byte is zero-padded.
"""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_size(numel: int) -> int:
    return (numel + 7) // 8


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor of any shape -> 1-D uint8 tensor of ``packed_size(mask.numel())`` bytes."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_bits takes a bool tensor, got {mask.dtype}")
    flat = mask.detach().reshape(-1).to(torch.uint8)
    pad = packed_size(flat.numel()) * 8 - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: a bool tensor of ``shape``; raises if the byte count does not fit it."""
    numel = 1
    for dim in shape:
        numel *= dim
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_size(numel):
        raise ValueError(
            f"packed mask has {packed.numel()} {packed.dtype} values; shape {tuple(shape)} needs "
            f"{packed_size(numel)} uint8 bytes"
        )
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:numel].bool().reshape(shape)
