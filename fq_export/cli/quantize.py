"""``fq-export quantize``: quantize a model and save an integrity-checked checkpoint."""
from __future__ import annotations

from pathlib import Path

from .common import _model_args, _quant_args, _quantize

OUTPUTS = {"out": (".safetensors",), "report": (".json",)}


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model and save a checkpoint")
    _model_args(p, default="minilm")
    _quant_args(p)
    p.add_argument("--out", required=True, help="checkpoint (.safetensors)")
    p.add_argument("--report", help="per-layer report (JSON)")


def check(args) -> None:
    from .common import _config, check_calibration_source

    _config(args)  # QuantConfig's own checks (redundancy, group size ...), before the model loads
    check_calibration_source(args)


def command(args) -> int:
    from fq_export.checkpoint import save_checkpoint
    from fq_export.io import write_json
    from fq_export.finetune import tuned_parameters
    from fq_export.pipeline import quantized_layers

    adapter, config, report = _quantize(args)
    save_checkpoint(args.out, quantized_layers(adapter.model),
                    {"model": adapter.source, "config": config.to_dict(), "calibration": report["calibration"]},
                    params=tuned_parameters(adapter.model))
    report["checkpoint"] = {"path": str(args.out), "bytes": Path(args.out).stat().st_size}
    if args.report:
        write_json(args.report, report)
    print(f"wrote {args.out} ({report['checkpoint']['bytes']} bytes)")
    return 0
