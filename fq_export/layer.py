"""The quantized linear layer and the routine that makes one from an ``nn.Linear``.

``FrameQuantLinear`` stores only what docs/design.md ("What a quantized layer stores") lists: packed codes of ``D_hat``,
per-row fp16 scale and zero, the bias, and the recipes of both sides (rotation seeds, frame
triples), bits and the packing layout version. Its forward pass runs the five steps

    u = R_in^T x;  c = T_in^T u;  z = D_hat c;  v = T_out z;  y = R_out v + b

with fast transforms, never a dense ``W``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import packing
from .basis import SideBasis, SideRecipe
from .config import QuantConfig
from .gptq import gptq_quantize_many
from .grid import RowGrid, check_group_size, clip_rows, expand_groups, num_groups


class FrameQuantLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear(in_features, out_features)``.

    Shapes: ``x (..., in_features) -> y (..., out_features)``. Dense equivalent:
    ``y = x @ (P_out D_hat P_in^T).T + bias``.
    """

    def __init__(
        self,
        in_recipe: SideRecipe,
        out_recipe: SideRecipe,
        bits: int,
        packed_codes: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        bias: torch.Tensor | None,
        method: str = "framequant",
        layout_version: int = packing.LAYOUT_VERSION,
        group_size: int | None = None,
    ):
        super().__init__()
        packing.check_bits(bits)
        check_group_size(group_size)
        if layout_version != packing.LAYOUT_VERSION:
            raise ValueError(f"packing layout version {layout_version} is not supported "
                             f"(this fq-export reads version {packing.LAYOUT_VERSION})")
        self.in_recipe, self.out_recipe = in_recipe, out_recipe
        self.in_features, self.out_features = in_recipe.dim, out_recipe.dim
        self.bits, self.method, self.layout_version = bits, method, layout_version
        self.group_size = group_size
        rows, cols = out_recipe.size, in_recipe.size
        groups = num_groups(cols, group_size)
        expected = (rows, packing.words_per_row(cols, bits))
        if tuple(packed_codes.shape) != expected:
            raise ValueError(f"packed codes of shape {tuple(packed_codes.shape)} do not match "
                             f"{rows}x{cols} codes at {bits} bits (expected {expected})")
        if scale.numel() != rows * groups or zero.numel() != rows * groups:
            raise ValueError(f"scale/zero must have {rows * groups} entries ({rows} rows x {groups} groups), "
                             f"got {scale.numel()} and {zero.numel()}")
        if bias is not None and bias.numel() != self.out_features:
            raise ValueError(f"bias must have {self.out_features} entries, got {bias.numel()}")
        self.register_buffer("packed_codes", packed_codes.to(torch.int32).contiguous())
        shape = (rows,) if group_size is None else (rows, groups)
        self.register_buffer("scale", scale.reshape(shape).to(torch.float16))
        self.register_buffer("zero", zero.reshape(shape).to(torch.float16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.in_basis, self.out_basis = SideBasis(in_recipe), SideBasis(out_recipe)
        # Dequantized D_hat, derived from the stored codes once (not saved).
        self.register_buffer("_dequantized", self.dequantized_codes(), persistent=False)
        # W_hat while calibration runs (``use_dense_weight``): one dense product per call.
        self._dense_w: torch.Tensor | None = None

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(K_out, K_in)``: the shape of ``D_hat``."""
        return self.out_recipe.size, self.in_recipe.size

    def codes(self) -> torch.Tensor:
        return packing.unpack_codes(self.packed_codes, self.bits, self.in_recipe.size)

    def dequantized_codes(self, scale: torch.Tensor | None = None, zero: torch.Tensor | None = None,
                          codes: torch.Tensor | None = None) -> torch.Tensor:
        """``D_hat = scale * (codes - zero)`` (``K_out x K_in``, float32), each row's or group's own.

        ``scale`` and ``zero`` default to the stored ones; others of the same shape (fine-tuning
        passes float32 parameters) give a ``D_hat`` that is differentiable in them. ``codes``: the
        unpacked codes as float32, when the caller holds them (else unpacked here).
        """
        cols = self.in_recipe.size
        scale = expand_groups((self.scale if scale is None else scale).to(torch.float32), cols, self.group_size)
        zero = expand_groups((self.zero if zero is None else zero).to(torch.float32), cols, self.group_size)
        return scale * ((self.codes().to(torch.float32) if codes is None else codes) - zero)

    def set_grid(self, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """Replace the stored scale and zero (rounded to fp16, as stored) and refresh ``D_hat``."""
        if not (torch.isfinite(scale).all() and torch.isfinite(zero).all()):
            raise ValueError("scale and zero must be finite")
        self.scale.copy_(scale.detach().to(self.scale))
        self.zero.copy_(zero.detach().to(self.zero))
        self._dequantized = self.dequantized_codes()
        if self._dense_w is not None:
            self.use_dense_weight(True)

    def bases_dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_out, P_in)`` as dense float32 tensors on the layer's device."""
        device = self.packed_codes.device
        return self.out_basis.dense_tensor(device), self.in_basis.dense_tensor(device)

    def use_dense_weight(self, weight: torch.Tensor | bool | None) -> None:
        """Run ``forward`` as one dense product with ``W_hat`` (``True``: computed from the stored
        grid; a tensor: that one, e.g. differentiable in a tuned grid) or, with ``None``/``False``,
        as the five steps again. The pipeline uses it while later blocks are calibrated."""
        if weight is True:
            p_out, p_in = self.bases_dense()
            weight = p_out @ self._dequantized @ p_in.T
        self._dense_w = weight if isinstance(weight, torch.Tensor) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self._dense_w is not None:
            return torch.nn.functional.linear(x.to(torch.float32), self._dense_w, self.bias).to(dtype)
        c = self.in_basis.to_frame(x.to(torch.float32))  # steps 1-2
        z = c @ self._dequantized.T  # step 3
        y = self.out_basis.from_frame(z)  # steps 4-5
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype)

    def dense_weight(self) -> torch.Tensor:
        """``W_hat = P_out D_hat P_in^T`` (``out x in``, float64), for tests and debugging."""
        d_hat = self._dequantized.to(torch.float64).cpu()
        left = self.out_basis.from_frame(d_hat.T).T  # P_out D_hat: (out, K_in)
        return self.in_basis.from_frame(left)  # rows b -> P_in b: (out, in)

    @property
    def code_bits(self) -> int:
        """Bits of everything stored per layer besides the bias: packed codes + fp16 scale/zero."""
        return self.packed_codes.numel() * 32 + 16 * (self.scale.numel() + self.zero.numel())

    @property
    def effective_bits(self) -> float:
        """``(stored code bits + 32 K_out) / (m n)``, padding of the packed rows included."""
        return self.code_bits / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        k_out, k_in = self.frame_shape
        group = "" if self.group_size is None else f", group_size={self.group_size}"
        return (f"in={self.in_features}, out={self.out_features}, frame={k_out}x{k_in}, bits={self.bits}{group}, "
                f"method={self.method}, effective_bits={self.effective_bits:.3f}")

    def metadata(self) -> dict:
        return {
            "in": self.in_recipe.to_dict(),
            "out": self.out_recipe.to_dict(),
            "bits": self.bits,
            "method": self.method,
            "layout_version": self.layout_version,
            "has_bias": self.bias is not None,
            "group_size": self.group_size,
        }


@dataclass
class LayerStats:
    name: str
    method: str
    redundancy_in: float
    redundancy_out: float
    bits: int
    effective_bits: float
    frame_proxy_loss: float  # ||(D - D_hat) C||^2 / ||D C||^2 on the calibration Hessian
    seconds: float


def side_recipes(config: QuantConfig, in_features: int, out_features: int, name: str):
    r_in = config.redundancy if config.use_frames else None
    r_out = (config.redundancy if config.redundancy_side == "both" else 1.0) if config.use_frames else None
    return (
        SideRecipe.make(in_features, config.rotate, r_in, config.layer_seed(name, "in")),
        SideRecipe.make(out_features, config.rotate, r_out, config.layer_seed(name, "out")),
    )


def quantize_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    hessian: torch.Tensor | None,
    config: QuantConfig,
    name: str = "layer",
) -> tuple[FrameQuantLinear, LayerStats]:
    """Quantize ``W`` (``out x in``) with ``config``; ``hessian`` is ``X X^T / N`` (``in x in``).

    The Hessian may be ``None`` only for RTN. Computation is float64 on the weight's device.
    """
    return quantize_linears([LinearJob(name, weight, bias, hessian, config)])[0]


