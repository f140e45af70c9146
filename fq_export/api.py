"""The library entry point: quantize a PyTorch model in place.

    import fq_export
    fq_export.quantize(model, fq_export.FrameQuantConfig(bits=2, redundancy=1.1), batches)

``model`` is a :class:`~fq_export.models.base.ModelAdapter` (from ``fq_export.models.load_model``)
or any ``nn.Module`` whose transformer blocks are found (``encoder.layer``, ``model.layers``,
``model.decoder.layers``, ``blocks``, ``layers``) or named with ``blocks=["encoder.layer"]``. Every
``nn.Linear`` inside a block becomes a :class:`~fq_export.layer.FrameQuantLinear`, first block to
last, with the same sequential calibration, fine-tuning and bit budget as ``fq-export quantize``.
``batches``: a list of calibration inputs, each a dict of keyword arguments (``model(**batch)``) or a
tensor (``model(batch)``). A checkpoint of the result: :func:`fq_export.checkpoint.save_checkpoint`
with :func:`fq_export.pipeline.quantized_layers` and, as ``params``,
:func:`fq_export.finetune.tuned_parameters` (a causal LM's norm weights that fine-tuning changed).
"""
from __future__ import annotations

from torch import nn

from .config import QuantConfig
from .layer import LayerStats
from .models.base import ModelAdapter
from .pipeline import quantize as _quantize

#: the recipe of one quantization (method, bits, redundancy and side, group size, clipping, seed)
FrameQuantConfig = QuantConfig

_BLOCK_PATHS = ("encoder.layer", "model.layers", "model.decoder.layers", "transformer.h", "blocks", "layers")


class _ModuleAdapter(ModelAdapter):
    def forward(self, batch):
        return self.model(**batch) if isinstance(batch, dict) else self.model(batch)


def _find_blocks(model: nn.Module, paths) -> list[tuple[str, nn.Module]]:
    for path in paths:
        try:
            container = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and len(container):
            return [(f"{path}.{i}", block) for i, block in enumerate(container)]
    raise ValueError(f"{type(model).__name__}: no list of blocks found at {', '.join(paths)}; name it with blocks=[...]")


def quantize(model, config: QuantConfig | None = None, batches=(), *, blocks: list[str] | None = None,
             finetune_steps: int = 0, e2e_steps: int = 0, budget_bits: float | None = None,
             progress: bool = False) -> list[LayerStats]:
    """Quantize ``model`` in place; returns each layer's statistics (proxy loss, bits, seconds).
    ``e2e_steps`` applies to models whose blocks feed each other (a ``ModelAdapter`` with
    ``chained=True``); a plain module's blocks are captured one by one and skip it."""
    config = config or QuantConfig()
    if isinstance(model, ModelAdapter):
        adapter = model
    elif isinstance(model, nn.Module):
        found = _find_blocks(model, tuple(blocks) if blocks else _BLOCK_PATHS)
        # chained=False: each block's inputs are captured by a fresh pass, right for any model.
        adapter = _ModuleAdapter(type(model).__name__, "module", model, found, {}, chained=False)
    else:
        raise TypeError(f"quantize takes an nn.Module or a ModelAdapter, got {type(model).__name__}")
    batches = list(batches)
    return _quantize(adapter, config, batches, progress=progress, finetune_steps=finetune_steps,
                     e2e_steps=e2e_steps, budget_bits=budget_bits)
