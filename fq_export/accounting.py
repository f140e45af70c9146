"""Honest size accounting (docs/design.md, "Effective bits")."""
from __future__ import annotations

from torch import nn

from .layer import FrameQuantLinear


def model_effective_bits(model: nn.Module) -> dict:
    """Effective bits over all quantized layers: sum of stored code bits / sum of ``m n``.

    Also returns the quantized layers' parameter count and stored bytes.
    """
    bits = weights = stored_bytes = 0
    layers = 0
    for module in model.modules():
        if isinstance(module, FrameQuantLinear):
            layers += 1
            bits += module.code_bits
            weights += module.in_features * module.out_features
            stored_bytes += module.packed_codes.numel() * 4 + module.scale.numel() * 2 + module.zero.numel() * 2
    return {
        "quantized_layers": layers,
        "quantized_weights": weights,
        "effective_bits": bits / weights if weights else float("nan"),
        "quantized_bytes": stored_bytes,
        "fp32_bytes_of_those_weights": 4 * weights,
    }