@dataclass
class LinearJob:
    """One layer for :func:`quantize_linears`: what :func:`quantize_linear` takes."""
    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    hessian: torch.Tensor | None
    config: QuantConfig


@dataclass
class _FrameProblem:
    job: LinearJob
    in_recipe: SideRecipe
    out_recipe: SideRecipe
    d: torch.Tensor  # D = P_out^T W P_in (float64)
    h_frame: torch.Tensor | None  # P_in^T H P_in
    d_clipped: torch.Tensor
    grid: RowGrid
    seconds: float


def _frame_problem(job: LinearJob) -> _FrameProblem:
    start = time.perf_counter()
    config, name = job.config, job.name
    out_features, in_features = job.weight.shape
    if config.use_gptq and job.hessian is None:
        raise ValueError(f"layer {name}: method {config.method} needs calibration inputs (a Hessian)")
    in_recipe, out_recipe = side_recipes(config, in_features, out_features, name)
    in_basis, out_basis = SideBasis(in_recipe), SideBasis(out_recipe)
    w = job.weight.detach().to(torch.float64)
    # D = P_out^T W P_in with fast transforms: rows of W through P_in^T, then columns through P_out^T.
    d = out_basis.to_frame(in_basis.to_frame(w).T).T
    h_frame = None
    if job.hessian is not None:
        h = job.hessian.to(w.device, torch.float64)
        h_frame = in_basis.to_frame(in_basis.to_frame(h).T)  # P_in^T H P_in
    d_clipped = clip_rows(d, config.effective_clip)
    grid = RowGrid.fit(d_clipped, config.bits, config.group_size)
    return _FrameProblem(job, in_recipe, out_recipe, d, h_frame, d_clipped, grid, time.perf_counter() - start)


