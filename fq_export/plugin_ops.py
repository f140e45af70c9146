"""The plugin-form contract: custom ONNX node types that TensorRT maps to ``plugins_trt/``.

TensorRT's ONNX parser resolves a node it does not know by looking up a plugin creator whose
name is the node's ``op_type``, whose version is the node attribute ``plugin_version`` and whose
namespace is ``plugin_namespace`` (both STRING attributes, ``"1"`` and ``""``); the remaining
attributes (ONNX INTs) become the creator's plugin fields. The node's domain is ignored by
TensorRT; it is ``ai.onnx.contrib``, the domain of onnxruntime-extensions' Python custom ops, so
the very file TensorRT parses also runs in onnxruntime (``converters.ort_ops``). The converters
emit exactly these nodes and the TensorRT plugins register these names.

``FQHadamardRotation``: ``y = R x`` (``transpose=0``) or ``y = R^T x`` (``transpose=1``) on the
    last axis, ``R`` the randomized Hadamard rotation of ``fq_export.rotations`` with
    attributes ``dim``, ``seed``. Input/output ``(..., dim)``, fp16 or fp32.
``FQFrameTransform``: frame synthesis ``v = T z`` (``transpose=0``: ``(..., K) -> (..., d)``)
    or analysis ``c = T^T u`` (``transpose=1``: ``(..., d) -> (..., K)``) of the real TFF of
    ``fq_export.frames`` with attributes ``k``, ``rho``, ``d`` (``K = k * rho``).
``FQPackedMatMul``: ``z = x @ D_hat^T`` with ``D_hat = scale * (codes - zero)`` row-wise.
    Inputs: ``x (..., in_features)`` fp16/fp32; ``packed_codes (out_features, words)`` int32 in
    the layout of ``fq_export.packing`` (version ``layout_version``); ``scale`` and ``zero``
    ``(out_features,)``: fp16 initializers in the file, each behind a ``Cast`` to fp32 (TensorRT
    folds it; onnxruntime-extensions' Python ops take no fp16 inputs); the plugin accepts fp16 or fp32. Attributes ``bits``, ``in_features``, ``out_features``,
    ``layout_version``. Output ``(..., out_features)``.
``FQFrameLinear``: the whole layer ``y = R_out T_out D_hat T_in^T R_in^T x + bias`` in one node (the
    ``plugin-layer`` form), so that TensorRT runs the fused kernels (one launch for one row, the
    dense form for many rows) instead of five plugins. Inputs: ``x (..., in_dim)`` fp16/fp32,
    ``packed_codes``, ``scale``, ``zero`` as for ``FQPackedMatMul``, ``bias (out_dim,)`` fp32
    (zeros for a layer without one). Attributes: ``in_dim``, ``out_dim``; per side ``rotate_in``
    (0/1) with ``seed_in``, ``frame_in_k`` and ``frame_in_rho`` (both 0: no frame; else the frame
    ``(k, rho, in_dim)``), and the same with ``_out``; ``bits``, ``layout_version``. ``K_in`` is
    ``frame_in_k * frame_in_rho`` (``in_dim`` without a frame), ``K_out`` likewise. Output
    ``(..., out_dim)``.
"""
from __future__ import annotations

PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
#: the ONNX domain of plugin-form nodes (TensorRT ignores it; onnxruntime-extensions runs it)
ONNX_DOMAIN = "ai.onnx.contrib"

ROTATION_OP = "FQHadamardRotation"
FRAME_OP = "FQFrameTransform"
MATMUL_OP = "FQPackedMatMul"
LAYER_OP = "FQFrameLinear"

ATTRIBUTES = {
    ROTATION_OP: ("dim", "seed", "transpose"),
    FRAME_OP: ("k", "rho", "d", "transpose"),
    MATMUL_OP: ("bits", "in_features", "out_features", "layout_version"),
    LAYER_OP: ("in_dim", "out_dim", "rotate_in", "seed_in", "frame_in_k", "frame_in_rho", "rotate_out", "seed_out",
               "frame_out_k", "frame_out_rho", "bits", "layout_version"),
}


def layer_attributes(layer) -> dict:
    """The ``FQFrameLinear`` attributes of a ``FrameQuantLinear`` (``in_recipe``/``out_recipe``)."""
    attrs = {"in_dim": layer.in_features, "out_dim": layer.out_features, "bits": layer.bits,
             "layout_version": layer.layout_version}
    for side, recipe in (("in", layer.in_recipe), ("out", layer.out_recipe)):
        attrs[f"rotate_{side}"] = int(recipe.rotation is not None)
        attrs[f"seed_{side}"] = recipe.rotation.seed if recipe.rotation is not None else 0
        attrs[f"frame_{side}_k"] = recipe.frame.k if recipe.frame is not None else 0
        attrs[f"frame_{side}_rho"] = recipe.frame.rho if recipe.frame is not None else 0
    return attrs
