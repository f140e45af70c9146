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
artifact and fed the layer's captured PyTorch input. Non-finite outputs (NaN/Inf, from the
artifact or from PyTorch) always fail, and are reported as such.

The comparison above is against the same quantized model, so a model that is consistently wrong
would pass it. Two independent references close that gap:

* :func:`recipe_reference`: each layer's ``W_hat`` recomputed from its recipe and codes alone
  (numpy, float64: codes unpacked, dequantized, dense rotation and frame matrices built afresh)
  against the layer's ``dense_weight()`` (what the exporter embeds) and its forward pass;
* :func:`full_precision_layers`: each layer against the full-precision layer it replaces. A
  quantization at ``b`` bits keeps ``W_hat`` correlated with ``W`` (cosine at least
  ``FULL_PRECISION_RATIO`` times that of plain round-to-nearest at ``b`` bits, whatever the
  method); a layer built with another rotation seed, frame or rotation than its codes were made
  with is uncorrelated with ``W`` (cosine near 0).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from fq_export.files import temporary_file
from fq_export.models.base import ModelAdapter

log = logging.getLogger(__name__)

TOLERANCES = {"rel_max_abs_err": 1e-3, "abs_floor": 1e-5, "cosine": 0.9999,
              "task_agreement": {"encoder": 0.9999, "causal_lm": 0.99, "vit": 0.99}}
# The packed form at MatMulNBits accuracy level 4 rounds each layer's frame coefficients to int8
# (per block of 32, inside the op): about 0.5 % relative error per layer, as onnxruntime's own
# int8-activation exports have. Its gate is the int8 one; level 0 keeps the fp32 gate above.
INT8_ACTIVATION_TOLERANCES = {"rel_max_abs_err": 2e-2, "abs_floor": 1e-5, "cosine": 0.999,
                              "task_agreement": {"encoder": 0.999, "causal_lm": 0.97, "vit": 0.97}}


#: relative error allowed between the independent float64 ``W_hat`` and the layer's own
#: (float64 ``dense_weight`` and float32 forward pass); a wrong recipe or layer is off by O(1)
RECIPE_TOLERANCE = 1e-4
#: a layer's cosine with the full-precision weight must reach this share of plain RTN's
FULL_PRECISION_RATIO = 0.5
#: layers wider than this (either side) are left out of the dense reference (memory)
DENSE_REFERENCE_MAX_DIM = 8192


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
    """The figures of the module docstring over ``batches``. Non-finite outputs fail: the batches
    holding NaN/Inf are counted (``nonfinite_batches``) and the figures are NaN."""
    max_err, ref_max, cos_min, agree, total, emb_cos, nonfinite = 0.0, 0.0, 1.0, 0, 0, [], 0
    for batch in batches:
        ref = _forward(adapter, batch)
        out = session.run(["output"], _feeds(adapter, batch))[0]
        if out.shape != ref.shape:
            raise ValueError(f"artifact output shape {out.shape} != PyTorch output shape {ref.shape}")
        if not (np.isfinite(out).all() and np.isfinite(ref).all()):
            nonfinite += 1
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
    if nonfinite:
        max_err = cos_min = task = float("nan")
    else:
        task = float(np.mean(emb_cos)) if adapter.family == "encoder" else agree / max(total, 1)
    tol_abs = tolerances["rel_max_abs_err"] * ref_max + tolerances["abs_floor"]
    task_tol = tolerances["task_agreement"][adapter.family]
    return {
        "max_abs_err": max_err, "reference_max_abs": ref_max, "cosine": cos_min, "task_agreement": task,
        "task_metric": {"encoder": "embedding_cosine", "causal_lm": "next_token_agreement", "vit": "top1_agreement"}[adapter.family],
        "samples": len(batches), "nonfinite_batches": nonfinite,
        "tolerances": {"max_abs_err": tol_abs, "cosine": tolerances["cosine"], "task_agreement": task_tol},
        "passed": bool(not nonfinite and max_err <= tol_abs and cos_min >= tolerances["cosine"] and task >= task_tol),
    }


