"""Quantized model -> fp32 ONNX -> plugin/standard form -> validated artifact with a size report."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import onnx

from fq_export.accounting import model_effective_bits
from fq_export.files import finish, temporary_dir, temporary_file
from fq_export.layer import FrameQuantLinear
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
    store them in fp32), and the honest effective bits of docs/design.md ("Effective bits")."""
    totals = model_effective_bits(model)
    weights = sum(layer.in_features * layer.out_features for layer in layers.values())
    fp32_weight_bytes = 4 * weights
    codes_bytes = sum(layer.packed_codes.numel() * 4 + layer.scale.numel() * 2 + layer.zero.numel() * 2
                      for layer in layers.values())
    bias_bytes = sum(4 * layer.bias.numel() for layer in layers.values() if layer.bias is not None)
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


def rejected_path(path: str | Path) -> Path:
    """Where an artifact that failed validation is kept: ``X.onnx`` -> ``X.rejected.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rejected{path.suffix}")


def _save(model: onnx.ModelProto, path: Path) -> int:
    onnx.save_model(model, str(path))
    return path.stat().st_size


def check_references(adapter: ModelAdapter, full_precision: dict | None = None) -> dict:
    """Every quantized layer of ``adapter`` against the independent references of
    :mod:`converters.validate` (its recipe recomputed in numpy; with ``full_precision["weights"]``,
    the full-precision layers). Raises ``ValidationError`` naming the failing layers."""
    quantized = {n: m for n, m in adapter.model.named_modules() if isinstance(m, FrameQuantLinear)}
    recipe = validate.recipe_reference(quantized)
    fp_layers = validate.full_precision_layers(quantized, (full_precision or {}).get("weights") or {})
    report = {"recipe": {"layers": len(recipe), "passed": all(r["passed"] for r in recipe),
                         "max_rel_err": max((max(r.get("dense_rel_err", 0.0), r.get("forward_rel_err", 0.0))
                                             for r in recipe), default=0.0),
                         "tolerance": validate.RECIPE_TOLERANCE},
              "full_precision_layers": {"layers": len(fp_layers), "passed": all(r["passed"] for r in fp_layers),
                                        "least_cosine_over_rtn": min((r["cosine"] / max(r["rtn_cosine"], 1e-12)
                                                                      for r in fp_layers), default=None),
                                        "gate": validate.FULL_PRECISION_RATIO}}
    problems = validate.reference_failures(recipe, fp_layers)
    if problems:
        more = f" (and {len(problems) - 3} more layers)" if len(problems) > 3 else ""
        raise ValidationError("the quantized model fails its independent reference, so nothing was exported: "
                              + "; ".join(problems[:3]) + more, {"artifacts": {}, "reference": report})
    return report


def export_artifacts(adapter: ModelAdapter, forms: list[str], out_paths: dict[str, Path], example: dict,
                     validation_batches: list[dict], fp32_path: Path | None = None, validate_artifacts: bool = True,
                     accuracy_level: int = 4, embeddings: str = "fp32", full_precision: dict | None = None,
                     workspace: Path | None = None) -> dict:
    """Export ``adapter`` (quantized in place) in each form; validate; return the report.

    ``embeddings``: ``fp32`` or a mode of :mod:`converters.embeddings`; the model's tables are
    quantized in place first, and the report gives the effect on the task output beside the bytes.
    ``full_precision``: optional ``{"outputs": [task outputs of the full-precision model on
    validation_batches], "weights": {layer name: full-precision weight}}`` for the independent
    references (see :mod:`converters.validate`).

    Every temporary (the fp32 intermediate, each artifact before validation) lives in the output's
    folder under a unique ``.fq-export-tmp-*`` name and is removed on every exit path; ``workspace``
    (a folder on the outputs' file system, which the caller removes) may hold them instead. An artifact
    reaches its path only once it has passed; one that fails is kept as ``X.rejected.onnx``.
    Raises ``ValidationError`` (with the report) when an artifact or a reference check fails.
    """
    report: dict = {"artifacts": {}}
    if validate_artifacts:
        report["reference"] = check_references(adapter, full_precision)
    tables = []
    if embeddings != "fp32":
        before = [validate.task_output(adapter, b) for b in validation_batches]
        tables = embedding_tables.quantize_embeddings(adapter.model, embeddings)
        after = [validate.task_output(adapter, b) for b in validation_batches]
        report["embeddings"] = {"mode": embeddings, "tables": [t.name for t in tables],
                                "stored_bytes": sum(t.stored_bytes for t in tables),
                                "fp32_bytes": sum(4 * t.values.size for t in tables),
                                **validate.output_agreement(adapter, before, after)}
    work_dir = Path(next(iter(out_paths.values()))).parent
    work_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    with contextlib.nullcontext(Path(workspace)) if workspace else temporary_dir(work_dir) as tmp:
        fp32 = Path(fp32_path) if fp32_path else tmp / "fp32.onnx"
        start = time.perf_counter()
        layers = export_onnx(adapter, example, fp32)
        report["torch_export_seconds"] = time.perf_counter() - start
        fp32_bytes = fp32.stat().st_size
        report["fp32_onnx"] = {"bytes": fp32_bytes, "path": str(fp32_path) if fp32_path else None}
        base = onnx.load(str(fp32))
        for form in forms:
            start = time.perf_counter()
            model, sizes = rewrite.rewrite_graph(base, layers, form, accuracy_level)
            model, quantized_tables = embedding_tables.rewrite_gathers(model, tables)
            if len(quantized_tables) != len(tables):
                missing = sorted({t.name for t in tables} - set(quantized_tables))
                raise rewrite.ConversionError(f"embedding tables not found as Gather-only initializers: {missing}")
            model = rewrite.check_model(model)
            path = Path(out_paths[form])
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary_file(tmp if workspace else path.parent, suffix=".onnx") as staged:
                nbytes = _save(model, staged)
                entry = {"form": form, "path": str(path), "bytes": nbytes,
                         "rewrite_seconds": time.perf_counter() - start, "quantized_layers": len(layers),
                         "checker": "onnx.checker full_check + strict shape inference: ok"}
                entry["size"] = size_report(layers, sizes["layers"], sizes["shared_table_bytes"], fp32_bytes, nbytes,
                                            adapter.model)
                if validate_artifacts:
                    session = validate.make_session(staged, form)
                    entry["provider"] = session.get_providers()[0]
                    entry.update(validate.compare(adapter, session, validation_batches,
                                                  validate.tolerances_for(form, accuracy_level)))
                    if full_precision and full_precision.get("outputs") is not None:
                        entry["full_precision"] = {
                            "task_metric": "embedding_cosine" if adapter.family == "encoder" else "argmax_agreement",
                            **validate.full_precision_agreement(adapter, session, validation_batches,
                                                                full_precision["outputs"])}
                    del session
                    if not entry["passed"]:
                        entry["worst_layers"] = validate.layer_blame(adapter, staged, form, sizes["io"],
                                                                     validation_batches[0])
                        worst = entry["worst_layers"][0]["layer"] if entry["worst_layers"] else "?"
                        rejected = rejected_path(path)
                        finish(staged, rejected)
                        entry["path"], entry["rejected_path"] = None, str(rejected)
                        if entry["nonfinite_batches"]:
                            figures = (f"outputs hold NaN/Inf in {entry['nonfinite_batches']} of "
                                       f"{entry['samples']} batches")
                        else:
                            figures = (f"max_abs_err {entry['max_abs_err']:.3g} (tolerance "
                                       f"{entry['tolerances']['max_abs_err']:.3g}), cosine {entry['cosine']:.6f}, "
                                       f"{entry['task_metric']} {entry['task_agreement']:.4f}")
                        failures.append(f"{form} form failed validation ({figures}); worst layer: {worst}; "
                                        f"{path} was not written, the artifact is kept as {rejected}")
                if entry["path"] is not None:
                    finish(staged, path)
            report["artifacts"][form] = entry
    if failures:
        raise ValidationError("; ".join(failures), report)
    return report
