"""Block-wise fine-tuning of quantized grids: codes fixed, scales, zeros and biases tuned.

After GPTQ has chosen a block's codes, each quantized layer's ``D_hat = scale (codes - zero)`` is
still free in its per-row (or per-group) scale and zero, and the layer's bias is free too. This
module tunes those, and nothing else, so that the quantized block's output matches a target: the
full-precision block's output on the full-precision model's own inputs (the pipeline's second,
unquantized stream of activations), which also corrects error carried in from earlier blocks.
The codes, the recipes and the checkpoint format do not change, so every export form still
applies. The parameterisation is ``scale = s0 exp(a)``, ``zero = z0 + b``, ``bias = b0 + c``, with
``a, b, c`` starting at zero and tuned by Adam on the relative squared error of the block output.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .layer import FrameQuantLinear

log = logging.getLogger(__name__)

#: Adam step size of the log-scale, zero and bias offsets (relative units for the scale)
LEARNING_RATE = 1e-3


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _Tunable:
    """One layer's offsets; ``apply()`` puts the differentiable ``D_hat`` and bias in place."""

    def __init__(self, layer: FrameQuantLinear, dense: bool):
        self.layer = layer
        # dense: the step's W_hat = P_out D_hat P_in^T, two products per layer and step (cost set
        # by the layer's size); else the five steps per call (cost set by the activations, many
        # small operations). Both are differentiable in the offsets and give the same W_hat.
        self.bases = layer.bases_dense() if dense else None
        self.scale0 = layer.scale.detach().to(torch.float32)
        self.zero0 = layer.zero.detach().to(torch.float32)
        self.bias0 = None if layer.bias is None else layer.bias.detach().clone()
        self.log_scale = nn.Parameter(torch.zeros_like(self.scale0))
        self.zero_shift = nn.Parameter(torch.zeros_like(self.zero0))
        self.bias_shift = None if layer.bias is None else nn.Parameter(torch.zeros_like(self.bias0))

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.log_scale, self.zero_shift, self.bias_shift) if p is not None]

    def values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        scale = self.scale0 * torch.exp(self.log_scale)
        zero = self.zero0 + self.zero_shift
        bias = None if self.bias0 is None else self.bias0 + self.bias_shift
        return scale, zero, bias

    def apply(self) -> None:
        """Put a ``W_hat`` (dense) or ``D_hat`` (five steps) differentiable in the offsets in place."""
        scale, zero, bias = self.values()
        d_hat = self.layer.dequantized_codes(scale, zero)
        if self.bases is not None:
            self.layer.use_dense_weight(self._w_hat(d_hat))
        else:
            self.layer.use_dense_weight(None)
            self.layer._dequantized = d_hat
        if bias is not None:
            self.layer.bias = bias

    def _w_hat(self, d_hat: torch.Tensor) -> torch.Tensor:
        p_out, p_in = self.bases
        return p_out @ d_hat @ p_in.T

    def commit(self) -> None:
        """Store the tuned values (fp16 scale and zero, as the format keeps them); the pipeline's
        later passes run the stored grid's ``W_hat`` as one product (built once, from the bases
        already at hand)."""
        with torch.no_grad():
            scale, zero, bias = self.values()
            if bias is not None:
                self.layer.bias = bias.detach().clone()
            self.layer.use_dense_weight(None)  # set_grid then refreshes D_hat only
            self.layer.set_grid(scale, zero)
            self.layer.use_dense_weight(True if self.bases is None else self._w_hat(self.layer._dequantized))


def _relative_error(block: nn.Module, inputs: list[tuple], targets: list[torch.Tensor], indices) -> torch.Tensor:
    num = den = 0.0
    for i in indices:
        args, kwargs = inputs[i]
        out = _first(block(*args, **kwargs)).to(torch.float32)
        num = num + (out - targets[i]).pow(2).sum()
        den = den + targets[i].pow(2).sum()
    return num / den


def finetune_block(block: nn.Module, inputs: list[tuple], targets: list[torch.Tensor], steps: int,
                   batches_per_step: int = 8, lr: float = LEARNING_RATE, seed: int = 0,
                   dense: bool = True) -> tuple[float, float]:
    """Tune the grids of the ``FrameQuantLinear`` layers inside ``block`` for ``steps`` Adam steps.

    ``inputs``: the block's ``(args, kwargs)`` per calibration batch; ``targets``: the output it
    should give for each. Each step averages ``batches_per_step`` batches. Returns the relative
    squared error over all batches before and after; a tuning that ends worse is undone.
    ``dense``: each step builds the layers' dense ``W_hat`` (the default: on a GPU the five steps'
    many small operations cost several times more; on a CPU it is no slower); ``False`` runs the
    five steps instead (the same values up to rounding).
    """
    layers = [m for m in block.modules() if isinstance(m, FrameQuantLinear)]
    if steps <= 0 or not layers:
        return float("nan"), float("nan")
    tunables = [_Tunable(layer, dense) for layer in layers]
    params = [p for t in tunables for p in t.parameters()]
    everything = range(len(inputs))
    with torch.no_grad():
        before = float(_relative_error(block, inputs, targets, everything))
    optimizer = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                pick = torch.randperm(len(inputs), generator=gen)[:batches_per_step].tolist()
                optimizer.zero_grad(set_to_none=True)
                for t in tunables:
                    t.apply()
                loss = _relative_error(block, inputs, targets, pick)
                loss.backward()
                optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    saved = [(t.layer.scale.clone(), t.layer.zero.clone(), None if t.bias0 is None else t.bias0) for t in tunables]
    for t in tunables:
        t.commit()
    with torch.no_grad():
        after = float(_relative_error(block, inputs, targets, everything))
    if not after < before:  # keep the GPTQ grid when tuning did not help
        for t, (scale, zero, bias) in zip(tunables, saved):
            if bias is not None:
                t.layer.bias = bias
            t.layer.set_grid(scale, zero)
        after = before
    log.info("fine-tuned %d layers: block output relative error %.5f -> %.5f", len(layers), before, after)
    return before, after