def full_precision_agreement(adapter: ModelAdapter, session, batches: list[dict],
                             reference: list[np.ndarray]) -> dict:
    """How the artifact's task output agrees with the full-precision model's (``reference``: its
    task outputs for ``batches``): mean and least row cosine, and the argmax agreement for
    classifiers and LMs. A figure of the quantization's quality, reported beside the gates."""
    outs = [_rows(session.run(["output"], _feeds(adapter, b))[0]) for b in batches]
    if not all(np.isfinite(o).all() for o in outs):
        return {"mean_cosine": float("nan"), "min_cosine": float("nan"), "nonfinite": True}
    return output_agreement(adapter, [_rows(r) for r in reference], outs)


# ---- independent references --------------------------------------------------------------------

def _dense_side(recipe, cache: dict) -> np.ndarray:
    """Dense ``P = R T`` (``dim x size``, float64) of a side recipe, from freshly built objects."""
    from fq_export.frames import TightFusionFrame
    from fq_export.rotations import HadamardRotation

    if recipe.frame is not None:
        key = ("frame", recipe.frame)
        if key not in cache:
            cache[key] = TightFusionFrame(recipe.frame).dense()
        p = cache[key]
    else:
        p = np.eye(recipe.dim)
    if recipe.rotation is not None:
        p = HadamardRotation(recipe.rotation).dense() @ p
    return p


def reference_d_hat(layer) -> np.ndarray:
    """``D_hat`` (``K_out x K_in``, float64) from the layer's packed codes, scales and zeros alone."""
    from fq_export import packing

    k_in = layer.in_recipe.size
    codes = packing.unpack_codes(layer.packed_codes.detach().cpu(), layer.bits, k_in).numpy().astype(np.float64)
    scale = layer.scale.detach().cpu().numpy().astype(np.float64).reshape(codes.shape[0], -1)
    zero = layer.zero.detach().cpu().numpy().astype(np.float64).reshape(codes.shape[0], -1)
    group = layer.group_size or k_in
    scale = np.repeat(scale, group, axis=1)[:, :k_in]
    zero = np.repeat(zero, group, axis=1)[:, :k_in]
    return scale * (codes - zero)


def recipe_reference(layers: dict, probes: int = 8, seed: int = 0) -> list[dict]:
    """Each layer's ``W_hat`` recomputed independently from its recipe and codes (numpy, float64)
    against the layer's ``dense_weight()`` and forward pass, on random probe vectors.

    One record per layer: ``dense_rel_err``, ``forward_rel_err``, ``finite`` and ``passed``
    (both errors within ``RECIPE_TOLERANCE`` and every stored value finite).
    """
    rng = np.random.default_rng(seed)
    cache: dict = {}
    records = []
    for name, layer in layers.items():
        record = {"layer": name}
        finite = all(bool(torch.isfinite(t).all()) for t in (layer.scale, layer.zero) + (
            (layer.bias,) if layer.bias is not None else ()))
        record["finite"] = finite
        dims = (layer.in_features, layer.out_features, layer.in_recipe.size, layer.out_recipe.size)
        if max(dims) > DENSE_REFERENCE_MAX_DIM:
            record.update(skipped=f"wider than {DENSE_REFERENCE_MAX_DIM}", passed=finite)
            records.append(record)
            continue
        p_in, p_out = _dense_side(layer.in_recipe, cache), _dense_side(layer.out_recipe, cache)
        x = rng.standard_normal((layer.in_features, probes))
        y_ref = p_out @ (reference_d_hat(layer) @ (p_in.T @ x))
        norm = max(float(np.linalg.norm(y_ref)), 1e-30)
        y_dense = layer.dense_weight().cpu().numpy() @ x
        with torch.no_grad():
            xt = torch.as_tensor(x.T, dtype=torch.float32, device=layer.packed_codes.device)
            y_fwd = layer(xt).double().cpu().numpy().T
        if layer.bias is not None:
            y_fwd = y_fwd - layer.bias.detach().double().cpu().numpy()[:, None]
        record["dense_rel_err"] = float(np.linalg.norm(y_dense - y_ref) / norm)
        record["forward_rel_err"] = float(np.linalg.norm(y_fwd - y_ref) / norm)
        record["passed"] = bool(finite and record["dense_rel_err"] <= RECIPE_TOLERANCE
                                and record["forward_rel_err"] <= RECIPE_TOLERANCE)
        records.append(record)
    return records


