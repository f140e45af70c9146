"""The whole-model pipeline: sequential (GPTQ-order) calibration and layer replacement.

``quantize(adapter, config, batches)`` quantizes the linears of every block, first block to
last. Each layer's Hessian comes from the inputs that the already-quantized earlier blocks
produce; memory holds one block's inputs at a time (two streams of them with fine-tuning: the
quantized model's and the full-precision model's). Options: ``finetune_steps`` tunes each
block's grids after GPTQ and ``e2e_steps`` all blocks' grids together at the end
(:mod:`fq_export.finetune`); ``budget_bits`` picks each layer's recipe under a model-wide bit
budget (:mod:`fq_export.budget`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict

import torch
from torch import nn

from .config import QuantConfig
from .finetune import finetune_block, finetune_chain, first_output, next_args
from .gptq import HessianAccumulator
from .layer import FrameQuantLinear, LayerStats, LinearJob, quantize_linears
from .models.base import ModelAdapter

log = logging.getLogger(__name__)

#: block-wise fine-tuning steps of ``fq-export quantize`` on a GPU when none are asked for
DEFAULT_FINETUNE_STEPS = 100
CPU_FINETUNE_STEPS = 50
CPU_FINETUNE_MAX_WEIGHTS = 50_000_000


def default_finetune_steps(device, adapter: ModelAdapter | None = None) -> int:
    """:data:`DEFAULT_FINETUNE_STEPS` on a GPU. On a CPU, :data:`CPU_FINETUNE_STEPS` for a model
    whose blocks hold at most :data:`CPU_FINETUNE_MAX_WEIGHTS` linear weights, else none: 50 steps
    of MiniLM's six blocks (11M weights) take about 40 s on two cores, 100 steps of a 100M-weight
    model would take many minutes (``--finetune-steps N`` opts in)."""
    if torch.device(device).type == "cuda":
        return DEFAULT_FINETUNE_STEPS
    if adapter is None:
        return 0
    return CPU_FINETUNE_STEPS if block_weights(adapter) <= CPU_FINETUNE_MAX_WEIGHTS else 0


def block_weights(adapter: ModelAdapter) -> int:
    """Weights of the linears inside ``adapter``'s blocks: what quantization and tuning work on,
    and what the defaults that depend on model size count."""
    return sum(m.weight.numel() for _, block in adapter.blocks for m in block.modules() if isinstance(m, nn.Linear))


class _StopForward(Exception):
    pass


def to_device(obj, device):
    """``obj`` (a tensor, or lists, tuples and dicts of them) on ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@torch.no_grad()
