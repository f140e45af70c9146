"""The five-step subgraph of one quantized linear, in the plugin form and in the standard form.

Both builders take a flattened activation ``x2 (N, in_features)`` (a graphsurgeon Variable) and
return ``y2 (N, out_features)``; :mod:`converters.rewrite` flattens and restores the leading axes.

Standard form (stock ONNX operators, opset 18), per side of the layer:

* rotation ``R = (A kron B) diag(s)`` with ``A = H_a`` and ``B = H_b' kron C_m`` (``dim = a * b``,
  ``b = b' m``, ``H`` normalized Sylvester-Hadamard, ``C_m`` the orthonormal DCT-II of
  :mod:`fq_export.rotations`): ``x -> (N, a, b) -> x B^T -> A x`` (two MatMuls, tables shared by
  every rotation of the same dimension) plus a Mul by the per-layer signs. The signs are stored
  bit-packed (one bit each) and decoded in-graph;
* frame analysis ``c = T^T u``: pairs ``(N, d/2, 2)``, Gather by the spectral-tetris table, Mul by
  its weights, ``(N, rho/2, 2k)`` MatMul by the realified DFT (``2k x 2k``); synthesis is the
  transpose (MatMul by the DFT, two Gathers, Mul, Add);
* packed matmul: the int32 words of :mod:`fq_export.packing` are decoded in-graph (Cast, Mod 2^32,
  Gather of each code's word, Div by ``2^shift``, Mod ``2^bits``), dequantized with the fp16
  per-row scale/zero and multiplied. The decode depends on initializers only: onnxruntime folds
  it once when the session starts, while the file keeps the packed codes.

Plugin form: one node per step (``FQHadamardRotation``, ``FQFrameTransform``, ``FQPackedMatMul``) in
the contract of :mod:`fq_export.plugin_ops`, with string attributes ``plugin_version`` and
``plugin_namespace`` that TensorRT's ONNX parser uses to find the plugin creator.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

G_LOGGER.severity = G_LOGGER.ERROR

from fq_export import packing, plugin_ops
from fq_export.frames import get_frame
from fq_export.layer import FrameQuantLinear
from fq_export.rotations import dct_matrix, get_rotation, hadamard_matrix, split_dimension


class Builder:
    """Adds nodes to a graphsurgeon graph; shares constant tables across layers by key."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.shared: dict[str, gs.Constant] = {}
        self.shared_bytes = 0
        self.layer_bytes: dict[str, int] = {}
        self.layer: str = ""
        self._count = 0

    # -- helpers ------------------------------------------------------------------------------
    def var(self, hint: str) -> gs.Variable:
        self._count += 1
        return gs.Variable(f"{self.layer}/{hint}_{self._count}")

    def op(self, op: str, inputs: list, hint: str | None = None, attrs: dict | None = None, domain: str | None = None,
           dtype=None, shape=None) -> gs.Variable:
        out = self.var(hint or op.lower())
        if dtype is not None:
            out.dtype, out.shape = dtype, shape
        node = gs.Node(op=op, name=f"{self.layer}/{op}_{self._count}", inputs=inputs, outputs=[out], attrs=attrs or {})
        if domain:
            node.domain = domain
        self.graph.nodes.append(node)
        return out

    def const(self, name: str, values: np.ndarray) -> gs.Constant:
        """A per-layer initializer (counted in the layer's bytes)."""
        self._count += 1
        c = gs.Constant(f"{self.layer}/{name}_{self._count}", np.ascontiguousarray(values))
        self.layer_bytes[self.layer] = self.layer_bytes.get(self.layer, 0) + c.values.nbytes
        return c

    def shared_const(self, key: str, make) -> gs.Constant:
        """An initializer shared by every layer that needs the same table (counted once)."""
        if key not in self.shared:
            c = gs.Constant(f"fq.shared/{key}", np.ascontiguousarray(make()))
            self.shared[key] = c
            self.shared_bytes += c.values.nbytes
        return self.shared[key]

    def ints(self, key: str, values) -> gs.Constant:
        return self.shared_const(f"int64/{key}", lambda: np.asarray(values, dtype=np.int64))


# ---- standard form ------------------------------------------------------------------------------

