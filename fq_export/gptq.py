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
    return gptq_quantize_many([weight], [hessian], [grid], block_size, damp, act_order)[0]


def gptq_quantize_many(
    weights: list[torch.Tensor],
    hessians: list[torch.Tensor],
    grids: list[RowGrid],
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> list[torch.Tensor]:
    """:func:`gptq_quantize` of several problems of one shape at once, as one batch.

    Each problem keeps its own Hessian and grid and gets the codes it would get alone (up to
    float rounding); the column loop runs once for all of them, which is what costs on a GPU,
    where one problem's small operations leave it idle.
    """
    if not (len(weights) == len(hessians) == len(grids)) or not weights:
        raise ValueError("gptq_quantize_many needs as many Hessians and grids as weights, and at least one")
    shapes = {tuple(w.shape) for w in weights}
    if len(shapes) != 1:
        raise ValueError(f"problems of one batch must share a weight shape, got {sorted(shapes)}")
    bits, group = grids[0].bits, grids[0].group_size
    if any((g.bits, g.group_size) != (bits, group) for g in grids):
        raise ValueError("problems of one batch must share bits and group size")
    w = torch.stack([x.to(torch.float32) for x in weights])
    h = torch.stack([x.to(w.device, torch.float64) for x in hessians])
    cols = w.shape[2]
    if h.shape[1:] != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(h.shape[1:])} does not match {cols} weight columns")
    if group is not None and (act_order or block_size % group):
        raise ValueError(f"group size {group} needs act_order off and a block size that it divides ({block_size})")
    dead = torch.diagonal(h, dim1=1, dim2=2) == 0
    torch.diagonal(h, dim1=1, dim2=2).add_(dead.to(h.dtype))  # a dead input's diagonal becomes 1
    w.masked_fill_(dead[:, None, :], 0.0)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(h, dim1=1, dim2=2), dim=1, descending=True)
        w = w.gather(2, perm[:, None, :].expand_as(w))
        h = h.gather(1, perm[:, :, None].expand_as(h)).gather(2, perm[:, None, :].expand_as(h))
    diagonal = torch.diagonal(h, dim1=1, dim2=2)
    diagonal.add_(damp * diagonal.mean(1, keepdim=True))
    # Upper Cholesky factor of H^-1: row i holds the update weights for column i.
    eye = torch.eye(cols, dtype=h.dtype, device=h.device).expand_as(h)
    lower_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(h), eye, upper=False)
    del h
    hinv = torch.linalg.cholesky(lower_inv.mT @ lower_inv, upper=True).to(torch.float32)
    del lower_inv
    scale = torch.stack([g.scale.to(w)[:, 0] for g in grids])
    zero = torch.stack([g.zero.to(w)[:, 0] for g in grids])
    maxq = grids[0].maxq
    group_scales, group_zeros = [], []
    codes = torch.zeros_like(w)
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block = w[:, :, start:stop].clone()
        errors = torch.zeros_like(block)
        hblock = hinv[:, start:stop, start:stop]
        for i in range(stop - start):
            if group is not None and (start + i) % group == 0:
                s, z = fit_min_max(block[:, :, i:i + group], bits)
                scale, zero = s[:, :, 0], z[:, :, 0]
                group_scales.append(s)
                group_zeros.append(z)
            column = block[:, :, i]
            q = torch.clamp(torch.round(column / scale) + zero, 0, maxq)
            codes[:, :, start + i] = q
            err = (column - scale * (q - zero)) / hblock[:, i, i, None]
            block[:, :, i:].baddbmm_(err[:, :, None], hblock[:, i:i + 1, i:], alpha=-1.0)
            errors[:, :, i] = err
        w[:, :, stop:] -= errors @ hinv[:, start:stop, stop:]
    if perm is not None:
        codes = codes.gather(2, torch.argsort(perm, dim=1)[:, None, :].expand_as(codes))
    if group is not None:
        for k, g in enumerate(grids):
            g.scale = torch.cat([s[k] for s in group_scales], 1).to(g.scale)
            g.zero = torch.cat([z[k] for z in group_zeros], 1).to(g.zero)
    return list(codes.unbind(0))
