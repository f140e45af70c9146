"""Quantized model -> fp32 ONNX -> plugin/standard form -> validated artifact with a size report."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import onnx

from fq_export.accounting import model_effective_bits
from fq_export.models.base import ModelAdapter

from . import embeddings as embedding_tables
from . import rewrite, validate
from .torch_export import export_onnx

log = logging.getLogger(__name__)


class ValidationError(RuntimeError):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def size_report(layers, per_layer_bytes: dict[str, int], shared_bytes: int, fp32_onnx_bytes: int,
                artifact_bytes: int, model) -> dict:
    """Bytes of the quantized layers in the artifact against their fp32 bytes (biases aside: both
    store them in fp32), and the honest effective bits of DESIGN.md section 2."""
    totals = model_effective_bits(model)
    weights = sum(l.in_features * l.out_features for l in layers.values())
    fp32_weight_bytes = 4 * weights
    codes_bytes = sum(l.packed_codes.numel() * 4 + l.scale.numel() * 2 + l.zero.numel() * 2 for l in layers.values())
    bias_bytes = sum(4 * l.bias.numel() for l in layers.values() if l.bias is not None)
    stored = sum(per_layer_bytes.values()) - bias_bytes  # codes, scales, zeros (+ packed signs)
    budget = totals["effective_bits"] / 32 * fp32_weight_bytes
    return {
        "artifact_bytes": artifact_bytes,
        "fp32_onnx_bytes": fp32_onnx_bytes,
        "compression_vs_fp32_onnx": fp32_onnx_bytes / artifact_bytes,
        "effective_bits": totals["effective_bits"],
        "quantized_weights": weights,
        "quantized_layers_fp32_bytes": fp32_weight_bytes,
        "quantized_layers_codes_scales_bytes": codes_bytes,
        "quantized_layers_stored_bytes": stored,
        "per_layer_extra_bytes": stored - codes_bytes,
        "shared_table_bytes": shared_bytes,
        "budget_bytes_effective_bits_over_32": budget,
        "codes_within_budget": bool(codes_bytes <= budget + 1e-6),
        "file_bits_per_quantized_weight": 8 * (stored + shared_bytes) / weights,
    }


def export_artifacts(adapter: ModelAdapter, forms: list[str], out_paths: dict[str, Path], example: dict,
                     validation_batches: list[dict], fp32_path: Path | None = None, validate_artifacts: bool = True,
                     accuracy_level: int = 4, embeddings: str = "fp32") -> dict:
    """Export ``adapter`` (quantized in place) in each form; validate; return the report.

    ``embeddings``: ``fp32`` or a mode of :mod:`converters.embeddings`; the model's tables are
    quantized in place first, and the report gives the effect on the task output beside the bytes.

    Raises ``ValidationError`` (with the report) when an artifact fails its tolerance.
    """
    report: dict = {"artifacts": {}}
    tables = []
    if embeddings != "fp32":
        before = [validate.task_output(adapter, b) for b in validation_batches]
        tables = embedding_tables.quantize_embeddings(adapter.model, embeddings)
        after = [validate.task_output(adapter, b) for b in validation_batches]
        report["embeddings"] = {"mode": embeddings, "tables": [t.name for t in tables],
                                "stored_bytes": sum(t.stored_bytes for t in tables),
                                "fp32_bytes": sum(4 * t.values.size for t in tables),
                                **validate.output_agreement(adapter, before, after)}
    with tempfile.TemporaryDirectory(prefix="fq-export-") as tmp:
        fp32 = Path(fp32_path) if fp32_path else Path(tmp) / "fp32.onnx"
        start = time.perf_counter()
        layers = export_onnx(adapter, example, fp32)
        report["torch_export_seconds"] = time.perf_counter() - start
        fp32_bytes = fp32.stat().st_size
        report["fp32_onnx"] = {"bytes": fp32_bytes, "path": str(fp32_path) if fp32_path else None}
        base = onnx.load(str(fp32))
        failures = []
        for form in forms:
            start = time.perf_counter()
            model, sizes = rewrite.rewrite_graph(base, layers, form, accuracy_level)
            model, quantized_tables = embedding_tables.rewrite_gathers(model, tables)
            if len(quantized_tables) != len(tables):
                missing = sorted({t.name for t in tables} - set(quantized_tables))
                raise rewrite.ConversionError(f"embedding tables not found as Gather-only initializers: {missing}")
            model = rewrite.check_model(model)
            path = Path(out_paths[form])
            nbytes = rewrite.save_model(model, path)
            entry = {"form": form, "path": str(path), "bytes": nbytes, "rewrite_seconds": time.perf_counter() - start,
                     "quantized_layers": len(layers), "checker": "onnx.checker full_check + strict shape inference: ok"}
            entry["size"] = size_report(layers, sizes["layers"], sizes["shared_table_bytes"], fp32_bytes, nbytes,
                                        adapter.model)
            if validate_artifacts:
                session = validate.make_session(path, form)
                entry["provider"] = session.get_providers()[0]
                entry.update(validate.compare(adapter, session, validation_batches,
                                              validate.tolerances_for(form, accuracy_level)))
                if not entry["passed"]:
                    entry["worst_layers"] = validate.layer_blame(adapter, path, form, sizes["io"], validation_batches[0])
                    worst = entry["worst_layers"][0]["layer"] if entry["worst_layers"] else "?"
                    failures.append(f"{form} form failed validation (max_abs_err {entry['max_abs_err']:.3g}, "
                                    f"cosine {entry['cosine']:.6f}, task_agreement {entry['task_agreement']:.4f}); "
                                    f"worst layer: {worst}")
            report["artifacts"][form] = entry
    if failures:
        raise ValidationError("; ".join(failures), report)
    return report