def rotation_factors(dim: int) -> tuple[int, int]:
    """``(a, b)`` with ``dim = a * b``, ``a`` a power of two, ``b`` a power of two times the odd part;
    chosen to minimize ``a + b`` (the MACs per coordinate of the two MatMuls)."""
    power, odd = split_dimension(dim)
    best = None
    f = 1
    while f <= power:
        a, b = power // f, f * odd
        if best is None or a + b < sum(best):
            best = (a, b)
        f *= 2
    return best


def rotation_kron_b(dim: int) -> np.ndarray:
    power, odd = split_dimension(dim)
    a, b = rotation_factors(dim)
    return np.kron(hadamard_matrix(b // odd), dct_matrix(odd))


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """+-1 signs -> bits (1 = negative) packed 32 per int32 word, little-endian within the word."""
    bits = (signs < 0).astype(np.int64)
    words = -(-bits.size // 32)
    padded = np.zeros(words * 32, dtype=np.int64)
    padded[: bits.size] = bits
    values = (padded.reshape(words, 32) << np.arange(32)).sum(axis=1)
    return np.where(values >= 2**31, values - 2**32, values).astype(np.int32)


def _signs(b: Builder, dim: int, seed: int) -> gs.Variable:
    """In-graph decode of the packed signs: ``1 - 2 * bit`` as float32 ``(dim,)``."""
    words = b.const("signs_packed", pack_signs(get_rotation(dim, seed).signs))
    wide = b.op("Mod", [b.op("Cast", [words], attrs={"to": 7}), b.ints("two32", [2**32])], attrs={"fmod": 0})
    picked = b.op("Gather", [wide, b.ints(f"sign_word/{dim}", np.arange(dim) // 32)], attrs={"axis": 0})
    bit = b.op("Mod", [b.op("Div", [picked, b.ints(f"sign_pow/{dim}", 2 ** (np.arange(dim) % 32))]),
                      b.ints("two", [2])], attrs={"fmod": 0})
    neg2 = b.shared_const("f32/minus_two", lambda: np.asarray([-2.0], dtype=np.float32))
    one = b.shared_const("f32/one", lambda: np.asarray([1.0], dtype=np.float32))
    return b.op("Add", [b.op("Mul", [b.op("Cast", [bit], attrs={"to": 1}), neg2]), one], hint="signs")


def standard_rotation(b: Builder, x: gs.Variable, dim: int, seed: int, transpose: bool) -> gs.Variable:
    """``R x`` (``transpose=False``) or ``R^T x`` on ``x (N, dim)``."""
    a, n_b = rotation_factors(dim)
    mat_b = b.shared_const(f"rot_B/{dim}", lambda: rotation_kron_b(dim).astype(np.float32))
    mat_bt = b.shared_const(f"rot_Bt/{dim}", lambda: rotation_kron_b(dim).T.copy().astype(np.float32))
    signs = _signs(b, dim, seed)
    if not transpose:
        x = b.op("Mul", [x, signs])
    y = b.op("Reshape", [x, b.ints(f"shape/-1x{a}x{n_b}", [-1, a, n_b])])
    y = b.op("MatMul", [y, mat_bt if not transpose else mat_b])  # rows times B^T applies B (and B^T)
    if a > 1:
        mat_a = b.shared_const(f"hadamard/{a}", lambda: hadamard_matrix(a).astype(np.float32))
        y = b.op("MatMul", [mat_a, y])  # H_a is symmetric
    y = b.op("Reshape", [y, b.ints(f"shape/-1x{dim}", [-1, dim])])
    if transpose:
        y = b.op("Mul", [y, signs])
    return y


def standard_frame(b: Builder, x: gs.Variable, k: int, rho: int, d: int, transpose: bool) -> gs.Variable:
    """Analysis ``c = T^T u`` (``transpose=True``, ``(N, d) -> (N, K)``) or synthesis ``v = T z``."""
    frame = get_frame(k, rho, d)
    key = f"{k}x{rho}x{d}"
    dft = b.shared_const(f"frame_dft/{key}", lambda: frame.dft.astype(np.float32))
    if transpose:
        dft_t = b.shared_const(f"frame_dft_t/{key}", lambda: frame.dft.T.copy().astype(np.float32))
        pairs = b.op("Reshape", [x, b.ints(f"shape/-1x{d // 2}x2", [-1, d // 2, 2])])
        binned = b.op("Gather", [pairs, b.ints(f"frame_gather/{key}", frame.gather_index)], attrs={"axis": 1})
        weight = b.shared_const(f"frame_gather_w/{key}", lambda: frame.gather_weight.astype(np.float32)[:, None])
        binned = b.op("Mul", [binned, weight])
        runs = b.op("Reshape", [binned, b.ints(f"shape/-1x{frame.rho_c}x{2 * k}", [-1, frame.rho_c, 2 * k])])
        c = b.op("MatMul", [runs, dft_t])
        return b.op("Reshape", [c, b.ints(f"shape/-1x{frame.num_vectors}", [-1, frame.num_vectors])])
    runs = b.op("Reshape", [x, b.ints(f"shape/-1x{frame.rho_c}x{2 * k}", [-1, frame.rho_c, 2 * k])])
    runs = b.op("MatMul", [runs, dft])
    runs = b.op("Reshape", [runs, b.ints(f"shape/-1x{frame.rho_c * k}x2", [-1, frame.rho_c * k, 2])])
    parts = []
    for s in range(2):
        g = b.op("Gather", [runs, b.ints(f"frame_bin{s}/{key}", frame.synth_bin[s])], attrs={"axis": 1})
        w = b.shared_const(f"frame_synth_w{s}/{key}", lambda s=s: frame.synth_weight[s].astype(np.float32)[:, None])
        parts.append(b.op("Mul", [g, w]))
    v = b.op("Add", parts)
    return b.op("Reshape", [v, b.ints(f"shape/-1x{d}", [-1, d])])


def standard_packed_matmul(b: Builder, c: gs.Variable, layer: FrameQuantLinear) -> gs.Variable:
    """``z = c @ D_hat^T`` with ``D_hat`` decoded in-graph from the packed words."""
    bits = layer.bits
    rows, cols = layer.frame_shape
    codes = b.const("packed_codes", layer.packed_codes.cpu().numpy().astype(np.int32))
    scale = b.const("scale", layer.scale.cpu().numpy().astype(np.float16).reshape(rows, 1))
    zero = b.const("zero", layer.zero.cpu().numpy().astype(np.float16).reshape(rows, 1))
    lo, hi, shift = packing.group_tables(bits)
    col = np.arange(cols)
    group, pos = col // packing.GROUP, col % packing.GROUP
    word_lo = group * bits + lo[pos]
    words = b.op("Mod", [b.op("Cast", [codes], attrs={"to": 7}), b.ints("two32", [2**32])], attrs={"fmod": 0})
    low = b.op("Gather", [words, b.ints(f"code_word/{bits}/{cols}", word_lo)], attrs={"axis": 1})
    value = b.op("Div", [low, b.ints(f"code_pow/{bits}/{cols}", 2 ** shift[pos])])
    spill = shift[pos] + bits > 32
    if spill.any():  # 3 bits: a code may continue in the next word
        word_hi = np.where(spill, group * bits + hi[pos], word_lo)
        mult = np.where(spill, 2 ** ((32 - shift[pos]) % 32), 0)
        high = b.op("Gather", [words, b.ints(f"code_word_hi/{bits}/{cols}", word_hi)], attrs={"axis": 1})
        high = b.op("Mod", [high, b.ints(f"pow/{bits}", [2**bits])], attrs={"fmod": 0})
        value = b.op("Add", [value, b.op("Mul", [high, b.ints(f"code_mult_hi/{bits}/{cols}", mult)])])
    code = b.op("Mod", [value, b.ints(f"pow/{bits}", [2**bits])], attrs={"fmod": 0})
    centred = b.op("Sub", [b.op("Cast", [code], attrs={"to": 1}), b.op("Cast", [zero], attrs={"to": 1})])
    d_hat = b.op("Mul", [centred, b.op("Cast", [scale], attrs={"to": 1})], hint="d_hat")
    d_t = b.op("Transpose", [d_hat], attrs={"perm": [1, 0]}, hint="d_hat_t")
    return b.op("MatMul", [c, d_t])


def standard_layer(b: Builder, x2: gs.Variable, layer: FrameQuantLinear) -> gs.Variable:
    ins, outs = layer.in_recipe, layer.out_recipe
    h = x2
    if ins.rotation is not None:
        h = standard_rotation(b, h, ins.rotation.dim, ins.rotation.seed, transpose=True)
    if ins.frame is not None:
        h = standard_frame(b, h, ins.frame.k, ins.frame.rho, ins.frame.d, transpose=True)
    h = standard_packed_matmul(b, h, layer)
    if outs.frame is not None:
        h = standard_frame(b, h, outs.frame.k, outs.frame.rho, outs.frame.d, transpose=False)
    if outs.rotation is not None:
        h = standard_rotation(b, h, outs.rotation.dim, outs.rotation.seed, transpose=False)
    return h


# ---- plugin form --------------------------------------------------------------------------------

def _plugin_node(b: Builder, op: str, inputs: list, attrs: dict, width: int) -> gs.Variable:
    full = {**{k: int(v) for k, v in attrs.items()}, "plugin_version": plugin_ops.PLUGIN_VERSION,
            "plugin_namespace": plugin_ops.PLUGIN_NAMESPACE}
    return b.op(op, inputs, attrs=full, domain=plugin_ops.ONNX_DOMAIN, dtype=np.float32, shape=["N", width])


def _packed_inputs(b: Builder, layer: FrameQuantLinear) -> list:
    """Packed codes (int32) and scale/zero (fp16 initializers, each behind a Cast to fp32: the
    inputs 1..3 of FQPackedMatMul and FQFrameLinear)."""
    codes = b.const("packed_codes", layer.packed_codes.cpu().numpy().astype(np.int32))
    scale = b.const("scale", layer.scale.cpu().numpy().astype(np.float16))
    zero = b.const("zero", layer.zero.cpu().numpy().astype(np.float16))
    scale = b.op("Cast", [scale], attrs={"to": 1}, hint="scale_f32")
    zero = b.op("Cast", [zero], attrs={"to": 1}, hint="zero_f32")
    return [codes, scale, zero]


def plugin_layer(b: Builder, x2: gs.Variable, layer: FrameQuantLinear) -> gs.Variable:
    ins, outs = layer.in_recipe, layer.out_recipe
    rows, cols = layer.frame_shape
    h = x2
    if ins.rotation is not None:
        h = _plugin_node(b, plugin_ops.ROTATION_OP, [h], {"dim": ins.rotation.dim, "seed": ins.rotation.seed,
                                                         "transpose": 1}, ins.dim)
    if ins.frame is not None:
        f = ins.frame
        h = _plugin_node(b, plugin_ops.FRAME_OP, [h], {"k": f.k, "rho": f.rho, "d": f.d, "transpose": 1}, cols)
    h = _plugin_node(b, plugin_ops.MATMUL_OP, [h, *_packed_inputs(b, layer)],
                     {"bits": layer.bits, "in_features": cols, "out_features": rows,
                      "layout_version": layer.layout_version}, rows)
    if outs.frame is not None:
        f = outs.frame
        h = _plugin_node(b, plugin_ops.FRAME_OP, [h], {"k": f.k, "rho": f.rho, "d": f.d, "transpose": 0}, outs.dim)
    if outs.rotation is not None:
        h = _plugin_node(b, plugin_ops.ROTATION_OP, [h], {"dim": outs.rotation.dim, "seed": outs.rotation.seed,
                                                         "transpose": 0}, outs.dim)
    return h


def plugin_layer_node(b: Builder, x2: gs.Variable, layer: FrameQuantLinear) -> gs.Variable:
    """The whole layer, bias included, as one ``FQFrameLinear`` node (the ``plugin-layer`` form)."""
    bias = (layer.bias.float().cpu().numpy() if layer.bias is not None
            else np.zeros(layer.out_features, dtype=np.float32))
    return _plugin_node(b, plugin_ops.LAYER_OP, [x2, *_packed_inputs(b, layer), b.const("bias", bias)],
                        plugin_ops.layer_attributes(layer), layer.out_features)
