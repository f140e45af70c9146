"""Find each quantized linear in an exported ONNX graph and replace it by its five-step subgraph.

Matching: torch's exporters rename weights (``onnx::MatMul_123``, ``val_4``) and may transpose
them, so a layer is found by the exact fp32 values of its dense reconstruction ``W_hat``, in any
of the patterns the exporters emit:

* ``MatMul(x, W^T)`` with ``W^T`` an initializer (constant folding), optionally ``Add(., b)``;
* ``MatMul(x, Transpose(W))``, optionally ``Add(., b)``;
* ``Gemm(x, W, b, transB=1)`` or ``Gemm(x, W^T, b)``.

The node name (``/model/encoder/layer.0/attention/self/query/MatMul``) is checked against the
layer's module path when it carries one. Every quantized layer must be found exactly once;
otherwise the conversion fails and names the missing layers.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fq_export import plugin_ops
from fq_export.files import atomic_write
from fq_export.layer import FrameQuantLinear

from .subgraphs import Builder, dense_weight_t, packed_layer, plugin_layer, plugin_layer_node

log = logging.getLogger(__name__)
FORMS = ("standard", "packed", "plugin", "plugin-layer")


class ConversionError(RuntimeError):
    pass


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(array.tobytes() + str(array.shape).encode()).hexdigest()


@dataclass
class Match:
    name: str
    layer: FrameQuantLinear
    x: gs.Variable
    out: gs.Variable
    nodes: list = field(default_factory=list)  # nodes the subgraph replaces
    bias_in_graph: bool = False  # the bias Add/Gemm-C was matched and is replaced too


def _const(tensor) -> np.ndarray | None:
    """The value of a constant tensor: an initializer, a ``Constant`` node's output, or either behind
    ``Identity`` nodes (torch's exporter deduplicates equal initializers into ``Identity`` chains, e.g.
    the all-zero biases of a freshly initialised model)."""
    for _ in range(16):
        if isinstance(tensor, gs.Constant):
            return tensor.values
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None:
            return None
        if producer.op == "Constant" and "value" in producer.attrs:
            value = producer.attrs["value"]
            return value.values if isinstance(value, gs.Constant) else np.asarray(value)
        if producer.op != "Identity":
            return None
        tensor = producer.inputs[0]
    return None


def _weight_of(node: gs.Node) -> tuple[np.ndarray | None, list]:
    """``(W as (out, in), extra nodes)`` of a MatMul/Gemm whose weight is constant."""
    if node.op == "MatMul":
        w = node.inputs[1]
        values = _const(w)
        if values is not None and values.ndim == 2:
            return values.T, []
        producer = w.inputs[0] if w.inputs else None
        if producer is not None and producer.op == "Transpose" and _const(producer.inputs[0]) is not None:
            perm = producer.attrs.get("perm", [1, 0])
            if list(perm) == [1, 0] and len(w.outputs) == 1:
                return _const(producer.inputs[0]), [producer]
    if node.op == "Gemm":
        values = _const(node.inputs[1])
        if values is not None and float(node.attrs.get("alpha", 1.0)) == 1.0 and not node.attrs.get("transA", 0):
            return (values if node.attrs.get("transB", 0) else values.T), []
    return None, []


def find_linears(graph: gs.Graph, layers: dict[str, FrameQuantLinear]) -> list[Match]:
    wanted: dict[str, str] = {}
    for name, layer in layers.items():
        key = _digest(layer.dense_weight().float().cpu().numpy())
        if key in wanted:
            raise ConversionError(f"layers {wanted[key]} and {name} have identical weights; cannot tell them apart")
        wanted[key] = name
    matches: dict[str, Match] = {}
    for node in list(graph.nodes):
        if node.op not in ("MatMul", "Gemm"):
            continue
        weight, extra = _weight_of(node)
        if weight is None:
            continue
        name = wanted.get(_digest(weight))
        if name is None:
            continue
        if name in matches:
            raise ConversionError(f"layer {name} matches two graph nodes ({matches[name].nodes[0].name}, {node.name})")
        path = name.replace(".", "/")
        if node.name and "/" in node.name and path.split("/")[-1] not in node.name:
            log.warning("layer %s matched by value at node %s (name differs)", name, node.name)
        layer = layers[name]
        m = Match(name, layer, node.inputs[0], node.outputs[0], [node, *extra])
        if layer.bias is not None:
            bias = layer.bias.float().cpu().numpy()
            if node.op == "Gemm":
                c = _const(node.inputs[2]) if len(node.inputs) > 2 else None
                m.bias_in_graph = c is not None and np.array_equal(c.astype(np.float32).reshape(-1), bias)
                if not m.bias_in_graph:
                    raise ConversionError(f"layer {name}: Gemm bias does not equal the layer's bias")
            else:
                consumers = m.out.outputs
                if len(consumers) == 1 and consumers[0].op == "Add":
                    add = consumers[0]
                    other = [t for t in add.inputs if t is not m.out]
                    c = _const(other[0]) if other else None
                    if c is not None and c.size == bias.size and np.array_equal(c.astype(np.float32).reshape(-1), bias):
                        m.nodes.append(add)
                        m.out = add.outputs[0]
                        m.bias_in_graph = True
        matches[name] = m
    missing = sorted(set(layers) - set(matches))
    if missing:
        raise ConversionError(f"{len(missing)} quantized layers not found in the exported graph: {missing[:8]}")
    return [matches[n] for n in layers]


def _flatten(b: Builder, x: gs.Variable, width: int) -> tuple[gs.Variable, gs.Variable]:
    """``x (..., width) -> (N, width)`` plus the leading shape ``(...)`` for the way back."""
    lead = b.op("Slice", [b.op("Shape", [x]), b.ints("zero", [0]), b.ints("minus_one", [-1])], hint="lead_shape")
    flat = b.op("Reshape", [x, b.ints(f"shape/-1x{width}", [-1, width])])
    return flat, lead


def _replace_weight(b: Builder, m: Match) -> None:
    """The standard form: the matched MatMul/Gemm keeps its place, bias and consumers; only its
    weight becomes the in-graph reconstruction from the packed codes (folded at load)."""
    node = m.nodes[0]
    w_t = dense_weight_t(b, m.layer)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        w_t = b.op("Transpose", [w_t], attrs={"perm": [1, 0]}, hint="w_hat")
    node.inputs[1] = w_t  # a Transpose the exporter put in front of the weight is dropped by cleanup


def rewrite_graph(model: onnx.ModelProto, layers: dict[str, FrameQuantLinear], form: str,
                  accuracy_level: int = 4) -> tuple[onnx.ModelProto, dict]:
    """Replace every quantized linear of ``model``; returns the new model and a size summary.

    ``accuracy_level`` is the packed form's ``MatMulNBits`` attribute (4: int8 activations inside
    the op, onnxruntime's fast CPU path; 0: fp32).
    """
    if form not in FORMS:
        raise ValueError(f"unknown ONNX form {form!r}; choose from {FORMS}")
    graph = gs.import_onnx(model)
    matches = find_linears(graph, layers)
    b = Builder(graph, accuracy_level)
    for m in matches:
        b.layer = m.name
        if form == "standard":
            _replace_weight(b, m)
            continue
        flat, lead = _flatten(b, m.x, m.layer.in_features)
        builder = {"packed": packed_layer, "plugin": plugin_layer, "plugin-layer": plugin_layer_node}[form]
        y = builder(b, flat, m.layer)
        if m.layer.bias is not None:
            if not m.bias_in_graph:
                raise ConversionError(f"layer {m.name}: its bias was not found next to the matmul")
            if form != "plugin-layer":  # the FQFrameLinear node adds it itself
                y = b.op("Add", [y, b.const("bias", m.layer.bias.float().cpu().numpy())])
        shape = b.op("Concat", [lead, b.ints(f"width/{m.layer.out_features}", [m.layer.out_features])], attrs={"axis": 0})
        for node in m.nodes:
            node.outputs.clear()
        final = gs.Node(op="Reshape", name=f"{m.name}/Reshape_out", inputs=[y, shape], outputs=[m.out])
        graph.nodes.append(final)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    domains = {o.domain for o in out.opset_import}
    if form.startswith("plugin") and plugin_ops.ONNX_DOMAIN not in domains:
        out.opset_import.append(onnx.helper.make_opsetid(plugin_ops.ONNX_DOMAIN, 1))
    if form == "packed" and "com.microsoft" not in domains:
        out.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    per_layer = {m.name: b.layer_bytes.get(m.name, 0) for m in matches}
    if form == "standard":  # the bias stays the exporter's initializer; count it as the other forms do
        for m in matches:
            if m.layer.bias is not None:
                per_layer[m.name] += 4 * m.layer.bias.numel()
    io = {m.name: (m.x.name, m.out.name) for m in matches}
    return out, {"layers": per_layer, "shared_table_bytes": b.shared_bytes, "io": io}


def check_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker`` with full (strict) shape inference; returns the shape-inferred model."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def save_model(model: onnx.ModelProto, path: str | Path) -> int:
    """Write atomically (a uniquely named temporary beside ``path``, then rename); returns the
    file size in bytes."""
    path = Path(path)
    atomic_write(path, lambda tmp: onnx.save_model(model, tmp))
    return path.stat().st_size
