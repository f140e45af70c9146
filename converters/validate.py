"""Prove an exported artifact against PyTorch's quantized model in onnxruntime.

For each held-out batch: the PyTorch output of the quantized model (``adapter.forward``) and the
artifact's output in onnxruntime. Figures:

* ``max_abs_err``: the largest absolute difference over all outputs;
* ``cosine``: the smallest cosine similarity between matching output rows (an embedding, a
  token's logits, an image's logits);
* ``task_agreement``: encoders: mean cosine of the sentence embeddings; causal LMs: the share of
  positions whose next-token argmax agrees; classifiers: the share of images whose top-1 agrees.

Tolerances (both forms compute in fp32; they differ from PyTorch only by the order of float
operations): ``max_abs_err <= 1e-3 * max|reference| + 1e-5``, ``cosine >= 0.9999``,
``task_agreement >= 0.9999`` for encoders and ``>= 0.99`` for argmax agreements (exact ties may
flip). A failure names the worst layer: each quantized layer's subgraph is cut out of the
artifact and fed the layer's captured PyTorch input.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from fq_export.models.base import ModelAdapter

log = logging.getLogger(__name__)

TOLERANCES = {"rel_max_abs_err": 1e-3, "abs_floor": 1e-5, "cosine": 0.9999,
              "task_agreement": {"encoder": 0.9999, "causal_lm": 0.99, "vit": 0.99}}
# The packed form at MatMulNBits accuracy level 4 rounds each layer's frame coefficients to int8
# (per block of 32, inside the op): about 0.5 % relative error per layer, as onnxruntime's own
# int8-activation exports have. Its gate is the int8 one; level 0 keeps the fp32 gate above.
INT8_ACTIVATION_TOLERANCES = {"rel_max_abs_err": 2e-2, "abs_floor": 1e-5, "cosine": 0.999,
                              "task_agreement": {"encoder": 0.999, "causal_lm": 0.97, "vit": 0.97}}


def tolerances_for(form: str, accuracy_level: int) -> dict:
    return INT8_ACTIVATION_TOLERANCES if form == "packed" and accuracy_level == 4 else TOLERANCES
INPUTS = {"encoder": ["input_ids", "attention_mask"], "causal_lm": ["input_ids"], "vit": ["pixel_values"]}


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = []
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        chosen.append("CUDAExecutionProvider")
    return chosen + ["CPUExecutionProvider"]


def make_session(path: str | Path, form: str, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if form.startswith("plugin"):
        from .ort_ops import register

        options.register_custom_ops_library(register())
    return ort.InferenceSession(str(path), options, providers=providers())


def _feeds(adapter: ModelAdapter, batch: dict) -> dict:
    return {n: batch[n].cpu().numpy() for n in INPUTS[adapter.family]}


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).astype(np.float64)


def _forward(adapter: ModelAdapter, batch: dict) -> np.ndarray:
    """The PyTorch model's task output for ``batch`` (float32, as the model shapes it)."""
    with torch.no_grad():
        return adapter.forward({k: v.to(adapter.device) for k, v in batch.items()}).float().cpu().numpy()


def task_output(adapter: ModelAdapter, batch: dict) -> np.ndarray:
    """The task output as float64 rows (embeddings / tokens / images)."""
    return _rows(_forward(adapter, batch))


def output_agreement(adapter: ModelAdapter, before: list[np.ndarray], after: list[np.ndarray]) -> dict:
    """How far ``after`` moved from ``before`` (task outputs): mean and least row cosine, and for
    classifiers and LMs the share of rows whose argmax agrees."""
    a, b = np.concatenate(before), np.concatenate(after)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    result = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    if adapter.family != "encoder":
        result["argmax_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    return result


def compare(adapter: ModelAdapter, session, batches: list[dict], tolerances: dict = TOLERANCES) -> dict:
    """The figures of the module docstring over ``batches``. Non-finite outputs fail (their error is
    reported as infinite, their cosine as NaN)."""
    max_err, ref_max, cos_min, agree, total, emb_cos = 0.0, 0.0, 1.0, 0, 0, []
    for batch in batches:
        ref = _forward(adapter, batch)
        out = session.run(["output"], _feeds(adapter, batch))[0]
        if out.shape != ref.shape:
            raise ValueError(f"artifact output shape {out.shape} != PyTorch output shape {ref.shape}")
        if not np.isfinite(out).all():
            max_err, cos_min = float("inf"), float("nan")
            continue
        max_err = max(max_err, float(np.abs(out - ref).max()))
        ref_max = max(ref_max, float(np.abs(ref).max()))
        a, b = _rows(out), _rows(ref)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        cos_min = min(cos_min, float(cos.min()))
        if adapter.family == "encoder":
            emb_cos.extend(cos.tolist())
        else:
            agree += int((a.argmax(1) == b.argmax(1)).sum())
            total += a.shape[0]
    task = float(np.mean(emb_cos)) if adapter.family == "encoder" else agree / max(total, 1)
    tol_abs = tolerances["rel_max_abs_err"] * ref_max + tolerances["abs_floor"]
    task_tol = tolerances["task_agreement"][adapter.family]
    return {
        "max_abs_err": max_err, "reference_max_abs": ref_max, "cosine": cos_min, "task_agreement": task,
        "task_metric": {"encoder": "embedding_cosine", "causal_lm": "next_token_agreement", "vit": "top1_agreement"}[adapter.family],
        "samples": len(batches),
        "tolerances": {"max_abs_err": tol_abs, "cosine": tolerances["cosine"], "task_agreement": task_tol},
        "passed": bool(max_err <= tol_abs and cos_min >= tolerances["cosine"] and task >= task_tol),
    }


def layer_blame(adapter: ModelAdapter, path: str | Path, form: str, io_names: dict[str, tuple[str, str]],
                batch: dict, top: int = 5) -> list[dict]:
    """Per-layer relative error of the artifact's subgraphs on the layers' captured PyTorch inputs."""
    import onnxruntime as ort  # noqa: F401

    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name in io_names:
        module = adapter.model.get_submodule(name)
        handles.append(module.register_forward_hook(
            lambda mod, args, out, name=name: captured.__setitem__(name, (args[0].detach().float().cpu(), out.detach().float().cpu()))))
    try:
        with torch.no_grad():
            adapter.forward({k: v.to(adapter.device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    model = onnx.load(str(path))
    records = []
    for name, (x_name, y_name) in io_names.items():
        if name not in captured:
            continue
        sub = onnx.utils.Extractor(model).extract_model([x_name], [y_name])
        tmp = Path(path).with_name(f".{Path(path).name}.layer.onnx")
        onnx.save_model(sub, str(tmp))
        try:
            sess = make_session(tmp, form)
            x, y = captured[name]
            out = sess.run([y_name], {x_name: x.numpy()})[0]
        finally:
            tmp.unlink(missing_ok=True)
        err = float(np.linalg.norm(out - y.numpy()) / max(float(np.linalg.norm(y.numpy())), 1e-30))
        records.append({"layer": name, "rel_err": err, "max_abs_err": float(np.abs(out - y.numpy()).max())})
    records.sort(key=lambda r: -r["rel_err"])
    return records[:top]