def _rtn_cosine(weight: np.ndarray, bits: int) -> float:
    """Cosine of ``weight`` with its plain per-row min/max round-to-nearest at ``bits`` bits."""
    maxq = 2**bits - 1
    lo = np.minimum(weight.min(axis=1, keepdims=True), 0.0)
    hi = np.maximum(weight.max(axis=1, keepdims=True), 0.0)
    scale = np.where(hi - lo > 0, (hi - lo) / maxq, 1.0)
    zero = np.round(-lo / scale)
    w_hat = scale * (np.clip(np.round(weight / scale) + zero, 0, maxq) - zero)
    return float((weight * w_hat).sum() / max(np.linalg.norm(weight) * np.linalg.norm(w_hat), 1e-300))


def full_precision_layers(layers: dict, weights: dict, probes: int = 32, seed: int = 0) -> list[dict]:
    """Each quantized layer against the full-precision weight it replaces (``weights`` by name).

    ``cosine``: of ``W`` and ``W_hat``, estimated on Gaussian probes through the layer's forward
    pass; ``rtn_cosine``: that of plain round-to-nearest of ``W`` at the layer's bits; ``passed``:
    ``cosine >= FULL_PRECISION_RATIO * rtn_cosine`` (and finite).
    """
    generator = torch.Generator().manual_seed(seed)
    records = []
    for name, layer in layers.items():
        if name not in weights:
            continue
        w = weights[name].detach().to(torch.float64).cpu()
        if tuple(w.shape) != (layer.out_features, layer.in_features):
            records.append({"layer": name, "cosine": float("nan"), "rtn_cosine": float("nan"), "passed": False,
                            "reason": f"shape {tuple(w.shape)} != {(layer.out_features, layer.in_features)}"})
            continue
        x = torch.randn(probes, layer.in_features, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            y_hat = layer(x.to(torch.float32).to(layer.packed_codes.device)).double().cpu()
        if layer.bias is not None:
            y_hat = y_hat - layer.bias.detach().double().cpu()
        y = x @ w.T
        cos = float((y * y_hat).sum() / max(float(y.norm() * y_hat.norm()), 1e-300))
        rtn = _rtn_cosine(w.numpy(), layer.bits)
        passed = bool(np.isfinite(cos) and cos >= FULL_PRECISION_RATIO * rtn)
        records.append({"layer": name, "cosine": cos, "rtn_cosine": rtn, "passed": passed})
    return records


def reference_failures(recipe: list[dict], full_precision: list[dict]) -> list[str]:
    """One sentence per layer that fails an independent reference (empty: all pass)."""
    out = []
    for r in recipe:
        if r["passed"]:
            continue
        if not r["finite"]:
            out.append(f"layer {r['layer']}: its scales, zeros or bias hold NaN or Inf")
        else:
            out.append(f"layer {r['layer']}: W_hat recomputed from its recipe and codes differs from the layer's "
                       f"own (relative error {max(r['dense_rel_err'], r['forward_rel_err']):.3g}): the layer "
                       "object does not implement its recipe")
    for r in full_precision:
        if not r["passed"]:
            why = r.get("reason") or (f"cosine {r['cosine']:.3f} with the full-precision weight, where plain "
                                      f"round-to-nearest gets {r['rtn_cosine']:.3f}")
            out.append(f"layer {r['layer']} does not reproduce the full-precision layer it replaces ({why}): its "
                       "recipe (rotation seed, frame) does not match its codes, or it was made from other weights")
    return out


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
        with temporary_file(Path(path).parent, suffix=".layer.onnx") as tmp:
            onnx.save_model(sub, str(tmp))
            sess = make_session(tmp, form)
            x, y = captured[name]
            out = sess.run([y_name], {x_name: x.numpy()})[0]
        err = float(np.linalg.norm(out - y.numpy()) / max(float(np.linalg.norm(y.numpy())), 1e-30))
        records.append({"layer": name, "rel_err": err, "max_abs_err": float(np.abs(out - y.numpy()).max())})
    records.sort(key=lambda r: -r["rel_err"])
    return records[:top]
