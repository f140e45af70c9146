"""The plugin-form contract: custom ONNX node types that TensorRT maps to ``plugins_trt/``.

TensorRT's ONNX parser resolves a node it does not know by looking up a plugin creator whose
name is the node's ``op_type``, whose version is the node attribute ``plugin_version`` and whose
namespace is ``plugin_namespace``; the remaining attributes become the creator's plugin fields.
The converters emit exactly these nodes, the onnxruntime custom-op implementation executes
them, and the TensorRT plugins register these names. Every attribute is an ONNX INT.

``FQHadamardRotation``: ``y = R x`` (``transpose=0``) or ``y = R^T x`` (``transpose=1``) on the
    last axis, ``R`` the randomized Hadamard rotation of ``fq_export.rotations`` with
    attributes ``dim``, ``seed``. Input/output ``(..., dim)``, fp16 or fp32.
``FQFrameTransform``: frame synthesis ``v = T z`` (``transpose=0``: ``(..., K) -> (..., d)``)
    or analysis ``c = T^T u`` (``transpose=1``: ``(..., d) -> (..., K)``) of the real TFF of
    ``fq_export.frames`` with attributes ``k``, ``rho``, ``d`` (``K = k * rho``).
``FQPackedMatMul``: ``z = x @ D_hat^T`` with ``D_hat = scale * (codes - zero)`` row-wise.
    Inputs: ``x (..., in_features)`` fp16/fp32; ``packed_codes (out_features, words)`` int32 in
    the layout of ``fq_export.packing`` (version ``layout_version``); ``scale`` and ``zero``
    ``(out_features,)`` fp16. Attributes ``bits``, ``in_features``, ``out_features``,
    ``layout_version``. Output ``(..., out_features)``.
"""
from __future__ import annotations

PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
#: the ONNX domain of plugin-form nodes (TensorRT ignores the domain; onnxruntime needs one)
ONNX_DOMAIN = "fq.trt"

ROTATION_OP = "FQHadamardRotation"
FRAME_OP = "FQFrameTransform"
MATMUL_OP = "FQPackedMatMul"

ATTRIBUTES = {
    ROTATION_OP: ("dim", "seed", "transpose"),
    FRAME_OP: ("k", "rho", "d", "transpose"),
    MATMUL_OP: ("bits", "in_features", "out_features", "layout_version"),
}
