"""``fq-export layer-error``: every linear of a model quantized independently with every method.

Also the library behind it: :func:`default_configs`, :func:`layer_errors`, :func:`summarize`.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .common import UserError, _load, _model_args

if TYPE_CHECKING:
    from fq_export.config import QuantConfig
    from fq_export.models.base import ModelAdapter

log = logging.getLogger(__name__)

OUTPUTS = {"json": (".json",)}


def add_parser(sub) -> None:
    p = sub.add_parser("layer-error", help="quantize every linear independently with every method; compare errors")
    _model_args(p, default="minilm")
    p.add_argument("--bits", type=int, default=2, choices=[2, 3, 4, 8])
    p.add_argument("--r", default="1.0,1.1", help="comma-separated FrameQuant redundancies")
    p.add_argument("--methods", help="comma-separated method labels to keep (default: all)")
    p.add_argument("--calib", help="calibration text (default: offline stdlib docstrings, calibration part)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--heldout-samples", type=int, default=128, help="held-out samples for rel_proxy_loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="output JSON (one record per layer and method)")


def parse_redundancies(text: str) -> tuple[float, ...]:
    """``--r 1.0,1.1`` -> ``(1.0, 1.1)``; anything else is an error naming ``--r``."""
    import math

    from fq_export.frames import MAX_REDUNDANCY

    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--r {text!r}: {part.strip()!r} is not a number (give comma-separated "
                            "redundancies such as 1.0,1.1)") from None
        if not math.isfinite(value) or not 1.0 <= value <= MAX_REDUNDANCY:
            raise UserError(f"--r {text!r}: each redundancy must lie in [1, {MAX_REDUNDANCY}], got {part.strip()}")
        values.append(value)
    return tuple(values)


def check(args) -> None:
    """Option values that can be judged before any work."""
    from .common import check_calibration_source

    redundancies = parse_redundancies(args.r)
    check_calibration_source(args)
    if args.methods:
        known = [c.label for c in default_configs(args.bits, redundancies, args.seed)]
        unknown = set(args.methods.split(",")) - set(known)
        if unknown:
            raise UserError(f"--methods: unknown method labels {sorted(unknown)}; known: {known}")


def command(args) -> int:
    from calib.sources import calibration_batches
    from fq_export.io import format_table, write_json

    redundancies = parse_redundancies(args.r)
    configs = default_configs(args.bits, redundancies, args.seed)
    if args.methods:
        keep = set(args.methods.split(","))
        configs = [c for c in configs if c.label in keep]
    adapter = _load(args)
    if adapter.family != "encoder" and args.model != "minilm":
        log.info("layer-error on a %s model", adapter.family)
    calib, where = calibration_batches(adapter, args.calib, args.calib_samples, args.seed, split="calib")
    if len(calib) < args.calib_samples:
        raise UserError(f"--calib-samples {args.calib_samples} asks for more calibration samples than "
                        f"{args.calib or 'the default calibration data'} yields ({len(calib)}): pass "
                        f"--calib-samples {len(calib)} or more data")
    heldout, where_eval = calibration_batches(adapter, None, args.heldout_samples, args.seed + 1, split="eval")
    if len(heldout) < args.heldout_samples:
        raise UserError(f"--heldout-samples {args.heldout_samples} asks for more held-out samples than there are "
                        f"({len(heldout)})")
    records = layer_errors(adapter, calib, heldout, configs, progress=not args.no_progress)
    write_json(args.json, records)
    summary = summarize(records)
    print(f"model {adapter.name}: {len(adapter.linear_names())} layers, calibration {len(calib)} samples from {where}; "
          f"held-out {len(heldout)} samples from {where_eval}")
    print(format_table(summary, ["method", "layers", "effective_bits", "mean_rel_proxy_loss", "mean_seconds"]))
    print(f"wrote {args.json}")
    return 0


def default_configs(bits: int, redundancies=(1.0, 1.1), seed: int = 0) -> list[QuantConfig]:
    from fq_export.config import QuantConfig

    configs = [QuantConfig(method=m, bits=bits, seed=seed) for m in ("rtn", "gptq", "quip", "quip-clip")]
    for r in redundancies:
        for side in ("both", "input"):
            configs.append(QuantConfig(method="framequant", bits=bits, redundancy=r, redundancy_side=side, seed=seed))
    return configs


def layer_errors(adapter: ModelAdapter, calib_batches: list[dict], heldout_batches: list[dict],
                 configs: list[QuantConfig], progress: bool = True) -> list[dict]:
    """One record per (layer, method): ``rel_proxy_loss`` is measured on held-out inputs."""
    from tqdm.auto import tqdm

    from fq_export.layer import quantize_linear, relative_output_error
    from fq_export.pipeline import collect_hessians

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
