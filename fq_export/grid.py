"""Asymmetric b-bit grids (per row, or per group of columns within a row) and row clipping.

A row ``w`` with scale ``s`` and zero point ``z`` (both stored as fp16) has codes
``q = clamp(round(w / s) + z, 0, 2**b - 1)`` and dequantized values ``s * (q - z)``. With a
group size ``g``, columns ``[j g, (j + 1) g)`` of a row share the ``j``-th scale and zero
(``ceil(cols / g)`` groups; the last one may be short); without one, the whole row shares one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: group sizes accepted for group-wise scales (also the MatMulNBits block sizes of the packed form)
GROUP_SIZES = (32, 64, 128)


def check_group_size(group_size: int | None) -> None:
    if group_size is not None and group_size not in GROUP_SIZES:
        raise ValueError(f"group size must be one of {GROUP_SIZES} (or none for per-row scales), got {group_size}")


def num_groups(cols: int, group_size: int | None) -> int:
    return 1 if group_size is None else -(-cols // group_size)


def expand_groups(values: torch.Tensor, cols: int, group_size: int | None) -> torch.Tensor:
    """``(rows, groups)`` -> ``(rows, cols)``: each group's value repeated over its columns."""
    values = values.reshape(values.shape[0], -1)
    if group_size is None:
        return values.expand(-1, cols)
    return values.repeat_interleave(group_size, dim=1)[:, :cols]


def clip_rows(weight: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """Clip each row to ``mean +- sigma * std`` of that row (no-op when ``sigma`` is None)."""
    if sigma is None:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    std = weight.std(dim=1, keepdim=True, unbiased=False)
    return torch.maximum(torch.minimum(weight, mean + sigma * std), mean - sigma * std)


def fit_min_max(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero of each row of ``weight`` (``(..., rows, 1)``; the range always holds 0)."""
    maxq = 2**bits - 1
    lo = torch.clamp(weight.min(dim=-1, keepdim=True).values, max=0)
    hi = torch.clamp(weight.max(dim=-1, keepdim=True).values, min=0)
    flat = (hi - lo) == 0
    lo = torch.where(flat, lo - 1, lo)
    hi = torch.where(flat, hi + 1, hi)
    # Round the scale to fp16 first, so the grid used here is the stored one.
    scale = ((hi - lo) / maxq).to(torch.float16).to(weight.dtype)
    scale = torch.where(scale == 0, torch.full_like(scale, 2.0**-24), scale)
    zero = torch.clamp(torch.round(-lo / scale), 0, maxq)
    return scale, zero


@dataclass
class RowGrid:
    """Scale and zero point per row (``(rows, 1)``) or per group (``(rows, groups)``), fp16 values."""

    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int | None = None

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    @staticmethod
    def fit(weight: torch.Tensor, bits: int, group_size: int | None = None) -> "RowGrid":
        """Min/max grid of each row, or of each group of ``group_size`` columns of a row."""
        check_group_size(group_size)
        if group_size is None:
            scale, zero = fit_min_max(weight, bits)
            return RowGrid(scale, zero, bits)
        parts = [fit_min_max(weight[:, j:j + group_size], bits) for j in range(0, weight.shape[1], group_size)]
        return RowGrid(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), bits, group_size)

    def _expanded(self, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        return expand_groups(self.scale, cols, self.group_size), expand_groups(self.zero, cols, self.group_size)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zero = self._expanded(weight.shape[1])
        return torch.clamp(torch.round(weight / scale) + zero, 0, self.maxq)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        scale, zero = self._expanded(codes.shape[1])
        return scale * (codes - zero)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.codes(weight))
