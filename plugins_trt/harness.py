"""The PyTorch harness of the plugins_trt kernels, for tests and benchmarks: one documented function
per op, each with a plain reference beside it (``*_ref``) built on fq_export's own PyTorch
implementation of the same op, and random layers.

The production side lives in ``plugins_trt.runtime`` and is re-exported here under the names the
tests and benchmarks use: ``load_extension`` and the recipe tables (``runtime.extension``),
``KernelLinear``, ``use_kernels``, ``auto_path``, ``dense_min_rows``, ``gpu_time_us`` and the layer
paths ``PATHS`` (``runtime.layers``; ``PATHS`` is built from the extension on first use).
"""
from __future__ import annotations

import torch

from fq_export import packing
from fq_export.frames import get_frame
from fq_export.layer import FrameQuantLinear
from fq_export.rotations import get_rotation
from plugins_trt.runtime import layers as _layers
from plugins_trt.runtime.extension import (  # noqa: F401
    CSRC,
    KERNEL_SOURCES,
    ROOT,
    frame_tables,
    layer_paths,
    load_extension,
    matmul_tables,
    rotation_tables,
)
from plugins_trt.runtime.layers import (  # noqa: F401
    DENSE_WEIGHTS,
    WEIGHT_MODES,
    KernelLinear,
    auto_path,
    dense_min_rows,
    gpu_time_us,
    paths,
    use_kernels,
)


def __getattr__(name):  # PATHS: the layer paths, built from the extension on first use
    if name == "PATHS":
        return _layers.paths()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- the three plugin-form ops ------------------------------------------------------------

def hadamard_rotation(x: torch.Tensor, dim: int, seed: int, transpose: bool = False) -> torch.Tensor:
    """``FQHadamardRotation``: ``y = R x`` (or ``R^T x``) on the last axis, ``(..., dim)``.

    ``R = (H_{2^p} kron C_m) diag(s)`` of ``fq_export.rotations`` (``dim = 2^p m``, ``m`` odd);
    dense equivalent ``y = x @ R.T`` (``x @ R`` for the transpose). fp16 or fp32 in and out,
    fp32 arithmetic inside.
    """
    tables, ints = rotation_tables(dim, seed, str(x.device))
    return load_extension().rotation(x.contiguous(), tables, ints, transpose)


def hadamard_rotation_ref(x: torch.Tensor, dim: int, seed: int, transpose: bool = False) -> torch.Tensor:
    rotation = get_rotation(dim, seed)
    return rotation.transpose(x) if transpose else rotation.forward(x)


def frame_transform(x: torch.Tensor, k: int, rho: int, d: int, transpose: bool) -> torch.Tensor:
    """``FQFrameTransform``: synthesis ``v = T z`` (``transpose=False``: ``(..., K) -> (..., d)``)
    or analysis ``c = T^T u`` (``transpose=True``: ``(..., d) -> (..., K)``), ``K = k rho``.

    Dense equivalent: ``v = z @ T.T`` / ``c = u @ T`` with ``T = get_frame(k, rho, d).dense()``.
    Gathers in fp32, the per-block DFT on tensor cores (fp16 operands, fp32 accumulation).
    """
    tables, ints = frame_tables(k, rho, d, str(x.device))
    return load_extension().frame(x.contiguous(), tables, ints, transpose)


def frame_transform_ref(x: torch.Tensor, k: int, rho: int, d: int, transpose: bool) -> torch.Tensor:
    frame = get_frame(k, rho, d)
    return frame.analysis(x) if transpose else frame.synthesis(x)


def packed_matmul(x, packed_codes, scale, zero, bits: int, in_features: int, out_features: int,
                  gemm: bool = False) -> torch.Tensor:
    """``FQPackedMatMul``: ``z = x @ D_hat^T``, ``D_hat = scale * (codes - zero)`` row-wise.

    ``x (..., in_features)``; ``packed_codes (out_features, words)`` int32 in the layout of
    ``fq_export.packing``; ``scale``, ``zero`` ``(out_features,)`` fp16. Output
    ``(..., out_features)`` in the dtype of ``x`` (activations enter the tensor cores as fp16;
    the accumulation is fp32). ``gemm``: ``D_hat`` decoded to fp16 and one cuBLAS GEMM on
    K-padded copies (fp16 ``x`` only), what the TensorRT plugin runs from 64 rows.
    """
    tables, ints = matmul_tables(packed_codes, scale, zero, bits, in_features, out_features)
    return load_extension().packed_matmul(x.contiguous(), tables, ints, gemm)


def packed_matmul_ref(x, packed_codes, scale, zero, bits: int, in_features: int, out_features: int):
    codes = packing.unpack_codes(packed_codes, bits, in_features).to(torch.float32)
    d_hat = scale.float().unsqueeze(1) * (codes - zero.float().unsqueeze(1))
    return (x.float() @ d_hat.T).to(x.dtype)


def dequantize(packed_codes, scale, zero, bits: int, in_features: int, out_features: int) -> torch.Tensor:
    """Dense fp16 ``D_hat`` ``(out_features, in_features)`` decoded on the GPU."""
    tables, ints = matmul_tables(packed_codes, scale, zero, bits, in_features, out_features)
    return load_extension().dequantize(tables, ints)


# ---- whole layers -------------------------------------------------------------------------

def effective_weight(layer: FrameQuantLinear, device="cuda", by_rows: bool = False) -> torch.Tensor:
    """``W = P_out D_hat P_in^T`` (``out x in``, fp16) as the dense path builds it on the GPU;
    ``by_rows`` forces the row-at-a-time build that the slab kernels replace where they can."""
    tables, ints = KernelLinear(layer).tables(torch.device(device))
    return load_extension().effective_weight(tables, ints, by_rows).T


def frame_linear(x: torch.Tensor, layer: FrameQuantLinear, fused: bool | None = None,
                 path: str | None = None) -> torch.Tensor:
    """One quantized layer through the kernels; see ``KernelLinear``."""
    return KernelLinear(layer, fused, path)(x)


def frame_linear_ref(x: torch.Tensor, layer: FrameQuantLinear) -> torch.Tensor:
    return layer(x)


def random_frame_layer(in_features: int, out_features: int, bits: int = 2, redundancy: float = 1.1, seed: int = 0,
                       bias: bool = True) -> FrameQuantLinear:
    """A FrameQuant layer with random codes (both sides rotated and framed), for tests and benchmarks."""
    import math

    from fq_export.basis import SideRecipe
    from fq_export.frames import choose_frame
    from fq_export.rotations import RotationSpec

    gen = torch.Generator().manual_seed(seed)
    in_r = SideRecipe(in_features, RotationSpec(in_features, seed + 1), choose_frame(in_features, redundancy))
    out_r = SideRecipe(out_features, RotationSpec(out_features, seed + 2), choose_frame(out_features, redundancy))
    codes = torch.randint(0, 2**bits, (out_r.size, in_r.size), generator=gen)
    scale = ((torch.rand(out_r.size, generator=gen) * 0.05 + 0.01) / math.sqrt(in_r.size)).half()
    zero = (torch.rand(out_r.size, generator=gen) * (2**bits - 1)).half()
    b = torch.randn(out_features, generator=gen) * 0.1 if bias else None
    return FrameQuantLinear(in_r, out_r, bits, packing.pack_codes(codes, bits), scale, zero, b)
