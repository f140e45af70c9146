"""``fq-export export`` and the one-command ``fq-export --model M --r R --out X.onnx|engine.plan``.

Both end in :func:`export_and_report`: export to ONNX in the asked form, validate against the
quantized PyTorch model in onnxruntime (non-zero exit and the failing layer named when a
tolerance is missed), write the report. ``--out *.plan`` writes the plugin form next to the plan
and builds the engine through ``plugins_trt`` when ``tensorrt`` imports; otherwise it prints the
``trtexec`` command that would build it and exits with code 3.
"""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EXIT_VALIDATION_FAILED = 1
EXIT_NO_TENSORRT = 3


def validation_batches(adapter, samples: int, seed: int = 0) -> tuple[list[dict], str]:
    """Held-out real inputs (never the calibration split), in small padded batches."""
    from calib import text as text_data
    from calib.sources import calibration_batches
    from fq_export.models.text import sentence_batches, token_windows

    if samples < 1:
        raise ValueError(f"--validate-samples must be positive, got {samples}")
    if adapter.family == "encoder":
        sentences = random.Random(seed).sample(text_data.stdlib_sentences("eval"), samples)
        return sentence_batches(adapter, sentences, batch_size=min(8, samples)), "python-stdlib-docstrings:eval"
    if adapter.family == "causal_lm":
        windows = token_windows(adapter, text_data.stdlib_corpus("eval"), 128, samples)
        batches = [{"input_ids": torch.cat([w["input_ids"] for w in windows[i:i + 4]])} for i in range(0, len(windows), 4)]
        return batches, "python-stdlib-docstrings:eval (128-token windows)"
    return calibration_batches(adapter, None, samples, seed + 1, split="eval")


def engine_shapes(adapter, batches: list[dict]) -> dict:
    """(min, opt, max) shapes of the engine's inputs."""
    if adapter.family == "vit":
        c, h, w = batches[0]["pixel_values"].shape[1:]
        return {"pixel_values": ((1, c, h, w), (8, c, h, w), (64, c, h, w))}
    names = ["input_ids", "attention_mask"] if adapter.family == "encoder" else ["input_ids"]
    top = min(adapter.max_length, 512)
    return {n: ((1, 1), (8, 128), (32, top)) for n in names}


def export_and_report(adapter, args, base_report: dict) -> int:
    from converters.export import ValidationError, export_artifacts
    from plugins_trt import engine as trt_engine

    from .io import write_json

    out = Path(args.out)
    plan = out.suffix == ".plan"
    # Engines take one FQFrameLinear plugin per layer (the fused kernels) unless the five-step
    # plugin form is asked for.
    form = (args.onnx_form if args.onnx_form.startswith("plugin") else "plugin-layer") if plan else args.onnx_form
    if out.suffix not in (".onnx", ".plan"):
        raise ValueError(f"--out must end in .onnx or .plan, got {out}")
    onnx_path = out.with_suffix(".plugin.onnx") if plan else out
    batches, where = validation_batches(adapter, args.validate_samples, getattr(args, "seed", 0))
    report = dict(base_report)
    report["validation_data"] = where
    code = 0
    try:
        result = export_artifacts(adapter, [form], {form: onnx_path}, batches[0], batches,
                                  accuracy_level=args.accuracy_level, embeddings=args.embeddings)
    except ValidationError as exc:
        result, code = exc.report, EXIT_VALIDATION_FAILED
        print(f"fq-export: validation failed: {exc}", file=sys.stderr)
    report.update(result)
    artifact = result["artifacts"][form]
    for key in ("max_abs_err", "cosine", "task_agreement", "provider", "passed"):
        report[key] = artifact.get(key)
    report["effective_bits"] = artifact["size"]["effective_bits"]
    report["bytes"] = {"artifact": artifact["bytes"], "fp32_onnx": result["fp32_onnx"]["bytes"]}
    if "embeddings" in result:
        e = result["embeddings"]
        print(f"embeddings {e['mode']}: {e['stored_bytes']} bytes (fp32 {e['fp32_bytes']}); task output against fp32 "
              f"embeddings: mean cosine {e['mean_cosine']:.6f}, least {e['min_cosine']:.6f}")
    print(f"{form} ONNX {onnx_path}: {artifact['bytes']} bytes (fp32 export {result['fp32_onnx']['bytes']}), "
          f"effective bits {artifact['size']['effective_bits']:.3f}; onnxruntime {artifact.get('provider')}: "
          f"max_abs_err {artifact['max_abs_err']:.3g}, cosine {artifact['cosine']:.6f}, "
          f"{artifact['task_metric']} {artifact['task_agreement']:.4f} -> {'ok' if artifact['passed'] else 'FAILED'}")
    if plan and code == 0:
        shapes = engine_shapes(adapter, batches)
        library = trt_engine.find_plugin_library(args.plugin_library)
        command = trt_engine.trtexec_command(onnx_path, out, library, shapes)
        report["trtexec_command"] = command
        if not trt_engine.tensorrt_available():
            report["engine"] = {"built": False, "reason": "tensorrt is not importable"}
            print(f"fq-export: TensorRT is not importable here, so {out} was not built. The plugin-form ONNX is "
                  f"{onnx_path}. Build the plugins ({trt_engine.build_command()}) and the engine with:\n  {command}",
                  file=sys.stderr)
            code = EXIT_NO_TENSORRT
        elif library is None:
            report["engine"] = {"built": False, "reason": "plugin library not found"}
            print(f"fq-export: no plugin library: build it with `{trt_engine.build_command()}` or pass "
                  f"--plugin-library", file=sys.stderr)
            code = EXIT_NO_TENSORRT
        else:
            trt_engine.build_engine(onnx_path, out, library, shapes)
            report["engine"] = {"built": True, "path": str(out), "bytes": out.stat().st_size, "library": str(library)}
            print(f"wrote {out} ({out.stat().st_size} bytes)")
    if args.report:
        write_json(args.report, report)
        print(f"wrote {args.report}")
    return code


def export_command(args) -> int:
    from .cli import load_quantized

    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    adapter, meta = load_quantized(args.checkpoint, args.device)
    return export_and_report(adapter, args, {"checkpoint": str(args.checkpoint), "model": meta.get("model"),
                                             "config": meta.get("config")})


def run_command(args) -> int:
    from .cli import _quantize

    if Path(args.out).suffix not in (".onnx", ".plan"):
        raise ValueError(f"--out must end in .onnx or .plan, got {args.out}")
    adapter, config, report = _quantize(args)
    return export_and_report(adapter, args, {"quantization": report})
