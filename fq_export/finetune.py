"""Block-wise fine-tuning of quantized grids: codes fixed, scales, zeros and biases tuned.

After GPTQ has chosen a block's codes, each quantized layer's ``D_hat = scale (codes - zero)`` is
still free in its per-row (or per-group) scale and zero, and the layer's bias is free too. This
module tunes those, and nothing else, so that the quantized block's output matches a target: the
full-precision block's output on the full-precision model's own inputs (the pipeline's second,
unquantized stream of activations), which also corrects error carried in from earlier blocks.
The codes, the recipes and the checkpoint format do not change, so every export form still
applies. The parameterisation is ``scale = s0 exp(a)``, ``zero = z0 + b``, ``bias = b0 + c``, with
``a, b, c`` starting at zero and tuned by Adam on the relative squared error of the block output.

:func:`finetune_chain` then tunes every block's offsets at once, end to end, against the
full-precision model's last block output (for a causal LM: the KL divergence of the next-token
distributions that the model's head gives both); with that loss it also tunes the blocks' norm
weights (:func:`norm_modules`), full-precision parameters that checkpoints then carry
(:func:`tuned_parameters`). A step runs its batches as one stacked batch when their shapes agree
(equal-length windows), and lets float32 products run in TF32 on GPUs.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from .layer import FrameQuantLinear

log = logging.getLogger(__name__)

#: Adam step size of the log-scale, zero and bias offsets (relative units for the scale) and of
#: the norm weights that the end-to-end pass of a causal LM tunes
LEARNING_RATE = 1e-3
#: attribute that marks a module whose parameters tuning changed (see :func:`tuned_parameters`)
TUNED = "fq_tuned"


def norm_modules(blocks: list[nn.Module]) -> list[nn.Module]:
    """The normalization layers inside ``blocks`` that hold a weight (LayerNorm, RMSNorm)."""
    return [m for block in blocks for m in block.modules()
            if type(m).__name__.endswith(("LayerNorm", "RMSNorm")) and isinstance(getattr(m, "weight", None), nn.Parameter)]


def tuned_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full-precision parameters that fine-tuning changed (by qualified name): what a
    checkpoint has to carry besides the quantized layers."""
    return {f"{name}.{pname}" if name else pname: p.detach()
            for name, module in model.named_modules() if getattr(module, TUNED, False)
            for pname, p in module.named_parameters(recurse=False)}


def first_output(out):
    """A block's output tensor (transformer blocks may return a tuple that starts with it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def next_args(block: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """The next block's positional arguments in a chained model: ``block``'s output in place of
    its first argument, the rest (masks, positions) as they were."""
    return (first_output(block(*args, **kwargs)),) + tuple(args[1:])


class _Tunable:
    """One layer's offsets; ``apply()`` puts the differentiable ``D_hat`` and bias in place."""

    def __init__(self, layer: FrameQuantLinear, dense: bool):
        self.layer = layer
        # dense: the step's W_hat = P_out D_hat P_in^T, two products per layer and step (cost set
        # by the layer's size); else the five steps per call (cost set by the activations, many
        # small operations). Both are differentiable in the offsets and give the same W_hat.
        self.bases = layer.bases_dense() if dense else None
        self.codes = layer.codes().to(torch.float32)  # unpacked once, not at every step
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
        d_hat = self.layer.dequantized_codes(scale, zero, self.codes)
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

    def finite(self) -> bool:
        return all(bool(torch.isfinite(v).all()) for v in self.values() if v is not None)

    def commit(self, values: tuple | None = None) -> None:
        """Store the tuned values, or ``values`` (scale, zero, bias) given (fp16 scale and zero,
        as the format keeps them); the pipeline's later passes run the stored grid's ``W_hat``
        as one product (built once, from the bases already at hand)."""
        with torch.no_grad():
            scale, zero, bias = self.values() if values is None else values
            if bias is not None:
                self.layer.bias = bias.detach().clone()
            self.layer.use_dense_weight(None)  # set_grid then refreshes D_hat only
            self.layer.set_grid(scale, zero)
            self.layer.use_dense_weight(True if self.bases is None else self._w_hat(self.layer._dequantized))


def _stack(items: list[tuple]) -> tuple | None:
    """Several batches' ``(args, kwargs)`` as one batch: tensors of batch size 1 concatenated,
    everything else equal across them; ``None`` where they do not stack (lengths differ)."""
    def merge(values):
        first = values[0]
        if torch.is_tensor(first):
            if not all(torch.is_tensor(v) and v.shape == first.shape for v in values):
                raise ValueError
            if first.dim() and first.shape[0] == 1:
                return torch.cat(values)
            if all(torch.equal(v, first) for v in values[1:]):
                return first
            raise ValueError
        if isinstance(first, (tuple, list)):
            if not all(isinstance(v, type(first)) and len(v) == len(first) for v in values):
                raise ValueError
            return type(first)(merge([v[i] for v in values]) for i in range(len(first)))
        if isinstance(first, dict):
            if not all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
                raise ValueError
            return {k: merge([v[k] for v in values]) for k in first}
        if all(v is first or v == first for v in values):
            return first
        raise ValueError
    if len(items) == 1:
        return items[0]
    try:
        return merge([args for args, _ in items]), merge([kwargs for _, kwargs in items])
    except (ValueError, RuntimeError):
        return None


