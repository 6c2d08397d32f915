"""The selection gate of :meth:`SparseAutoencoder.pooled_concepts` kept as 1 bit per (token, feature)."""

from __future__ import annotations

import sys

import torch

__all__ = ["_pack_bits", "_unpack_columns"]

# Multiplying eight 0/1 bytes (one int64, little-endian) by this gathers them into the top byte: byte k -> bit 56 + k.
_GATHER_BITS = 0x0102040810204080


def _pack_bits(member: torch.Tensor, little_endian: bool = sys.byteorder == "little") -> torch.Tensor:
    """(c, d) bool -> (c, ceil(d / 8)) uint8; bit k of byte i is column 8 i + k (the selection's gate, 1 bit each)."""
    rows, cols = member.shape
    flags = member.contiguous().view(torch.uint8)  # (c, d) 0/1
    if cols % 8:
        flags = torch.nn.functional.pad(flags, (0, 8 - cols % 8))  # (c, 8 * ceil(d / 8))
    flags = flags.reshape(rows, -1, 8)  # (c, d / 8, 8)
    if little_endian:  # one multiply per 8 flags; int64 products wrap, only the top byte is read
        words = flags.view(torch.int64).squeeze(-1)  # (c, d / 8)
        return ((words * _GATHER_BITS) >> 56).bitwise_and_(0xFF).to(torch.uint8)
    packed = flags[..., 0].clone()  # (c, d / 8)
    for k in range(1, 8):
        packed |= flags[..., k] << k
    return packed


def _unpack_columns(packed: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Read columns back from [`_pack_bits`]: (c, ceil(d / 8)) uint8, (N,) long -> (c, N) bool."""
    shifts = (columns & 7).to(torch.uint8)  # (N,)
    return ((packed[:, columns >> 3] >> shifts) & 1).to(torch.bool)  # (c, N)
