"""Export a (quantized) model with torch's ONNX exporter, in fp32, with dynamic batch/sequence.

Every ``FrameQuantLinear`` is first swapped for an ``nn.Linear`` holding its dense reconstruction
``W_hat`` (``layer.dense_weight()``), so the exporter sees plain linears; :mod:`converters.match`
then finds each of them again in the graph by the exact values of ``W_hat`` and
:mod:`converters.rewrite` replaces it by the five-step subgraph. The exported graph computes the
model's task output: sentence embeddings (mean pooling + L2 normalization) for encoders, logits
for causal LMs (no KV cache) and vision models.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from fq_export.layer import FrameQuantLinear
from fq_export.models.base import ModelAdapter, mean_pool

OPSET = 18


class EncoderEmbedding(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


class CausalLogits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        # An explicit all-ones mask: without one, transformers probes position_ids for packed
        # sequences with torch.diff, which the ONNX exporter cannot express.
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


class VisionLogits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values)


def dense_copy(model: nn.Module) -> tuple[nn.Module, dict[str, FrameQuantLinear]]:
    """A deep copy of ``model`` in fp32 with each ``FrameQuantLinear`` replaced by ``nn.Linear(W_hat)``.

    Returns the copy and the quantized layers by module name (the originals, not copied).
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FrameQuantLinear)}
    originals = {}
    for name, layer in layers.items():  # keep the quantized modules out of the deep copy
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        originals[name] = (holder, child, layer)
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(layer.dense_weight().float())
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.float())
        setattr(holder, child, linear)
    try:
        dense = copy.deepcopy(model).cpu().eval()
        for tensor in [*dense.parameters(), *dense.buffers()]:
            if tensor.is_floating_point() and tensor.dtype != torch.float32:
                tensor.data = tensor.data.float()
    finally:
        for holder, child, layer in originals.values():
            setattr(holder, child, layer)
    return dense, layers


def task_module(adapter: ModelAdapter, model: nn.Module) -> tuple[nn.Module, list[str], dict]:
    """The exportable wrapper, its input names and dynamic axes."""
    if adapter.family == "encoder":
        axes = {0: "batch", 1: "sequence"}
        return EncoderEmbedding(model), ["input_ids", "attention_mask"], {
            "input_ids": axes, "attention_mask": axes, "output": {0: "batch"}}
    if adapter.family == "causal_lm":
        return CausalLogits(model), ["input_ids"], {
            "input_ids": {0: "batch", 1: "sequence"}, "output": {0: "batch", 1: "sequence"}}
    return VisionLogits(model), ["pixel_values"], {"pixel_values": {0: "batch"}, "output": {0: "batch"}}


def example_inputs(adapter: ModelAdapter, batch: dict) -> tuple[torch.Tensor, ...]:
    names = {"encoder": ["input_ids", "attention_mask"], "causal_lm": ["input_ids"], "vit": ["pixel_values"]}
    return tuple(batch[n].cpu() for n in names[adapter.family])


def export_onnx(adapter: ModelAdapter, batch: dict, path: str | Path) -> dict[str, FrameQuantLinear]:
    """Export ``adapter``'s model (quantized layers as dense linears) to ``path`` (fp32, opset 18).

    Returns the quantized layers by module name, prefixed as in the wrapper (``model.``).
    """
    dense, layers = dense_copy(adapter.model)
    module, input_names, axes = task_module(adapter, dense)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(module, example_inputs(adapter, batch), str(path), input_names=input_names,
                              output_names=["output"], dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
    return layers
