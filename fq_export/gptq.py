"""GPTQ (Frantar et al. 2022) on an arbitrary basis: the algorithm alone.

``gptq_quantize(weight, hessian, grid)`` rounds ``weight`` (``rows x cols``) column by column
onto ``grid``, feeding each column's rounding error forward through the inverse Hessian
(``cols x cols``) so that ``tr((W - Q) H (W - Q)^T)`` stays small. In FrameQuant the
"weight" is ``D = P_out^T W P_in`` and the Hessian is ``P_in^T X X^T P_in``, which is
rank-deficient when the frame is redundant; damping makes it invertible.

With a grouped grid (``grid.group_size``), each group's scale and zero are fitted when GPTQ
reaches the group's first column, from the columns as earlier rounding errors left them (the
"dynamic groups" of GPTQ's reference code); the fitted values are written back into ``grid``.
"""
from __future__ import annotations

import torch

from .grid import RowGrid, fit_min_max


class HessianAccumulator:
    """Accumulates ``X X^T`` (float64) over batches of layer inputs ``(..., n)``."""

    def __init__(self, dim: int, device=None):
        self.dim = dim
        self.sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        if inputs.shape[-1] != self.dim:
            raise ValueError(f"Hessian of size {self.dim} got inputs with last axis {inputs.shape[-1]}")
        x = inputs.reshape(-1, self.dim).to(self.sum.device, torch.float64)
        self.sum.addmm_(x.T, x)
        self.count += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """``X X^T / N`` (the mean, so that damping is scale-free)."""
        if self.count == 0:
            raise ValueError("no calibration inputs were seen for this layer")
        return self.sum / self.count


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    grid: RowGrid,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> torch.Tensor:
    """Codes (``rows x cols``, float holding integers) of ``weight`` on ``grid`` by GPTQ."""
    w = weight.clone().to(torch.float32)
    h = hessian.clone().to(torch.float64)
    cols = w.shape[1]
    if h.shape != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(h.shape)} does not match {cols} weight columns")
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    group = grid.group_size
    if group is not None and (act_order or block_size % group):
        raise ValueError(f"group size {group} needs act_order off and a block size that it divides ({block_size})")
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
    # Upper Cholesky factor of H^-1: row i holds the update weights for column i.
    eye = torch.eye(cols, dtype=h.dtype, device=h.device)
    lower_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(h), eye, upper=False)
    hinv = torch.linalg.cholesky(lower_inv.T @ lower_inv, upper=True)
    hinv = hinv.to(torch.float32)
    scale, zero = grid.scale.to(w)[:, 0], grid.zero.to(w)[:, 0]
    group_scales, group_zeros = [], []
    codes = torch.zeros_like(w)
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        hblock = hinv[start:stop, start:stop]
        for i in range(stop - start):
            if group is not None and (start + i) % group == 0:
                s, z = fit_min_max(block[:, i:i + group], grid.bits)
                scale, zero = s[:, 0], z[:, 0]
                group_scales.append(s)
                group_zeros.append(z)
            column = block[:, i]
            q = torch.clamp(torch.round(column / scale) + zero, 0, grid.maxq)
            codes[:, start + i] = q
            err = (column - scale * (q - zero)) / hblock[i, i]
            block[:, i:].addr_(err, hblock[i, i:], alpha=-1.0)
            errors[:, i] = err
        w[:, stop:] -= errors @ hinv[start:stop, stop:]
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    if group is not None:
        grid.scale = torch.cat(group_scales, 1).to(grid.scale)
        grid.zero = torch.cat(group_zeros, 1).to(grid.zero)
    return codes
