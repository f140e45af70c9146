"""The subgraph of one quantized linear in each ONNX form.

Standard form (stock ONNX operators, opset 18): the weight ``W_hat^T`` is rebuilt from initializers
only (:func:`dense_weight_t`: the packed code bytes looked up in a shared table, one ``Einsum`` with the
scale, the dense frames built in-graph from small factors and the rotations), and takes the place of the
exported MatMul's weight. A runtime's constant folding turns it into the fp32 graph at load.

Packed form (:func:`packed_layer`, on a flattened activation ``x2 (N, in_features)``): per side the
rotation ``R = (A kron B) diag(s)`` (``x -> (N, a, b) -> x B^T -> A x`` plus a Mul by the bit-packed
signs, decoded in-graph) and the frame analysis / synthesis (a Gather by the spectral-tetris table,
its weights, the realified block DFT), around one ``com.microsoft`` ``MatMulNBits`` on the packed codes.

Plugin form: one node per step (``FQHadamardRotation``, ``FQFrameTransform``, ``FQPackedMatMul``) in
the contract of :mod:`fq_export.plugin_ops`, with string attributes ``plugin_version`` and
``plugin_namespace`` that TensorRT's ONNX parser uses to find the plugin creator; the plugin-layer form
is one ``FQFrameLinear`` node.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

G_LOGGER.severity = G_LOGGER.ERROR  # before the imports below, which build graphs at import time

from fq_export import packing, plugin_ops  # noqa: E402
from fq_export.frames import get_frame  # noqa: E402
from fq_export.layer import FrameQuantLinear  # noqa: E402
from fq_export.rotations import dct_matrix, get_rotation, hadamard_matrix, split_dimension  # noqa: E402


MATMUL_NBITS_BITS = (2, 4, 8)
# Up to this width the standard form's weight reconstruction applies a rotation as one dense
# (dim x dim) factor, so its einsum yields the 2-D weight with no Reshape copy; wider rotations keep
# their two Kronecker factors (the dense factor's load-time cost grows as dim^2 per frame row).
DENSE_ROTATION_MAX = 2048


class Builder:
    """Adds nodes to a graphsurgeon graph; shares constant tables across layers by key."""

    def __init__(self, graph: gs.Graph, accuracy_level: int = 4):
        self.graph = graph
        self.accuracy_level = accuracy_level
        self.shared: dict[str, gs.Constant] = {}
        self.shared_vars: dict[str, gs.Variable] = {}  # in-graph tables computed once (dense frames)
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


def _decode_codes_u32(b: Builder, layer: FrameQuantLinear) -> gs.Variable:
    """The codes ``(K_out, K_in)`` as uint32, from the packed words (any bit width).

    Each code is ``(word[lo] >> shift | word[hi] << (32 - shift)) & (2^bits - 1)``, the second term
    only where a 3-bit code straddles two words (:func:`fq_export.packing.group_tables`).
    """
    bits = layer.bits
    cols = layer.frame_shape[1]
    words = b.const("packed_codes", layer.packed_codes.cpu().numpy().astype(np.int32).view(np.uint32))
    lo, hi, shift = packing.group_tables(bits)
    col = np.arange(cols)
    group, pos = col // packing.GROUP, col % packing.GROUP
    u32 = lambda key, values: b.shared_const(f"uint32/{key}", lambda: np.asarray(values, dtype=np.uint32))
    low = b.op("Gather", [words, b.ints(f"code_word/{bits}/{cols}", group * bits + lo[pos])], attrs={"axis": 1})
    value = b.op("BitShift", [low, u32(f"code_shift/{bits}/{cols}", shift[pos])], attrs={"direction": "RIGHT"})
    spill = shift[pos] + bits > 32
    if spill.any():
        high = b.op("Gather", [words, b.ints(f"code_word_hi/{bits}/{cols}", group * bits + hi[pos])], attrs={"axis": 1})
        high = b.op("BitShift", [high, u32(f"code_shift_hi/{bits}/{cols}", (32 - shift[pos]) % 32)],
                    attrs={"direction": "LEFT"})
        high = b.op("BitwiseAnd", [high, u32(f"code_spill/{bits}/{cols}", np.where(spill, 2**32 - 1, 0))])
        value = b.op("BitwiseOr", [value, high])
    return b.op("BitwiseAnd", [value, u32(f"mask/{bits}", [2**bits - 1])])


def _byte_table(bits: int) -> np.ndarray:
    """``(256 * 2^bits, 8 / bits)`` float32: row ``byte + 256 * z`` holds the byte's codes minus ``z``."""
    per_byte = 8 // bits
    byte = np.arange(256)[:, None]
    codes = (byte >> (bits * np.arange(per_byte))) & (2**bits - 1)
    return np.concatenate([codes - z for z in range(2**bits)]).astype(np.float32)