def relative_squared_error(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum |out - target|^2, sum |target|^2)``: summed over batches, their ratio is the loss."""
    return (out - target).pow(2).sum(), target.pow(2).sum()


def next_token_kl(head: Callable[[torch.Tensor], torch.Tensor]):
    """``(sum over tokens of KL(teacher || model), number of tokens)``, with the model's head
    (final norm and output layer) turning the last block's output and the target into logits."""
    def terms(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        with torch.no_grad():
            teacher = torch.log_softmax(head(target).to(torch.float32), dim=-1)
        student = torch.log_softmax(head(out).to(torch.float32), dim=-1)
        kl = torch.nn.functional.kl_div(student.flatten(0, -2), teacher.flatten(0, -2), log_target=True,
                                        reduction="sum")
        return kl, teacher[..., 0].numel()
    return terms


def _loss(run, inputs: list[tuple], targets: list[torch.Tensor], indices: list[int], terms,
          group: int) -> torch.Tensor:
    """The loss over ``indices``, run ``group`` batches at a time (stacked where they stack)."""
    num = den = 0.0
    for start in range(0, len(indices), group):
        chunk = indices[start:start + group]
        stacked = _stack([inputs[i] for i in chunk])
        calls = [(stacked, torch.cat([targets[i] for i in chunk]))] if stacked is not None else \
            [(inputs[i], targets[i]) for i in chunk]
        for (args, kwargs), target in calls:
            n, d = terms(first_output(run(*args, **kwargs)).to(torch.float32), target)
            num, den = num + n, den + d
    return num / den


@contextlib.contextmanager
def _tf32():
    """Float32 products in TF32 (GPUs) while steps run: gradients need no more."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _chain(blocks: list[nn.Module]):
    """The blocks as one callable: each block's first output replaces the next block's first
    argument, the rest of the arguments (masks, positions) stay as captured for the first."""
    def run(*args, **kwargs):
        for block in blocks:
            args = next_args(block, args, kwargs)
        return args[0]
    return run


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
    return _tune([block], block, inputs, targets, steps, batches_per_step, lr, seed, dense,
                 relative_squared_error)


def finetune_chain(blocks: list[nn.Module], inputs: list[tuple], targets: list[torch.Tensor], steps: int,
                   batches_per_step: int = 8, lr: float = LEARNING_RATE, seed: int = 0,
                   head: nn.Module | None = None, tune_norms: bool = True) -> tuple[float, float]:
    """Tune the grids of every ``FrameQuantLinear`` in ``blocks`` at once, end to end.

    ``inputs``: the first block's ``(args, kwargs)`` per batch; ``targets``: the full-precision
    last block's output for each. After the block-wise pass each block matches its own target;
    this pass lets earlier blocks absorb the error that later ones cannot undo. The loss is the
    relative squared error of the last block's output, or with ``head`` (a causal LM's final
    norm and output layer) the KL divergence of the next-token distributions it gives; with
    ``head`` the blocks' norm weights are tuned too unless ``tune_norms`` is false. (For MiniLM,
    the error of the pooled sentence embeddings did no better than the plain one, and tuning its
    LayerNorms did worse: STS-B Spearman 0.798 and 0.796 against 0.799.) Returns the loss before
    and after.
    """
    terms = relative_squared_error if head is None else next_token_kl(head)
    frozen = blocks if head is None else [*blocks, head]  # the head's weights take no gradient
    norms = norm_modules(blocks) if head is not None and tune_norms else []
    return _tune(frozen, _chain(blocks), inputs, targets, steps, batches_per_step, lr, seed, True, terms, norms)


def _tune(modules: list[nn.Module], run, inputs, targets, steps, batches_per_step, lr, seed, dense, terms,
          norms: list[nn.Module] = ()):
    """Adam on the offsets of every ``FrameQuantLinear`` in ``modules`` and on the parameters of
    ``norms`` (every other weight is frozen meanwhile) for the loss ``terms`` of ``run``'s output
    against ``targets``; tuned ``norms`` are marked (:data:`TUNED`)."""
    layers = [m for module in modules for m in module.modules() if isinstance(m, FrameQuantLinear)]
    if steps <= 0 or not layers:
        return float("nan"), float("nan")
    tunables = [_Tunable(layer, dense) for layer in layers]
    params = [p for t in tunables for p in t.parameters()]
    norm_params = [p for m in norms for p in m.parameters(recurse=False)]
    norm_saved = [p.detach().clone() for p in norm_params]
    everything = list(range(len(inputs)))
    with torch.no_grad():
        before = float(_loss(run, inputs, targets, everything, terms, batches_per_step))
    optimizer = torch.optim.Adam(params + norm_params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    frozen = [p for module in modules for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for p in norm_params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad(), _tf32():
            for _ in range(steps):
                pick = torch.randperm(len(inputs), generator=gen)[:batches_per_step].tolist()
                optimizer.zero_grad(set_to_none=True)
                for t in tunables:
                    t.apply()
                loss = _loss(run, inputs, targets, pick, terms, batches_per_step)
                loss.backward()
                optimizer.step()
    finally:
        for p in norm_params:
            p.requires_grad_(False)
        for p in frozen:
            p.requires_grad_(True)
    saved = [(t.layer.scale.clone(), t.layer.zero.clone(), t.bias0) for t in tunables]
    after = math.nan  # a tuning that diverged is not stored at all
    if all(t.finite() for t in tunables) and all(bool(torch.isfinite(p).all()) for p in norm_params):
        for t in tunables:
            t.commit()
        with torch.no_grad():
            after = float(_loss(run, inputs, targets, everything, terms, batches_per_step))
    if not after < before:  # keep the GPTQ grid (and the norms) when tuning did not help
        for t, values in zip(tunables, saved):
            t.commit(values)
        with torch.no_grad():
            for p, value in zip(norm_params, norm_saved):
                p.copy_(value)
        after = before
    else:
        for m in norms:
            setattr(m, TUNED, True)
    log.info("fine-tuned %d layers: loss %.5f -> %.5f", len(layers), before, after)
    return before, after
