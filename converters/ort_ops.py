"""onnxruntime implementations of the plugin-form ops (onnxruntime-extensions Python custom ops).

With these registered, the plugin-form file that TensorRT parses runs unchanged in onnxruntime.
Each op calls fq_export's own fast PyTorch operators (the PyTorch reference of the CUDA kernels):
``FQHadamardRotation`` -> ``HadamardRotation.forward/transpose``, ``FQFrameTransform`` ->
``TightFusionFrame.synthesis/analysis``, ``FQPackedMatMul`` -> ``packing.unpack_codes`` and a
float32 matmul, ``FQFrameLinear`` -> ``FrameQuantLinear`` rebuilt from the node's attributes and
inputs. Inputs and outputs are float32 activations (the exported graphs are fp32).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from fq_export import packing, plugin_ops
from fq_export.basis import SideRecipe
from fq_export.frames import FrameSpec, get_frame
from fq_export.layer import FrameQuantLinear
from fq_export.rotations import RotationSpec, get_rotation

_REGISTERED = False


@functools.lru_cache(maxsize=512)
def _dequantized(key: bytes, bits: int, rows: int, cols: int, scale: bytes, zero: bytes) -> torch.Tensor:
    packed = torch.from_numpy(np.frombuffer(key, dtype=np.int32).reshape(rows, -1).copy())
    codes = packing.unpack_codes(packed, bits, cols).to(torch.float32)
    s = torch.from_numpy(np.frombuffer(scale, dtype=np.float32).copy()).unsqueeze(1)
    z = torch.from_numpy(np.frombuffer(zero, dtype=np.float32).copy()).unsqueeze(1)
    return (s * (codes - z)).T.contiguous()


def rotation(x: np.ndarray, dim: int, seed: int, transpose: int) -> np.ndarray:
    if x.shape[-1] != dim:
        raise ValueError(f"FQHadamardRotation(dim={dim}) got last axis {x.shape[-1]}")
    r = get_rotation(int(dim), int(seed))
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return (r.transpose(t) if transpose else r.forward(t)).numpy()


def frame(x: np.ndarray, k: int, rho: int, d: int, transpose: int) -> np.ndarray:
    f = get_frame(int(k), int(rho), int(d))
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return (f.analysis(t) if transpose else f.synthesis(t)).numpy()


def packed_matmul(x, codes, scale, zero, bits: int, in_features: int, out_features: int, layout_version: int):
    if int(layout_version) != packing.LAYOUT_VERSION:
        raise ValueError(f"FQPackedMatMul: layout version {layout_version} is not {packing.LAYOUT_VERSION}")
    if x.shape[-1] != in_features or codes.shape[0] != out_features:
        raise ValueError(f"FQPackedMatMul({out_features}x{in_features}) got x {x.shape}, codes {codes.shape}")
    d_t = _dequantized(np.ascontiguousarray(codes, dtype=np.int32).tobytes(), int(bits), int(out_features),
                       int(in_features), np.ascontiguousarray(scale, np.float32).tobytes(),
                       np.ascontiguousarray(zero, np.float32).tobytes())
    return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) @ d_t).numpy()


def layer_from_attributes(attrs: dict, codes: np.ndarray, scale: np.ndarray, zero: np.ndarray,
                          bias: np.ndarray) -> FrameQuantLinear:
    """The ``FrameQuantLinear`` an ``FQFrameLinear`` node describes (fq_export.plugin_ops)."""
    sides = []
    for side in ("in", "out"):
        dim = int(attrs[f"{side}_dim"])
        rotation = RotationSpec(dim, int(attrs[f"seed_{side}"])) if int(attrs[f"rotate_{side}"]) else None
        k, rho = int(attrs[f"frame_{side}_k"]), int(attrs[f"frame_{side}_rho"])
        if (k == 0) != (rho == 0):
            raise ValueError(f"FQFrameLinear: frame_{side}_k and frame_{side}_rho must both be 0 or both positive")
        sides.append(SideRecipe(dim, rotation, FrameSpec(k, rho, dim) if k else None))
    b = torch.from_numpy(np.array(bias, dtype=np.float32))
    if b.numel() != sides[1].dim:
        raise ValueError(f"FQFrameLinear: bias has {b.numel()} values, out_dim is {sides[1].dim}")
    return FrameQuantLinear(sides[0], sides[1], int(attrs["bits"]), torch.from_numpy(np.array(codes, dtype=np.int32)),
                            torch.from_numpy(np.array(scale, dtype=np.float32)),
                            torch.from_numpy(np.array(zero, dtype=np.float32)), b,
                            layout_version=int(attrs["layout_version"]))


@functools.lru_cache(maxsize=512)
def _layer(attr_items: tuple, codes: bytes, codes_shape: tuple, scale: bytes, zero: bytes,
           bias: bytes) -> FrameQuantLinear:
    f32 = functools.partial(np.frombuffer, dtype=np.float32)
    return layer_from_attributes(dict(attr_items), np.frombuffer(codes, dtype=np.int32).reshape(codes_shape),
                                 f32(scale), f32(zero), f32(bias)).eval()


def frame_linear(x, codes, scale, zero, bias, **attrs) -> np.ndarray:
    attrs = {k: int(v) for k, v in attrs.items() if k in plugin_ops.ATTRIBUTES[plugin_ops.LAYER_OP]}
    if x.shape[-1] != attrs["in_dim"]:
        raise ValueError(f"FQFrameLinear(in_dim={attrs['in_dim']}) got last axis {x.shape[-1]}")
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    layer = _layer(tuple(sorted(attrs.items())), codes.tobytes(), codes.shape,
                   np.ascontiguousarray(scale, np.float32).tobytes(), np.ascontiguousarray(zero, np.float32).tobytes(),
                   np.ascontiguousarray(bias, np.float32).tobytes())
    with torch.no_grad():
        return layer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def register() -> str:
    """Register the four ops with onnxruntime-extensions (once); returns its library path."""
    global _REGISTERED
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    if not _REGISTERED:
        f32, i32, i64, s = (PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32,
                                 PyCustomOpDef.dt_int64, PyCustomOpDef.dt_string)
        trt = {"plugin_version": s, "plugin_namespace": s}

        @onnx_op(op_type=plugin_ops.ROTATION_OP, inputs=[f32], outputs=[f32],
                 attrs={"dim": i64, "seed": i64, "transpose": i64, **trt})
        def _rotation(x, dim, seed, transpose, **_):
            return rotation(x, dim, seed, transpose)

        @onnx_op(op_type=plugin_ops.FRAME_OP, inputs=[f32], outputs=[f32],
                 attrs={"k": i64, "rho": i64, "d": i64, "transpose": i64, **trt})
        def _frame(x, k, rho, d, transpose, **_):
            return frame(x, k, rho, d, transpose)

        @onnx_op(op_type=plugin_ops.MATMUL_OP, inputs=[f32, i32, f32, f32], outputs=[f32],
                 attrs={"bits": i64, "in_features": i64, "out_features": i64, "layout_version": i64, **trt})
        def _matmul(x, codes, scale, zero, bits, in_features, out_features, layout_version, **_):
            return packed_matmul(x, codes, scale, zero, bits, in_features, out_features, layout_version)

        layer_attrs = {name: i64 for name in plugin_ops.ATTRIBUTES[plugin_ops.LAYER_OP]}

        @onnx_op(op_type=plugin_ops.LAYER_OP, inputs=[f32, i32, f32, f32, f32], outputs=[f32],
                 attrs={**layer_attrs, **trt})
        def _layer_op(x, codes, scale, zero, bias, **attrs):
            return frame_linear(x, codes, scale, zero, bias, **attrs)

        _REGISTERED = True
    return get_library_path()
