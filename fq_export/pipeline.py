"""The whole-model pipeline: sequential (GPTQ-order) calibration and layer replacement.

``quantize(adapter, config, batches)`` quantizes the linears of every block, first block to
last. Each layer's Hessian comes from the inputs that the already-quantized earlier blocks
produce; memory holds one block's inputs at a time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import torch
from torch import nn

from .config import QuantConfig
from .gptq import HessianAccumulator
from .layer import FrameQuantLinear, LayerStats, quantize_linear
from .models.base import ModelAdapter

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


def _to(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
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
                adapter.forward(_to(batch, adapter.device))
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


def _first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def quantize(adapter: ModelAdapter, config: QuantConfig, batches: list[dict],
             progress: bool = True) -> list[LayerStats]:
    """Quantize every linear inside ``adapter.blocks`` in place; returns per-layer statistics."""
    if not batches:
        raise ValueError("quantize needs at least one calibration batch")
    from tqdm.auto import tqdm

    total = len(adapter.linear_names())
    bar = tqdm(total=total, desc="quantize", unit="layer", disable=not progress)
    stats: list[LayerStats] = []
    inputs = capture_block_inputs(adapter, adapter.blocks[0][1], batches) if adapter.chained else None
    try:
        for index, (prefix, block) in enumerate(adapter.blocks):
            if not adapter.chained:
                inputs = capture_block_inputs(adapter, block, batches)
            hessians = _block_hessians(block, prefix, inputs)
            for name, acc in hessians.items():
                bar.set_postfix_str(f"{name}")
                linear = adapter.model.get_submodule(name)
                layer, layer_stats = quantize_linear(linear.weight, linear.bias, acc.hessian, config, name)
                set_submodule(adapter.model, name, layer)
                stats.append(layer_stats)
                log.info("%s: %s eff_bits=%.3f proxy=%.4f (%.2fs)", name, layer_stats.method,
                         layer_stats.effective_bits, layer_stats.frame_proxy_loss, layer_stats.seconds)
                bar.update(1)
            del hessians
            if adapter.chained and index + 1 < len(adapter.blocks):
                inputs = [((_first_output(block(*args, **kwargs)),) + tuple(args[1:]), kwargs)
                          for args, kwargs in inputs]
    finally:
        bar.close()
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
            adapter.forward(_to(batch, adapter.device))
    finally:
        for handle in handles:
            handle.remove()
    return hessians


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


def stats_table(stats: list[LayerStats]) -> list[dict]:
    return [asdict(s) for s in stats]
