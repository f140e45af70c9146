"""``fq-export export`` and the one-command ``fq-export --model M --r R --out X.onnx|engine.plan`` (``run``).

Both end in :func:`export_and_report`: export to ONNX in the asked form, validate against the
quantized PyTorch model in onnxruntime and against independent references (each layer's recipe
recomputed in numpy; the full-precision model's layers and outputs), write the report. Exit 1
and the failing layer named when a check fails: nothing is written at ``--out`` (the artifact is
kept as ``X.rejected.onnx``). ``--out *.plan`` writes the plugin form next to the plan and builds
the engine through ``plugins_trt`` when ``tensorrt`` imports; otherwise it prints the ``trtexec``
command that would build it and exits with code 3.
"""
from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

from .common import UserError, _export_args, _model_args, _quant_args, _quantize, load_quantized, load_source

log = logging.getLogger(__name__)

EXIT_VALIDATION_FAILED = 1
EXIT_NO_TENSORRT = 3
OUTPUTS = {"out": (".onnx", ".plan"), "report": (".json",)}


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a saved quantization to ONNX (and validate it)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cpu")
    _export_args(p)

    p = sub.add_parser("run", help="quantize, export and validate in one command (the default command)")
    _model_args(p, default="minilm")
    _quant_args(p)
    _export_args(p)


def check_export(args) -> None:
    from fq_export.checkpoint import read_metadata

    read_metadata(args.checkpoint)  # exists, is a checkpoint, recipes intact: before any work


def check_run(args) -> None:
    from .common import _config, check_calibration_source

    _config(args)
    check_calibration_source(args)


def validation_batches(adapter, samples: int, seed: int = 0) -> tuple[list[dict], str]:
    """Held-out real inputs (never the calibration split), in small padded batches."""
    import torch

    from calib import text as text_data
    from calib.sources import calibration_batches
    from fq_export.models.text import sentence_batches, token_windows

    if samples < 1:
        raise ValueError(f"--validate-samples must be positive, got {samples}")
    if adapter.family == "encoder":
        sentences = text_data.stdlib_sentences("eval")
        if samples > len(sentences):
            raise UserError(f"--validate-samples {samples} exceeds the {len(sentences)} held-out sentences")
        sentences = random.Random(seed).sample(sentences, samples)
        return sentence_batches(adapter, sentences, batch_size=min(8, samples)), "python-stdlib-docstrings:eval"
    if adapter.family == "causal_lm":
        windows = token_windows(adapter, text_data.stdlib_corpus("eval"), 128, samples)
        if len(windows) < samples:
            raise UserError(f"--validate-samples {samples} exceeds the {len(windows)} held-out 128-token windows")
        batches = [{"input_ids": torch.cat([w["input_ids"] for w in windows[i:i + 4]])} for i in range(0, len(windows), 4)]
        return batches, "python-stdlib-docstrings:eval (128-token windows)"
    return calibration_batches(adapter, None, samples, seed + 1, split="eval")


def full_precision_reference(fp_adapter, batches: list[dict]) -> dict:
    """What validation compares against besides the quantized model: the full-precision model's task
    outputs on ``batches`` and the weights of its block linears (the layers a quantization replaces)."""
    from converters import validate

    outputs = [validate.task_output(fp_adapter, b) for b in batches]
    weights = {n: fp_adapter.model.get_submodule(n).weight.detach() for n in fp_adapter.linear_names()}
    return {"outputs": outputs, "weights": weights}


def engine_shapes(adapter, batches: list[dict]) -> dict:
    """(min, opt, max) shapes of the engine's inputs."""
    if adapter.family == "vit":
        c, h, w = batches[0]["pixel_values"].shape[1:]
        return {"pixel_values": ((1, c, h, w), (8, c, h, w), (64, c, h, w))}
    names = ["input_ids", "attention_mask"] if adapter.family == "encoder" else ["input_ids"]
    top = min(adapter.max_length, 512)
    return {n: ((1, 1), (8, 128), (32, top)) for n in names}