def capture_block_inputs(adapter: ModelAdapter, block: nn.Module, batches: list[dict]) -> list[tuple]:
    """``(args, kwargs)`` with which ``block`` is called, for each batch (the model stops there)."""
    captured = []

    def hook(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                adapter.forward(to_device(batch, adapter.device))
            except _StopForward:
                pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError(f"block {type(block).__name__} was not reached by every calibration batch")
    return captured


@torch.no_grad()
def _block_hessians(block: nn.Module, prefix: str, inputs: list[tuple]) -> dict[str, HessianAccumulator]:
    hessians, handles = {}, []
    for sub, module in block.named_modules():
        if isinstance(module, nn.Linear):
            acc = HessianAccumulator(module.in_features, device=module.weight.device)
            hessians[f"{prefix}.{sub}"] = acc
            handles.append(module.register_forward_hook(lambda _m, args, _out, acc=acc: acc.add_batch(args[0])))
    try:
        for args, kwargs in inputs:
            block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return hessians


@torch.no_grad()
def quantize(adapter: ModelAdapter, config: QuantConfig, batches: list[dict], progress: bool = True,
             finetune_steps: int = 0, budget_bits: float | None = None,
             layer_configs: dict[str, QuantConfig] | None = None, e2e_steps: int = 0,
             tune_norms: bool = True) -> list[LayerStats]:
    """Quantize every linear inside ``adapter.blocks`` in place; returns per-layer statistics.

    ``layer_configs`` overrides ``config`` per layer name; ``budget_bits`` computes them
    (:func:`fq_export.budget.allocate`); ``finetune_steps > 0`` tunes each block's grids;
    ``e2e_steps > 0`` (chained models) then tunes every block's grids against the full-precision
    model's last block output (for a causal LM through its head: next-token KL, and unless
    ``tune_norms`` is false, its blocks' norm weights are tuned too).
    """
    if not batches:
        raise ValueError("quantize needs at least one calibration batch")
    if finetune_steps < 0 or e2e_steps < 0:
        raise ValueError(f"fine-tuning steps must be 0 or more, got {finetune_steps} and {e2e_steps}")
    from tqdm.auto import tqdm

    if budget_bits is not None:
        from .budget import allocate

        layer_configs = allocate(adapter, config, batches, budget_bits, progress=progress)
    layer_configs = layer_configs or {}
    total = len(adapter.linear_names())
    bar = tqdm(total=total, desc="quantize", unit="layer", disable=not progress)
    stats: list[LayerStats] = []
    inputs = capture_block_inputs(adapter, adapter.blocks[0][1], batches) if adapter.chained else None
    fp_inputs = inputs  # the full-precision model's inputs of the current block (chained models)
    first_inputs = inputs if e2e_steps and adapter.chained else None
    want_targets = finetune_steps or first_inputs is not None
    try:
        for index, (prefix, block) in enumerate(adapter.blocks):
            if not adapter.chained:
                inputs = capture_block_inputs(adapter, block, batches)
            targets = None
            if want_targets:
                source = fp_inputs if adapter.chained else inputs
                targets = [first_output(block(*args, **kwargs)).to(torch.float32) for args, kwargs in source]
            hessians = _block_hessians(block, prefix, inputs)
            bar.set_postfix_str(prefix)
            jobs = []
            for name, acc in hessians.items():
                linear = adapter.model.get_submodule(name)
                jobs.append(LinearJob(name, linear.weight, linear.bias, acc.hessian, layer_configs.get(name, config)))
            for name, (layer, layer_stats) in zip(hessians, quantize_linears(jobs)):
                set_submodule(adapter.model, name, layer)
                layer.use_dense_weight(True)  # the same W_hat as one product, for the passes still to come
                stats.append(layer_stats)
                log.info("%s: %s eff_bits=%.3f proxy=%.4f (%.2fs)", name, layer_stats.method,
                         layer_stats.effective_bits, layer_stats.frame_proxy_loss, layer_stats.seconds)
                bar.update(1)
            del hessians
            if targets is not None and finetune_steps:
                bar.set_postfix_str(f"{prefix}: fine-tuning")
                finetune_block(block, inputs, targets, finetune_steps, seed=config.seed + index)
            if adapter.chained and index + 1 < len(adapter.blocks):
                if targets is not None:
                    fp_inputs = [((t.to(args[0].dtype),) + tuple(args[1:]), kwargs)
                                 for t, (args, kwargs) in zip(targets, fp_inputs)]
                inputs = [(next_args(block, args, kwargs), kwargs) for args, kwargs in inputs]
        if first_inputs is not None:
            bar.set_postfix_str("end-to-end fine-tuning")
            del inputs, fp_inputs
            finetune_chain([block for _, block in adapter.blocks], first_inputs, targets, e2e_steps,
                           seed=config.seed + len(adapter.blocks), head=adapter.output_head(),
                           tune_norms=tune_norms)
    finally:
        bar.close()
        for layer in quantized_layers(adapter.model).values():
            layer.use_dense_weight(None)
    return stats


@torch.no_grad()
def collect_hessians(adapter: ModelAdapter, batches: list[dict], names: list[str] | None = None
                     ) -> dict[str, HessianAccumulator]:
    """Hessians of the full-precision model's linears (one pass, no quantization)."""
    names = names or adapter.linear_names()
    hessians, handles = {}, []
    for name in names:
        module = adapter.model.get_submodule(name)
        acc = HessianAccumulator(module.in_features, device=module.weight.device)
        hessians[name] = acc
        handles.append(module.register_forward_hook(lambda _m, args, _out, acc=acc: acc.add_batch(args[0])))
    try:
        for batch in batches:
            adapter.forward(to_device(batch, adapter.device))
    finally:
        for handle in handles:
            handle.remove()
    return hessians


@contextlib.contextmanager
def dense_weights(model: nn.Module):
    """Run every ``FrameQuantLinear`` of ``model`` as one dense product with its ``W_hat`` inside the
    block (the same function as the five steps, much faster on a CPU for evaluation)."""
    layers = quantized_layers(model).values()
    for layer in layers:
        layer.use_dense_weight(True)
    try:
        yield model
    finally:
        for layer in layers:
            layer.use_dense_weight(None)


def quantized_layers(model: nn.Module) -> dict[str, FrameQuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FrameQuantLinear)}


def apply_layers(adapter: ModelAdapter, layers: dict[str, FrameQuantLinear]) -> None:
    """Put checkpointed layers into a freshly loaded model, checking names and shapes."""
    for name, layer in layers.items():
        try:
            original = adapter.model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"checkpoint layer {name} does not exist in model {adapter.name}") from exc
        if not isinstance(original, nn.Linear):
            raise ValueError(f"checkpoint layer {name} replaces a {type(original).__name__}, not an nn.Linear")
        if (original.in_features, original.out_features) != (layer.in_features, layer.out_features):
            raise ValueError(f"checkpoint layer {name} is {layer.out_features}x{layer.in_features} but the model's is "
                             f"{original.out_features}x{original.in_features}")
        set_submodule(adapter.model, name, layer.to(original.weight.device))


@torch.no_grad()
def apply_parameters(adapter: ModelAdapter, params: dict[str, torch.Tensor]) -> None:
    """Put a checkpoint's tuned full-precision parameters (norm weights) into the model, checking
    names and shapes."""
    own = dict(adapter.model.named_parameters())
    for name, value in params.items():
        if name not in own:
            raise ValueError(f"checkpoint parameter {name} does not exist in model {adapter.name}")
        if tuple(own[name].shape) != tuple(value.shape):
            raise ValueError(f"checkpoint parameter {name} has shape {tuple(value.shape)} but the model's is "
                             f"{tuple(own[name].shape)}")
        own[name].copy_(value.to(own[name]))


def stats_table(stats: list[LayerStats]) -> list[dict]:
    return [asdict(s) for s in stats]