def _finish(problem: _FrameProblem, codes: torch.Tensor) -> tuple[FrameQuantLinear, LayerStats]:
    job, config, grid, d = problem.job, problem.job.config, problem.grid, problem.d
    layer = FrameQuantLinear(
        problem.in_recipe, problem.out_recipe, config.bits,
        packing.pack_codes(codes.to(torch.int64).cpu(), config.bits),
        grid.scale.cpu(), grid.zero.cpu(),
        None if job.bias is None else job.bias.detach().cpu(), method=config.label, group_size=config.group_size,
    ).to(job.weight.device)
    proxy = math.nan
    if problem.h_frame is not None:
        err = (d - layer.dequantized_codes().to(d))
        h = problem.h_frame
        # tr(E H E^T) as sum((E H) * E): one product instead of two
        proxy = float(((err @ h) * err).sum() / ((d @ h) * d).sum().clamp_min(1e-300))
    stats = LayerStats(job.name, config.label, problem.in_recipe.redundancy, problem.out_recipe.redundancy,
                       config.bits, layer.effective_bits, proxy, 0.0)
    return layer, stats


def quantize_linears(jobs: list[LinearJob], batch: bool | None = None) -> list[tuple[FrameQuantLinear, LayerStats]]:
    """:func:`quantize_linear` of every job, in order. With ``batch`` (default: on a GPU; a CPU
    gains no speed from it, its operations not being launch-bound, and would hold every problem
    of a batch in memory at once), jobs of one weight shape and one recipe go through GPTQ as one
    batch (:func:`gptq_quantize_many`). Each layer's ``seconds`` is its own transforms and
    packing plus an equal share of its batch's GPTQ."""
    batches: dict[tuple, list[int]] = {}
    for index, job in enumerate(jobs):
        together = job.weight.device.type != "cpu" if batch is None else batch
        # one weight shape and one recipe (seeds aside) give one frame-space shape
        key = (tuple(job.weight.shape), job.weight.device, dataclasses.replace(job.config, seed=0))
        batches.setdefault(key + (() if together else (index,)), []).append(index)
    out: list = [None] * len(jobs)
    for indices in batches.values():
        problems = [_frame_problem(jobs[i]) for i in indices]
        start = time.perf_counter()
        config = jobs[indices[0]].config
        if config.use_gptq:
            found = gptq_quantize_many([p.d_clipped for p in problems], [p.h_frame for p in problems],
                                       [p.grid for p in problems], config.block_size, config.damp, config.act_order)
        else:
            found = [p.grid.codes(p.d_clipped) for p in problems]
        share = (time.perf_counter() - start) / len(indices)
        for index, problem, codes in zip(indices, problems, found):
            start = time.perf_counter()
            layer, stats = _finish(problem, codes)
            stats.seconds = problem.seconds + share + time.perf_counter() - start
            out[index] = (layer, stats)
    return out


def relative_output_error(weight: torch.Tensor, weight_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||W X - W_hat X||_F^2 / ||W X||_F^2`` from ``H = X X^T / N`` of (held-out) inputs."""
    w = weight.to(torch.float64)
    err = w - weight_hat.to(w)
    h = hessian.to(w)
    return float(torch.trace(err @ h @ err.T) / torch.trace(w @ h @ w.T))
