"""A model-wide bit budget: each layer's (bits, r, side) chosen from measured sensitivity.

``allocate(adapter, config, batches, budget_bits)`` measures, on the full-precision model's
Hessians, each layer's relative proxy loss ``tr(E H E^T) / tr(W H W^T)`` when quantized at 2 bits
with every (r, side) of :data:`REDUNDANCIES` and at 4 bits with ``r = 1``; the 4-bit loss with a
frame is taken as the 4-bit ``r = 1`` loss times the frame's measured 2-bit gain. A layer's own
relative error says little about what it does to the model (on MiniLM, the query and key layers
have larger relative proxies than the MLP input layers and a tenth of their effect on the
embeddings), so each layer's losses are then scaled by its measured effect on the output: with
that layer alone quantized at 2 bits with ``r = 1``, the model's output error on
:data:`PROBE_BATCHES` calibration batches (:func:`output_error`) becomes that choice's loss, and
the other choices keep their proxy ratios to it. Each choice's cost is its exact stored bits
(codes with row padding, scales and zeros). A Lagrangian search then picks, per layer, the choice
minimising ``loss + lambda * bits``, with the smallest ``lambda`` whose model-wide effective bits
fit the budget, and spends what is left on the upgrades that remove the most loss per bit; the
result is a ``QuantConfig`` per layer. Only 2 and 4 bits are used, so every export form
(MatMulNBits included) can run the model.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import torch

from . import packing
from .config import QuantConfig
from .grid import num_groups
from .layer import LinearJob, quantize_linears, side_recipes

log = logging.getLogger(__name__)

BITS = (2, 4)
#: (r, side) choices for FrameQuant; other methods have one (no frames). r 1.1 on both sides is
#: not offered: the default budgets of MiniLM and SmolLM2-135M chose it for no layer, and measuring
#: it cost a quarter of the sensitivity pass
REDUNDANCIES = ((1.0, "both"), (1.1, "input"))
#: calibration batches on which each layer's effect on the model's output is measured
PROBE_BATCHES = 16
#: probe batches of one shape run as one batch of up to this many
PROBE_STACK = 8
#: on a CPU, models of up to this many block weights get a budget by default (:func:`default_budget`;
#: on a GPU every model does): its sensitivity pass costs three GPTQ runs per layer (batched over
#: the blocks on a GPU) and a probe of forward passes per layer: about 25 s for MiniLM (11M) on two
#: CPU cores, minutes for SmolLM2 (106M) there; on an H200, SmolLM2's whole quantization took 101 s
DEFAULT_BUDGET_MAX_WEIGHTS = 50_000_000


def _choices(config: QuantConfig) -> list[QuantConfig]:
    sides = REDUNDANCIES if config.use_frames else ((config.redundancy, config.redundancy_side),)
    return [dataclasses.replace(config, bits=b, redundancy=r, redundancy_side=s) for b in BITS for r, s in sides]


def stored_bits(config: QuantConfig, in_features: int, out_features: int, name: str) -> int:
    """Bits that a layer quantized with ``config`` stores (codes, fp16 scales and zeros)."""
    ins, outs = side_recipes(config, in_features, out_features, name)
    groups = num_groups(ins.size, config.group_size)
    return outs.size * (packing.words_per_row(ins.size, config.bits) * 32 + 32 * groups)


def output_error(adapter, reference: torch.Tensor, output: torch.Tensor) -> float:
    """How far the model's task output moved (summed over a batch's items): for a causal LM the
    KL divergence of the next-token distributions from the reference's, summed over tokens; else
    the squared error (sentence embeddings, class logits)."""
    if adapter.family == "causal_lm":
        teacher = torch.log_softmax(reference.to(torch.float32), dim=-1)
        student = torch.log_softmax(output.to(torch.float32), dim=-1)
        return float((teacher.exp() * (teacher - student)).sum())
    return float((output.to(torch.float32) - reference.to(torch.float32)).pow(2).sum())


def _stacked(batches: list[dict]) -> list[dict]:
    """``batches`` with runs of up to :data:`PROBE_STACK` consecutive ones whose tensors share
    their shapes (a causal LM's windows, images) joined into one; the others as they are."""
    def joins(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.is_tensor(a[k]) and torch.is_tensor(b[k])
                                            and a[k].shape == b[k].shape for k in a)

    runs: list[list[dict]] = []
    for batch in batches:
        if runs and len(runs[-1]) < PROBE_STACK and joins(runs[-1][0], batch):
            runs[-1].append(batch)
        else:
            runs.append([batch])
    return [run[0] if len(run) == 1 else {k: torch.cat([b[k] for b in run]) for k in run[0]} for run in runs]


@torch.no_grad()
def sensitivities(adapter, config: QuantConfig, batches: list[dict], progress: bool = True) -> dict[str, list[tuple]]:
    """Per layer: ``[(choice, stored bits, loss)]`` over :func:`_choices`, the losses being the
    layer's relative proxy losses scaled so that the 2-bit ``r = 1`` choice's loss is the model's
    output error with that layer alone quantized so (see the module docstring). Layers of one
    shape go through GPTQ together (:func:`~fq_export.layer.quantize_linears`)."""
    from tqdm.auto import tqdm

    from .pipeline import collect_hessians, set_submodule, to_device

    # each layer's X X^T / N once: every choice below quantizes against it
    hessians = {name: acc.hessian for name, acc in collect_hessians(adapter, batches).items()}
    probe = _stacked([to_device(b, adapter.device) for b in batches[:PROBE_BATCHES]])
    reference = [adapter.forward(b) for b in probe]
    choices = _choices(config)
    key = lambda c: (c.bits, c.redundancy, c.redundancy_side)  # noqa: E731
    probe_choice = next(c for c in choices if c.bits == 2 and (not c.use_frames or key(c)[1:] == (1.0, "both")))
    # 4 bits with a frame is estimated (below), not measured
    measure = [c for c in choices if c.bits == 2 or c.redundancy == 1.0 or not c.use_frames]
    linears = {name: adapter.model.get_submodule(name) for name in hessians}
    shapes: dict[tuple, list[str]] = {}
    for name, linear in linears.items():
        shapes.setdefault(tuple(linear.weight.shape), []).append(name)
    measured: dict[str, dict] = {name: {} for name in linears}
    errors = {}

    def probe_error(name: str, layer) -> float:
        layer.use_dense_weight(True)
        set_submodule(adapter.model, name, layer)
        try:
            return sum(output_error(adapter, r, adapter.forward(b)) for b, r in zip(probe, reference))
        finally:
            set_submodule(adapter.model, name, linears[name])

    bar = tqdm(total=len(measure) * len(shapes), desc="sensitivity", unit="step", disable=not progress)
    for choice in measure:
        for names in shapes.values():
            jobs = [LinearJob(n, linears[n].weight, linears[n].bias, hessians[n], choice) for n in names]
            for name, (layer, stats) in zip(names, quantize_linears(jobs)):
                measured[name][key(choice)] = stats.frame_proxy_loss
                if choice is probe_choice:
                    errors[name] = probe_error(name, layer)
            bar.update(1)
    bar.close()
    del hessians
    out = {}
    for name, linear in linears.items():
        losses = measured[name]
        scale = errors[name] / max(losses[key(probe_choice)], 1e-30)
        base2 = losses.get((2, 1.0, "both"))
        rows = []
        for choice in choices:
            loss = losses.get(key(choice))
            if loss is None:  # 4 bits with a frame: 4-bit r=1 loss times the frame's 2-bit gain
                loss = losses[(choice.bits, 1.0, "both")] * losses[(2,) + key(choice)[1:]] / max(base2, 1e-30)
            rows.append((choice, stored_bits(choice, linear.in_features, linear.out_features, name), loss * scale))
        out[name] = rows
    return out


def choose(table: dict[str, list[tuple]], weights: dict[str, int], budget_bits: float) -> dict[str, QuantConfig]:
    """Per layer, the choice minimising ``loss + lambda * bits`` for the smallest feasible ``lambda``."""
    total = sum(weights.values())

    def pick(lam: float) -> tuple[dict, float]:
        chosen = {n: min(rows, key=lambda r: (r[2] + lam * r[1], r[1])) for n, rows in table.items()}
        return chosen, sum(c[1] for c in chosen.values()) / total

    cheapest = sum(min(r[1] for r in rows) for rows in table.values()) / total
    if budget_bits < cheapest:
        raise ValueError(f"a budget of {budget_bits} bits is below the cheapest recipe this model allows "
                         f"({cheapest:.3f} effective bits)")
    lo, hi = 0.0, 1.0
    while pick(hi)[1] > budget_bits:
        hi *= 4
    for _ in range(60):
        mid = (lo + hi) / 2
        if pick(mid)[1] > budget_bits:
            lo = mid
        else:
            hi = mid
    chosen, _ = pick(hi)
    # The Lagrangian choice can leave budget unused: spend it on the upgrades that remove the most
    # loss per extra bit while they fit.
    spare = budget_bits * total - sum(c[1] for c in chosen.values())
    while True:
        upgrades = [((c[2] - r[2]) / (r[1] - c[1]), n, r) for n, c in chosen.items() for r in table[n]
                    if c[1] < r[1] <= c[1] + spare and r[2] < c[2]]
        if not upgrades:
            break
        _, name, row = max(upgrades, key=lambda u: u[0])  # the first of equal gains, as before
        spare -= row[1] - chosen[name][1]
        chosen[name] = row
    log.info("budget %.3f bits: chose %.3f effective bits", budget_bits, budget_bits - spare / total)
    return {n: c[0] for n, c in chosen.items()}


def recipe_bits(adapter, config: QuantConfig) -> float:
    """Effective bits that ``config`` on every linear of ``adapter``'s blocks would store, in the
    units of a budget (stored bits over weights)."""
    bits = weights = 0
    for name in adapter.linear_names():
        linear = adapter.model.get_submodule(name)
        bits += stored_bits(config, linear.in_features, linear.out_features, name)
        weights += linear.in_features * linear.out_features
    return bits / weights


def default_budget(adapter, config: QuantConfig, device="cpu") -> float | None:
    """The budget of ``fq-export quantize`` when none is given and ``--r``/``--side`` are left at
    their defaults: for 2-bit FrameQuant with per-row scales, on a GPU or on a CPU for a model of
    up to :data:`DEFAULT_BUDGET_MAX_WEIGHTS` block weights, the bits of ``config`` itself, so that
    the model keeps its size and spends them where its output is most sensitive; otherwise
    ``None`` (the fixed recipe). On MiniLM (seeds 0-3) this raised the embedding cosine to full
    precision from 0.789 / 0.854 / 0.746 to 0.841 / 0.892 / 0.801 on *Flatland* / docstrings /
    BBC News; on SmolLM2-135M (H200) it lowered BBC News perplexity from 105.5 to 85.2."""
    from .pipeline import block_weights

    if config.method != "framequant" or config.bits != 2 or config.group_size is not None:
        return None
    if torch.device(device).type != "cuda" and block_weights(adapter) > DEFAULT_BUDGET_MAX_WEIGHTS:
        return None
    return recipe_bits(adapter, config)


def allocate(adapter, config: QuantConfig, batches: list[dict], budget_bits: float,
             progress: bool = True) -> dict[str, QuantConfig]:
    """A ``QuantConfig`` per linear layer whose model-wide effective bits stay within ``budget_bits``."""
    if not (math.isfinite(budget_bits) and budget_bits > 0):
        raise ValueError(f"the bit budget must be a positive number, got {budget_bits}")
    table = sensitivities(adapter, config, batches, progress)
    weights = {}
    for name in table:
        linear = adapter.model.get_submodule(name)
        weights[name] = linear.in_features * linear.out_features
    return choose(table, weights, budget_bits)
