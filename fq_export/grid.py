"""Per-row asymmetric b-bit grids and row clipping.

A row ``w`` with scale ``s`` and zero point ``z`` (both stored as fp16) has codes
``q = clamp(round(w / s) + z, 0, 2**b - 1)`` and dequantized values ``s * (q - z)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def clip_rows(weight: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """Clip each row to ``mean +- sigma * std`` of that row (no-op when ``sigma`` is None)."""
    if sigma is None:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    std = weight.std(dim=1, keepdim=True, unbiased=False)
    return torch.maximum(torch.minimum(weight, mean + sigma * std), mean - sigma * std)


@dataclass
class RowGrid:
    """Per-row scale and zero point, ``(rows, 1)`` float tensors holding fp16 values."""

    scale: torch.Tensor
    zero: torch.Tensor
    bits: int

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    @staticmethod
    def fit(weight: torch.Tensor, bits: int) -> "RowGrid":
        """Min/max grid of each row (the range always contains 0, as in GPTQ)."""
        maxq = 2**bits - 1
        lo = torch.clamp(weight.min(dim=1, keepdim=True).values, max=0)
        hi = torch.clamp(weight.max(dim=1, keepdim=True).values, min=0)
        flat = (hi - lo) == 0
        lo = torch.where(flat, lo - 1, lo)
        hi = torch.where(flat, hi + 1, hi)
        # Round the scale to fp16 first, so the grid used here is the stored one.
        scale = ((hi - lo) / maxq).to(torch.float16).to(weight.dtype)
        scale = torch.where(scale == 0, torch.full_like(scale, 2.0**-24), scale)
        zero = torch.clamp(torch.round(-lo / scale), 0, maxq)
        return RowGrid(scale, zero, bits)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(weight / self.scale) + self.zero, 0, self.maxq)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.scale * (codes - self.zero)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.codes(weight))
