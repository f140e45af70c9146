"""Quantize real all-MiniLM-L6-v2 linears (FrameQuant, 2 bits, r = 1.1) for the GPU kernel proof.

Hessians come from the layers' own inputs on a few calibration sentences (original model, no
sequential re-capture: the point is real weights and real frame coefficients, not accuracy).

    python plugins_trt/tools/prepare_minilm_layers.py plugins_trt/.proof/minilm_layers.safetensors
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calib.text import stdlib_sentences  # noqa: E402
from fq_export.checkpoint import save_checkpoint  # noqa: E402
from fq_export.config import QuantConfig  # noqa: E402
from fq_export.layer import quantize_linear  # noqa: E402
from fq_export.models.text import load_minilm  # noqa: E402

BLOCKS = (0, 5)


def main(out: str):
    adapter = load_minilm()
    model = adapter.model.eval()
    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and any(f"layer.{b}." in n for b in BLOCKS)]
    grams = {n: None for n in names}
    counts = {n: 0 for n in names}

    def hook(name):
        def fn(_m, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            grams[name] = x.T @ x if grams[name] is None else grams[name] + x.T @ x
            counts[name] += x.shape[0]
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    sentences = stdlib_sentences("calib")[:32]
    with torch.no_grad():
        for s in sentences:
            batch = adapter.tokenizer(s, return_tensors="pt", truncation=True, max_length=128)
            model(**batch)
    for h in handles:
        h.remove()
    layers = {}
    for n in names:
        linear = model.get_submodule(n)
        layer, stats = quantize_linear(linear.weight, linear.bias, grams[n] / counts[n], QuantConfig(), n)
        layers[n] = layer
        print(f"{n}: {tuple(linear.weight.shape)} proxy loss {stats.frame_proxy_loss:.4f}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, layers, {"model": "minilm", "blocks": list(BLOCKS)})
    print(f"wrote {out} ({Path(out).stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
