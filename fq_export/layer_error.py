"""Per-layer comparison of every method on one model's layers, quantized independently."""
from __future__ import annotations

import logging
import time

import torch

from .config import QuantConfig
from .layer import quantize_linear, relative_output_error
from .models.base import ModelAdapter
from .pipeline import collect_hessians

log = logging.getLogger(__name__)


def default_configs(bits: int, redundancies=(1.0, 1.1), seed: int = 0) -> list[QuantConfig]:
    configs = [QuantConfig(method=m, bits=bits, seed=seed) for m in ("rtn", "gptq", "quip", "quip-clip")]
    for r in redundancies:
        for side in ("both", "input"):
            configs.append(QuantConfig(method="framequant", bits=bits, redundancy=r, redundancy_side=side, seed=seed))
    return configs


def layer_errors(adapter: ModelAdapter, calib_batches: list[dict], heldout_batches: list[dict],
                 configs: list[QuantConfig], progress: bool = True) -> list[dict]:
    """One record per (layer, method): ``rel_proxy_loss`` is measured on held-out inputs."""
    from tqdm.auto import tqdm

    names = adapter.linear_names()
    calib = collect_hessians(adapter, calib_batches, names)
    heldout = collect_hessians(adapter, heldout_batches, names)
    records = []
    bar = tqdm(total=len(names) * len(configs), desc="layer-error", unit="quant", disable=not progress)
    for name in names:
        linear = adapter.model.get_submodule(name)
        for config in configs:
            start = time.perf_counter()
            layer, stats = quantize_linear(linear.weight, linear.bias, calib[name].hessian, config, name)
            seconds = time.perf_counter() - start
            w_hat = layer.dense_weight()
            records.append({
                "layer": name,
                "method": config.label,
                "r": config.redundancy if config.use_frames else 1.0,
                "r_in": stats.redundancy_in,
                "r_out": stats.redundancy_out,
                "bits": config.bits,
                "effective_bits": stats.effective_bits,
                "rel_proxy_loss": relative_output_error(linear.weight.detach().cpu(), w_hat, heldout[name].hessian.cpu()),
                "calib_frame_proxy_loss": stats.frame_proxy_loss,
                "seconds": seconds,
                "shape": [linear.out_features, linear.in_features],
            })
            bar.update(1)
    bar.close()
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Mean over layers per method, in the order methods first appear."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    out = []
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        weights = sum(r["shape"][0] * r["shape"][1] for r in rows)
        out.append({
            "method": method,
            "layers": len(rows),
            "r_in": rows[0]["r_in"],
            "r_out": rows[0]["r_out"],
            "effective_bits": sum(r["effective_bits"] * r["shape"][0] * r["shape"][1] for r in rows) / weights,
            "mean_rel_proxy_loss": sum(r["rel_proxy_loss"] for r in rows) / len(rows),
            "mean_seconds": sum(r["seconds"] for r in rows) / len(rows),
        })
    return out
