"""The packed layout of b-bit codes: defined once here, read by PyTorch, ONNX and CUDA.

Layout version 1 (``LAYOUT_VERSION``), for ``bits`` in {2, 3, 4, 8}:

* Codes form a ``rows x cols`` matrix of unsigned integers in ``[0, 2**bits)``.
* Each row is padded with zero codes to a multiple of ``GROUP = 32`` columns.
* Each group of 32 consecutive codes of a row is stored in ``bits`` consecutive 32-bit
  words (so a group always ends on a word boundary, for every bit width).
* Inside a group, the ``bits`` words are read as one little-endian integer of ``32 * bits``
  bits (word 0 holds bits 0..31); code ``j`` of the group (0 <= j < 32) occupies bits
  ``[bits * j, bits * j + bits)`` of it. For bits in {2, 4, 8} no code crosses a word; for
  bits = 3, codes 10 and 21 straddle two words.
* The packed tensor has shape ``(rows, words_per_row(cols, bits))`` and dtype int32 (the
  bits of uint32; int32 because ONNX initializers and torch prefer it).

So code ``(r, c)`` lives in word ``r * W + (c // 32) * bits + (bits * (c % 32)) // 32`` at bit
``(bits * (c % 32)) % 32``, spilling into the next word when that offset exceeds ``32 - bits``.
``code_location`` returns exactly these numbers; the CUDA kernels and the ONNX unpacking
subgraph implement the same formula and tests pin them to ``unpack_codes``.
"""
from __future__ import annotations

import numpy as np
import torch

LAYOUT_VERSION = 1
GROUP = 32
SUPPORTED_BITS = (2, 3, 4, 8)


def check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; choose one of {SUPPORTED_BITS}")
    return bits


def words_per_row(cols: int, bits: int) -> int:
    """Number of 32-bit words holding one row of ``cols`` codes."""
    check_bits(bits)
    return -(-cols // GROUP) * bits


def code_location(col: int, bits: int) -> tuple[int, int]:
    """(word index within the row, bit offset within that word) of code ``col``."""
    bit = bits * (col % GROUP)
    return (col // GROUP) * bits + bit // 32, bit % 32


def group_tables(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position j in a group: low word, high word (clamped into the group), shift.

    A code is ``((word[lo] | word[hi] << 32) >> shift) & (2**bits - 1)``; the ONNX
    unpacking subgraph gathers with these tables.
    """
    check_bits(bits)
    j = np.arange(GROUP)
    lo = (bits * j) // 32
    hi = np.minimum(lo + 1, bits - 1)
    shift = (bits * j) % 32
    return lo.astype(np.int64), hi.astype(np.int64), shift.astype(np.int64)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a ``(rows, cols)`` integer tensor of codes into ``(rows, words_per_row)`` int32."""
    check_bits(bits)
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (rows, cols), got shape {tuple(codes.shape)}")
    codes = codes.to(torch.int64)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) for bits={bits}")
    rows, cols = codes.shape
    groups = -(-cols // GROUP)
    padded = torch.zeros(rows, groups * GROUP, dtype=torch.int64, device=codes.device)
    padded[:, :cols] = codes
    padded = padded.view(rows, groups, GROUP)
    lo, _, shift = (torch.as_tensor(t, device=codes.device) for t in group_tables(bits))
    # Accumulate the group's 32*bits-bit integer word by word, in int64 halves.
    words = torch.zeros(rows, groups, bits, dtype=torch.int64, device=codes.device)
    low_part = (padded << shift) & 0xFFFFFFFF
    words.index_add_(2, lo, low_part)
    spill = shift + bits > 32
    if bool(spill.any()):
        idx = torch.nonzero(spill).flatten()
        words.index_add_(2, lo[idx] + 1, padded[:, :, idx] >> (32 - shift[idx]))
    # Codes never overlap, so the sums above equal bitwise ORs; map to int32 bit patterns.
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.view(rows, groups * bits).to(torch.int32)


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: ``(rows, words_per_row)`` int32 -> ``(rows, cols)`` int64."""
    check_bits(bits)
    if packed.dim() != 2:
        raise ValueError(f"packed codes must be 2-D, got shape {tuple(packed.shape)}")
    rows, width = packed.shape
    if width != words_per_row(cols, bits):
        raise ValueError(
            f"packed width {width} does not match {cols} columns at {bits} bits "
            f"(expected {words_per_row(cols, bits)} words per row)"
        )
    groups = width // bits
    words = packed.to(torch.int64).view(rows, groups, bits) & 0xFFFFFFFF
    lo, hi, shift = (torch.as_tensor(t, device=packed.device) for t in group_tables(bits))
    wide = words[:, :, lo] | (words[:, :, hi] << 32)
    codes = (wide >> shift) & (2**bits - 1)
    return codes.view(rows, groups * GROUP)[:, :cols]


def packed_bytes(rows: int, cols: int, bits: int) -> int:
    return rows * words_per_row(cols, bits) * 4