def _per_column(b: Builder, name: str, values: np.ndarray, span: int, count: int) -> gs.Variable:
    """A layer's per-group ``values (K_out, groups)`` as ``(K_out, count)`` float32, each group's value
    repeated over the ``span`` entries (bytes or columns) that it covers; folded at load."""
    rows, groups = values.shape
    v = b.op("Reshape", [b.const(name, values.astype(np.float16)),
                         b.ints(f"shape/{rows}x{groups}x1", [rows, groups, 1])])
    v = b.op("Expand", [v, b.ints(f"shape/{rows}x{groups}x{span}", [rows, groups, span])])
    v = b.op("Reshape", [v, b.ints(f"shape/{rows}x{groups * span}", [rows, groups * span])])
    if groups * span != count:
        v = b.op("Slice", [v, b.ints("slice_start/0", [0]), b.ints(f"slice_end/{count}", [count]), b.ints("slice_axis/1", [1])])
    return b.op("Cast", [v], attrs={"to": 1})


def _centred_codes(b: Builder, layer: FrameQuantLinear) -> tuple[gs.Variable, dict[str, int]]:
    """``codes - zero`` as float32 ``(K_out, ...)`` and its column axes (einsum letter -> size).

    2, 4 and 8 bits: the packed words read as bytes, each byte (plus ``256 * zero`` of its row or
    group) looked up in a shared table of its codes minus the zero: ``(K_out, bytes, codes per
    byte)``, two small steps and no per-code intermediate wider than the result (a group covers
    whole bytes). The row padding to 32 columns comes along (the frame operand has zero rows
    there). 3 bits, or zero points that are not integers (fine-tuned grids): shifts and masks on
    uint32 words, minus the zero of each column.
    """
    rows, cols = layer.frame_shape
    bits, group = layer.bits, layer.group_size
    zeros = layer.zero.cpu().numpy().astype(np.float16).reshape(rows, -1)
    words = layer.packed_codes.cpu().numpy().astype(np.int32)
    if bits == 3 or np.any(zeros != np.round(zeros)):
        code = b.op("Cast", [_decode_codes_u32(b, layer)], attrs={"to": 1})
        zero = (b.op("Cast", [b.const("zero", zeros)], attrs={"to": 1}) if group is None
                else _per_column(b, "zero", zeros, group, cols))
        return b.op("Sub", [code, zero], hint="centred"), {"k": cols}
    data = b.const("packed_codes", words.view(np.uint8).reshape(rows, -1))
    n_bytes = data.values.shape[1]
    zero = (b.op("Cast", [b.const("zero", zeros)], attrs={"to": 1}) if group is None
            else _per_column(b, "zero", zeros, group * bits // 8, n_bytes))
    index = b.op("Add", [b.op("Cast", [data], attrs={"to": 6}),
                         b.op("Mul", [b.op("Cast", [zero], attrs={"to": 6}), b.shared_const(
                             "int32/256", lambda: np.asarray([256], dtype=np.int32))])], hint="byte_index")
    table = b.shared_const(f"byte_codes/{bits}", lambda: _byte_table(bits))
    centred = b.op("Gather", [table, index], attrs={"axis": 0}, hint="centred")
    return centred, {"g": n_bytes, "j": 8 // bits}


def _scale_operand(b: Builder, layer: FrameQuantLinear, columns: dict[str, int]) -> tuple[gs.Variable, str]:
    """The scale as an einsum operand and its subscripts: ``(K_out,)`` ``r`` per row, else each
    group's scale over the first column axis of the centred codes (bytes or columns)."""
    scales = layer.scale.cpu().numpy().astype(np.float16)
    if layer.group_size is None:
        return b.op("Cast", [b.const("scale", scales)], attrs={"to": 1}), "r"
    axis, count = next(iter(columns.items()))
    span = layer.group_size * layer.bits // 8 if axis == "g" else layer.group_size
    return _per_column(b, "scale", scales.reshape(scales.shape[0], -1), span, count), "r" + axis


def frame_factors(frame) -> tuple[np.ndarray, np.ndarray]:
    """``T^T`` of a real TFF as ``einsum("ij,jalb->ilbja", F, Omega)``: the spectral-tetris matrix
    ``F (rho_c, d_c)`` and the realified DFT phases ``Omega (d_c, 2, k, 2)`` of complex coordinate
    ``j``, whose result reshaped to ``(K, d)`` is ``T^T`` (coefficient ``2(i k + l) + b``, coordinate
    ``2 j + a``; :mod:`fq_export.frames`). Both are small (``K d / k`` and ``4 d k`` values)."""
    k, rho_c, d_c = frame.k, frame.rho_c, frame.d_c
    f = np.zeros((rho_c, d_c))
    for s in range(2):
        j = np.nonzero(frame.synth_weight[s])[0]
        f[frame.synth_bin[s, j] // k, j] = frame.synth_weight[s, j]
    angle = 2.0 * np.pi * ((np.arange(d_c)[:, None] * np.arange(k)[None, :]) % k) / k  # (j, l)
    re, im = np.cos(angle) / np.sqrt(k), np.sin(angle) / np.sqrt(k)
    omega = np.stack([np.stack([re, -im], -1), np.stack([im, re], -1)], 1)  # (j, a, l, b)
    return f.astype(np.float32), omega.astype(np.float32)


def _dense_frame(b: Builder, frame, dim: int, rows: int, axes: list[int]) -> gs.Variable:
    """``T^T`` (or the identity without a frame) as ``(*axes, dim)``: rows past ``K`` are zero.

    Built in-graph from :func:`frame_factors` (one einsum, a Reshape, a Pad where rows are padded),
    once per frame and row layout: the file holds no dense frame.
    """
    key = f"{frame.k}x{frame.rho}x{frame.d}" if frame is not None else f"id{dim}"
    tag = f"frame_dense/{key}/{'x'.join(map(str, axes))}"
    if tag in b.shared_vars:
        return b.shared_vars[tag]
    if frame is None:
        tt = b.op("EyeLike", [b.op("ConstantOfShape", [b.ints(f"shape/{dim}x{dim}", [dim, dim])],
                                   attrs={"value": gs.Constant("value", np.zeros(1, dtype=np.float32))})])
        count = dim
    else:
        frame = get_frame(frame.k, frame.rho, frame.d)
        f, omega = frame_factors(frame)
        tt = b.op("Einsum", [b.shared_const(f"frame_F/{key}", lambda: f), b.shared_const(f"frame_omega/{key}", lambda: omega)],
                  attrs={"equation": "ij,jalb->ilbja"})
        count = frame.num_vectors
        tt = b.op("Reshape", [tt, b.ints(f"shape/{count}x{dim}", [count, dim])])
    if rows > count:
        tt = b.op("Pad", [tt, b.ints(f"pad/{rows - count}", [0, 0, rows - count, 0])])
    if len(axes) > 1:
        tt = b.op("Reshape", [tt, b.ints(f"shape/{tag}", [*axes, dim])])
    b.shared_vars[tag] = tt
    return tt


def _side_operands(b: Builder, side, row_axes: dict[str, int], letters) -> tuple[list, list[str], str]:
    """Einsum operands that take a side's frame coordinates (axes ``row_axes``: letter -> size) to
    its ``dim`` coordinates: the dense ``T^T`` (shared per frame) and the rotation
    ``(A kron B) diag(s)`` (signs, then one dense factor up to ``DENSE_ROTATION_MAX``, else the two
    Kronecker factors). Returns operands, their subscripts and the subscripts of the coordinates."""
    dim, rows = side.dim, int(np.prod(list(row_axes.values())))
    rotation = side.rotation
    if rotation is not None:
        a, n_b = rotation_factors(dim)
    dense_rotation = rotation is not None and dim <= DENSE_ROTATION_MAX
    split_rotation = rotation is not None and not dense_rotation  # coordinates as the two factors' axes
    operands, specs = [], []
    if side.frame is None and rows == dim and len(row_axes) == 1 and not split_rotation:
        coords = "".join(row_axes)  # the codes' rows are the coordinates already
    else:
        tt = _dense_frame(b, side.frame, dim, rows, list(row_axes.values()))
        if split_rotation:
            coords = next(letters) + next(letters)
            tag = f"split/{tt.name}"
            if tag not in b.shared_vars:
                b.shared_vars[tag] = b.op("Reshape", [tt, b.ints(f"shape/{tag}", [*row_axes.values(), a, n_b])])
            tt = b.shared_vars[tag]
        else:
            coords = next(letters)
        operands.append(tt)
        specs.append("".join(row_axes) + coords)
    if rotation is None:
        return operands, specs, coords
    signs = _signs(b, dim, rotation.seed)
    if dense_rotation:
        tag = f"rotation_dense/{dim}"
        if tag not in b.shared_vars:
            kron = b.op("Einsum", [b.shared_const(f"hadamard/{a}", lambda: hadamard_matrix(a).astype(np.float32)),
                                   b.shared_const(f"rot_B/{dim}", lambda: rotation_kron_b(dim).astype(np.float32))],
                        attrs={"equation": "pi,ql->pqil"})
            b.shared_vars[tag] = b.op("Reshape", [kron, b.ints(f"shape/{dim}x{dim}", [dim, dim])])
        out = next(letters)
        operands += [signs, b.shared_vars[tag]]
        specs += [coords, out + coords]
        return operands, specs, out
    out = next(letters) + next(letters)
    operands.append(b.op("Reshape", [signs, b.ints(f"shape/{a}x{n_b}", [a, n_b])]))
    operands.append(b.shared_const(f"hadamard/{a}", lambda: hadamard_matrix(a).astype(np.float32)))
    operands.append(b.shared_const(f"rot_B/{dim}", lambda: rotation_kron_b(dim).astype(np.float32)))
    specs += [coords, out[0] + coords[0], out[1] + coords[1]]
    return operands, specs, out


def dense_weight_t(b: Builder, layer: FrameQuantLinear) -> gs.Variable:
    """``W_hat^T (in_features, out_features)`` from initializers only (the standard form).

    ``W_hat^T = R_in T_in D_hat^T T_out^T R_out^T`` with ``D_hat = diag(scale) (codes - zero)``, as one
    einsum over the centred codes, the scale, the dense frames (shared per frame) and the rotations'
    Kronecker factors and signs, then a Reshape. Nothing depends on the activations: a runtime's
    constant folding (onnxruntime at session start) turns the layer into one dense MatMul, and the
    only per-layer intermediates are the byte indices, the centred codes and the einsum's result.
    """
    rows = layer.frame_shape[0]
    centred, columns = _centred_codes(b, layer)
    scale, scale_spec = _scale_operand(b, layer, columns)
    letters = iter("abcdefhilmnopqstuvwxyz")
    in_ops, in_specs, x = _side_operands(b, layer.in_recipe, columns, letters)
    out_ops, out_specs, y = _side_operands(b, layer.out_recipe, {"r": rows}, letters)
    spec = ",".join(["r" + "".join(columns), scale_spec, *in_specs, *out_specs]) + "->" + x + y
    w_t = b.op("Einsum", [centred, scale, *in_ops, *out_ops], attrs={"equation": spec}, hint="w_hat_t")
    if len(x) == 1 and len(y) == 1:
        return w_t
    return b.op("Reshape", [w_t, b.ints(f"shape/{layer.in_features}x{layer.out_features}",
                                        [layer.in_features, layer.out_features])], hint="w_hat_t")


def packed_matmul_nbits(b: Builder, c: gs.Variable, layer: FrameQuantLinear) -> gs.Variable:
    """``z = c @ D_hat^T`` as one ``com.microsoft`` ``MatMulNBits`` (2, 4 or 8 bits).

    For these widths each row of the packed layout of :mod:`fq_export.packing` is byte for byte a
    row of the op's ``B`` (``(K_out, blocks, block * bits / 8)`` uint8, code ``j`` of a byte in bits
    ``[bits*j, bits*j+bits)``), zero bytes appended where the blocks reach past the row. The block is
    the layer's group (32 columns for per-row scales, which are repeated over the blocks): scale and
    zero become the op's per-block scale and zero point exactly (uint8 zero points when integer,
    float ones otherwise, as fine-tuned grids have).
    """
    bits = layer.bits
    if bits not in MATMUL_NBITS_BITS:
        raise ValueError(f"the packed ONNX form runs MatMulNBits, which takes {MATMUL_NBITS_BITS}-bit codes; "
                         f"this layer has {bits}-bit codes: export it with --onnx-form standard")
    rows, cols = layer.frame_shape
    block = layer.group_size or packing.GROUP
    blocks = -(-cols // block)
    row_bytes = layer.packed_codes.cpu().numpy().astype(np.int32).view(np.uint8).reshape(rows, -1)
    data = np.zeros((rows, blocks * block * bits // 8), dtype=np.uint8)
    data[:, :row_bytes.shape[1]] = row_bytes[:, :data.shape[1]]
    blob = b.const("packed_codes", data.reshape(rows, blocks, block * bits // 8))
    scale = layer.scale.cpu().numpy().astype(np.float32).reshape(rows, -1)
    zero = layer.zero.cpu().numpy().astype(np.float32).reshape(rows, -1)
    if not (np.isfinite(scale).all() and np.isfinite(zero).all()):
        raise ValueError(f"layer {b.layer}: scale or zero is not finite")
    scales = b.const("scale", np.broadcast_to(scale, (rows, blocks)).reshape(-1).copy())
    zero = np.broadcast_to(zero, (rows, blocks))
    if np.any(zero != np.round(zero)) or zero.min() < 0 or zero.max() > 2**bits - 1:
        zero_points = b.const("zero_points", zero.reshape(-1).astype(np.float32))
    else:
        per_byte = 8 // bits
        padded = np.zeros((rows, -(-blocks // per_byte) * per_byte), dtype=np.uint8)
        padded[:, :blocks] = zero
        packed = (padded.reshape(rows, -1, per_byte).astype(np.uint32) << (bits * np.arange(per_byte))).sum(-1)
        zero_points = b.const("zero_points", packed.astype(np.uint8).reshape(-1))
    return b.op("MatMulNBits", [c, blob, scales, zero_points], domain="com.microsoft", hint="z",
                attrs={"K": cols, "N": rows, "bits": bits, "block_size": block,
                       "accuracy_level": b.accuracy_level})


def packed_layer(b: Builder, x2: gs.Variable, layer: FrameQuantLinear) -> gs.Variable:
    """The packed form's layer on ``x2 (N, in_features)``: transforms on the activations, the
    frame-space product on the packed codes."""
    ins, outs = layer.in_recipe, layer.out_recipe
    h = x2
    if ins.rotation is not None:
        h = standard_rotation(b, h, ins.rotation.dim, ins.rotation.seed, transpose=True)
    if ins.frame is not None:
        h = standard_frame(b, h, ins.frame.k, ins.frame.rho, ins.frame.d, transpose=True)
    h = packed_matmul_nbits(b, h, layer)
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
    if layer.group_size is not None:
        raise ValueError(f"layer {b.layer} has group-wise scales (groups of {layer.group_size}); the TensorRT "
                         f"plugins take one scale per row: export with --onnx-form standard or packed")
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
