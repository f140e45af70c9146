"""Quantized embedding tables: token and position tables stored in fp16, int8 or int4 in every form.

``--embeddings MODE`` (``fp32``, the default, leaves them alone):

* ``fp16``: the table in fp16; ``Gather`` then ``Cast``.
* ``int8``: symmetric per row, ``q = round(w / s)`` with ``s = max|w| / 127`` (fp16) per table row;
  ``Gather`` of the codes and of the scales, ``Cast``, ``Mul``.
* ``int4``: symmetric per block of 32 values along the hidden axis, ``s = max|w| / 7`` (fp16),
  ``q + 8`` packed two per byte (low nibble first); gathered rows are unpacked with ``BitwiseAnd``
  / ``BitShift`` and scaled per block.

Only gathered rows are dequantized, with stock ONNX operators, so the tables stay quantized in
memory in every runtime. The PyTorch model gets the dequantized values in place
(:func:`quantize_embeddings`) before it is exported and validated, so the artifact and its
reference agree exactly; the effect on the task output is reported beside. A table is quantized
when it is an ``nn.Embedding`` with at least ``MIN_ROWS`` rows and its ONNX initializer is read by
``Gather`` nodes only (a table tied to an output head stays as it is).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn

MODES = ("fp32", "fp16", "int8", "int4")
MIN_ROWS = 64
INT4_BLOCK = 32


@dataclass
class QuantizedTable:
    name: str
    mode: str
    values: np.ndarray  # the dequantized table (float32), what the PyTorch model now holds
    codes: np.ndarray  # fp16 table, int8 codes, or uint8 nibble pairs
    scales: np.ndarray | None  # fp16: per row (int8), per row and block (int4)

    @property
    def stored_bytes(self) -> int:
        return self.codes.nbytes + (self.scales.nbytes if self.scales is not None else 0)


def quantize_table(weight: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(dequantized float32, codes, scales)`` of a ``(rows, hidden)`` table."""
    w = weight.astype(np.float32)
    if mode == "fp16":
        codes = w.astype(np.float16)
        return codes.astype(np.float32), codes, None
    if mode == "int8":
        scale = (np.abs(w).max(axis=1, keepdims=True) / 127).astype(np.float16)
        s = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
        q = np.clip(np.round(w / s), -127, 127).astype(np.int8)
        return q.astype(np.float32) * s, q, scale.reshape(-1)
    if mode == "int4":
        rows, hidden = w.shape
        if hidden % INT4_BLOCK:
            raise ValueError(f"int4 embeddings need a hidden size divisible by {INT4_BLOCK}, got {hidden}")
        blocks = w.reshape(rows, hidden // INT4_BLOCK, INT4_BLOCK)
        scale = (np.abs(blocks).max(axis=2, keepdims=True) / 7).astype(np.float16)
        s = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
        q = np.clip(np.round(blocks / s), -8, 7)
        stored = (q + 8).astype(np.uint8).reshape(rows, hidden // 2, 2)
        packed = stored[..., 0] | (stored[..., 1] << 4)
        return (q * s).reshape(rows, hidden).astype(np.float32), packed, scale.reshape(rows, -1)
    raise ValueError(f"unknown embeddings mode {mode!r}; choose from {MODES}")


def quantize_embeddings(model: nn.Module, mode: str) -> list[QuantizedTable]:
    """Quantize every large ``nn.Embedding`` of ``model`` in place (its weight becomes the
    dequantized values) and return the tables for :func:`rewrite_gathers`."""
    if mode not in MODES:
        raise ValueError(f"unknown embeddings mode {mode!r}; choose from {MODES}")
    tables = []
    if mode == "fp32":
        return tables
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings >= MIN_ROWS:
            values, codes, scales = quantize_table(module.weight.detach().float().cpu().numpy(), mode)
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(values).to(module.weight.dtype))
            tables.append(QuantizedTable(name, mode, values, codes, scales))
    return tables


def _digest(values: np.ndarray) -> str:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return hashlib.sha1(values.tobytes() + str(values.shape).encode()).hexdigest()


def _dequantize_rows(graph: gs.Graph, table: QuantizedTable, stored: tuple, ids: gs.Variable, out: gs.Variable,
                     tag: str) -> None:
    """Nodes computing ``out`` (the gathered float rows) from the table's ``stored`` (codes, scales)
    initializers and ``ids``."""
    nodes = graph.nodes
    count = [0]

    def op(kind, inputs, attrs=None, output=None):
        count[0] += 1
        result = output if output is not None else gs.Variable(f"{tag}/{kind.lower()}_{count[0]}")
        nodes.append(gs.Node(kind, f"{tag}/{kind}_{count[0]}", attrs or {}, inputs, [result]))
        return result

    def const(name, value):
        return gs.Constant(f"{tag}/{name}", np.ascontiguousarray(value))

    codes = op("Gather", [stored[0], ids], {"axis": 0})
    if table.mode == "fp16":
        op("Cast", [codes], {"to": onnx.TensorProto.FLOAT}, out)
        return
    scales = op("Cast", [op("Gather", [stored[1], ids], {"axis": 0})], {"to": onnx.TensorProto.FLOAT})
    if table.mode == "int8":
        op("Mul", [op("Cast", [codes], {"to": onnx.TensorProto.FLOAT}),
                   op("Unsqueeze", [scales, const("last_axis", np.array([-1], dtype=np.int64))])], output=out)
        return
    hidden = table.values.shape[1]
    low = op("BitwiseAnd", [codes, const("low_mask", np.array(15, dtype=np.uint8))])
    high = op("BitShift", [codes, const("high_shift", np.array(4, dtype=np.uint8))], {"direction": "RIGHT"})
    axis = const("last_axis", np.array([-1], dtype=np.int64))
    pairs = op("Concat", [op("Unsqueeze", [low, axis]), op("Unsqueeze", [high, axis])], {"axis": -1})
    lead = op("Shape", [ids])
    blocks = op("Reshape", [pairs, op("Concat", [lead, const("block_shape", np.array(
        [hidden // INT4_BLOCK, INT4_BLOCK], dtype=np.int64))], {"axis": 0})])
    centred = op("Sub", [op("Cast", [blocks], {"to": onnx.TensorProto.FLOAT}), const("eight", np.array(8, dtype=np.float32))])
    scaled = op("Mul", [centred, op("Unsqueeze", [scales, axis])])
    op("Reshape", [scaled, op("Concat", [lead, const("hidden", np.array([hidden], dtype=np.int64))], {"axis": 0})],
       output=out)


def rewrite_gathers(model: onnx.ModelProto, tables: list[QuantizedTable]) -> tuple[onnx.ModelProto, dict]:
    """Replace each quantized table's ``Gather`` nodes (found by the table's exact values) by
    the dequantizing subgraph; returns the model and ``{table: stored bytes}``."""
    if not tables:
        return model, {}
    graph = gs.import_onnx(model)
    wanted = {_digest(t.values): t for t in tables}
    consumers: dict[str, list[gs.Node]] = {}
    constants: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and tensor.values.ndim == 2:
                consumers.setdefault(tensor.name, []).append(node)
                constants[tensor.name] = tensor
    done = {}
    for name, tensor in constants.items():
        table = wanted.get(_digest(tensor.values)) if tensor.values.dtype == np.float32 else None
        users = consumers[name]
        if table is None or not all(u.op == "Gather" and u.inputs[0] is tensor and u.attrs.get("axis", 0) == 0
                                    for u in users):
            continue
        stored = (gs.Constant(f"{table.name}/{table.mode}_codes", np.ascontiguousarray(table.codes)),
                  None if table.scales is None else gs.Constant(f"{table.name}/{table.mode}_scales", table.scales))
        for i, gather in enumerate(users):
            out, ids = gather.outputs[0], gather.inputs[1]
            gather.outputs.clear()
            _dequantize_rows(graph, table, stored, ids, out, f"{table.name}/{table.mode}_{i}")
        done[table.name] = table.stored_bytes
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out, done