def _figures(artifact: dict) -> str:
    if artifact.get("nonfinite_batches"):
        return f"outputs hold NaN/Inf in {artifact['nonfinite_batches']} of {artifact['samples']} batches"
    text = (f"max_abs_err {artifact['max_abs_err']:.3g}, cosine {artifact['cosine']:.6f}, "
            f"{artifact['task_metric']} {artifact['task_agreement']:.4f}")
    fp = artifact.get("full_precision")
    if fp and fp.get("mean_cosine") == fp.get("mean_cosine"):
        agree = fp.get("argmax_agreement")
        text += (f"; against full precision: mean cosine {fp['mean_cosine']:.4f}"
                 + (f", argmax agreement {agree:.4f}" if agree is not None else ""))
    return text


def export_and_report(adapter, args, base_report: dict, batches: list[dict], where: str,
                      full_precision: dict | None = None, workspace: Path | None = None) -> int:
    from converters.export import ValidationError, export_artifacts
    from fq_export.io import write_json
    from plugins_trt import engine as trt_engine

    out = Path(args.out)
    plan = out.suffix == ".plan"
    # Engines take one FQFrameLinear plugin per layer (the fused kernels) unless the five-step
    # plugin form is asked for.
    form = (args.onnx_form if args.onnx_form.startswith("plugin") else "plugin-layer") if plan else args.onnx_form
    onnx_path = out.with_suffix(".plugin.onnx") if plan else out
    report = dict(base_report)
    report["validation_data"] = where
    code = 0
    try:
        result = export_artifacts(adapter, [form], {form: onnx_path}, batches[0], batches,
                                  accuracy_level=args.accuracy_level, embeddings=args.embeddings,
                                  full_precision=full_precision, workspace=workspace)
    except ValidationError as exc:
        result, code = exc.report, EXIT_VALIDATION_FAILED
        print(f"fq-export: validation failed: {exc}", file=sys.stderr)
    report.update(result)
    artifact = result["artifacts"].get(form)
    if artifact is None:  # an independent reference failed: nothing was exported
        report["passed"] = False
    else:
        for key in ("max_abs_err", "cosine", "task_agreement", "provider", "passed", "nonfinite_batches",
                    "full_precision", "rejected_path"):
            report[key] = artifact.get(key)
        report["effective_bits"] = artifact["size"]["effective_bits"]
        report["bytes"] = {"artifact": artifact["bytes"], "fp32_onnx": result["fp32_onnx"]["bytes"]}
        if "embeddings" in result:
            e = result["embeddings"]
            print(f"embeddings {e['mode']}: {e['stored_bytes']} bytes (fp32 {e['fp32_bytes']}); task output against "
                  f"fp32 embeddings: mean cosine {e['mean_cosine']:.6f}, least {e['min_cosine']:.6f}")
        where_written = onnx_path if artifact["passed"] else artifact.get("rejected_path")
        print(f"{form} ONNX {where_written}: {artifact['bytes']} bytes (fp32 export {result['fp32_onnx']['bytes']}), "
              f"effective bits {artifact['size']['effective_bits']:.3f}; onnxruntime {artifact.get('provider')}: "
              f"{_figures(artifact)} -> {'ok' if artifact['passed'] else 'FAILED'}")
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
    from fq_export.files import temporary_dir

    # The temporaries of the whole command (fp32 intermediate, staged artifact) live here, beside --out.
    with temporary_dir(Path(args.out).parent) as workspace:
        state: dict = {}

        def reference(fp_adapter):  # the full-precision model, before the checkpoint's layers go in
            state["batches"], state["where"] = validation_batches(fp_adapter, args.validate_samples, 0)
            state["full_precision"] = full_precision_reference(fp_adapter, state["batches"])

        adapter, meta = load_quantized(args.checkpoint, args.device, before_layers=reference)
        return export_and_report(adapter, args, {"checkpoint": str(args.checkpoint), "model": meta.get("model"),
                                                 "config": meta.get("config")},
                                 state["batches"], state["where"], state["full_precision"], workspace)


def run_command(args) -> int:
    from fq_export.files import temporary_dir

    with temporary_dir(Path(args.out).parent) as workspace:
        adapter, config, report = _quantize(args)
        batches, where = validation_batches(adapter, args.validate_samples, args.seed)
        fp_adapter = load_source(adapter.source, args.device)
        full_precision = full_precision_reference(fp_adapter, batches)
        del fp_adapter
        return export_and_report(adapter, args, {"quantization": report}, batches, where, full_precision, workspace)
