"""GPU proof of the plugins_trt kernels against fq_export's PyTorch reference.

Tolerances follow fast-hadamard-transform: the kernel's error against a float64 reference may be
at most twice the error plain PyTorch makes in fp16 on the same inputs (plus a tiny floor for
ops that PyTorch computes exactly). Skipped without a CUDA GPU.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from fq_export import packing
from fq_export.basis import SideRecipe
from fq_export.frames import choose_frame, get_frame
from fq_export.layer import FrameQuantLinear
from fq_export.rotations import RotationSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"


@pytest.fixture(scope="module")
def h():
    from plugins_trt import harness

    harness.load_extension()
    return harness


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def check_against(out16, ref64, torch16, what, floor=1e-6):
    """Kernel error <= 2 x PyTorch-fp16 error (relative Frobenius norm), NaN never passes."""
    assert torch.isfinite(out16).all(), f"{what}: non-finite output"
    e_kernel, e_torch = rel_err(out16, ref64), rel_err(torch16, ref64)
    assert e_kernel <= 2 * e_torch + floor, f"{what}: kernel error {e_kernel:.3e} vs 2 x torch fp16 {e_torch:.3e}"
    return e_kernel, e_torch


# ---- rotation ------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [384, 768, 3072, 4096, 11008, 64])
@pytest.mark.parametrize("transpose", [False, True])
def test_rotation(h, dim, transpose):
    seed = 1234 + dim
    x = torch.randn(37, dim, device=DEV)
    ref64 = h.hadamard_rotation_ref(x.double(), dim, seed, transpose)
    torch16 = h.hadamard_rotation_ref(x.half(), dim, seed, transpose)
    check_against(h.hadamard_rotation(x.half(), dim, seed, transpose), ref64, torch16, f"rotation {dim}")
    out32 = h.hadamard_rotation(x, dim, seed, transpose)
    assert rel_err(out32, ref64) < 1e-5


# ---- frame ---------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [384, 768, 1536, 3072, 4096, 11008])
@pytest.mark.parametrize("transpose", [True, False])
def test_frame_transform(h, d, transpose):
    spec = choose_frame(d, 1.1)
    n_in = d if transpose else spec.num_vectors
    x = torch.randn(19, n_in, device=DEV)
    args = (spec.k, spec.rho, spec.d, transpose)
    ref64 = h.frame_transform_ref(x.double(), *args)
    torch16 = h.frame_transform_ref(x.half(), *args)
    check_against(h.frame_transform(x.half(), *args), ref64, torch16, f"frame {d} t={transpose}")
    check_against(h.frame_transform(x, *args), ref64, torch16, f"frame fp32 {d} t={transpose}")


def test_frame_dense_equivalent(h):
    spec = choose_frame(768, 1.1)
    t = torch.as_tensor(get_frame(spec.k, spec.rho, spec.d).dense(), device=DEV)
    u = torch.randn(5, 768, device=DEV, dtype=torch.float64)
    c = h.frame_transform(u.float(), spec.k, spec.rho, spec.d, True)
    assert rel_err(c, u @ t) < 2e-3  # fp16 tensor-core DFT


# ---- packed matmul -------------------------------------------------------------------------

def random_packed(rows, cols, bits, gen_device=DEV):
    codes = torch.randint(0, 2**bits, (rows, cols), device=gen_device)
    scale = (torch.rand(rows, device=gen_device) * 0.05 + 0.01).half()
    zero = (torch.rand(rows, device=gen_device) * (2**bits - 1)).half()
    return codes, packing.pack_codes(codes.cpu(), bits).to(gen_device), scale, zero


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rows", [1, 5, 16, 200])
@pytest.mark.parametrize("shape", [(840, 420), (4500, 4500), (1700, 3366)])
def test_packed_matmul(h, bits, rows, shape):
    if bits == 3 and shape[0] * rows > 1e6:
        pytest.skip("3 bits takes the plain CUDA-core kernel; small shapes suffice")
    out_f, in_f = shape
    _, packed, scale, zero = random_packed(out_f, in_f, bits)
    x = torch.randn(rows, in_f, device=DEV)
    args = (packed, scale, zero, bits, in_f, out_f)
    ref64 = h.packed_matmul_ref(x.double(), *args)
    d16 = h.dequantize(*args)
    torch16 = x.half() @ d16.T
    check_against(h.packed_matmul(x.half(), *args), ref64, torch16, f"matmul b={bits} M={rows} {shape}")
    check_against(h.packed_matmul(x, *args), ref64, torch16, f"matmul fp32 b={bits} M={rows} {shape}")


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape", [(4500, 4500), (1700, 3366), (512, 1024)])
def test_packed_matmul_gemm(h, bits, shape):
    # The cuBLAS form the TensorRT plugin runs from 64 rows: rows copied into K-padded buffers
    # (4500, 3366, 1700) or used in place (512, 1024), a workspace that held NaN before.
    out_f, in_f = shape
    _, packed, scale, zero = random_packed(out_f, in_f, bits)
    x = torch.randn(3, 111, in_f, device=DEV)
    args = (packed, scale, zero, bits, in_f, out_f)
    ref64 = h.packed_matmul_ref(x.double(), *args)
    torch16 = x.half() @ h.dequantize(*args).T
    stale = torch.full((32 << 20,), float("nan"), dtype=torch.float16, device=DEV)
    del stale
    got = h.packed_matmul(x.half(), *args, gemm=True)
    assert got.shape == (3, 111, out_f)
    check_against(got, ref64, torch16, f"matmul gemm b={bits} {shape}")
    with pytest.raises(RuntimeError, match="float16"):
        h.packed_matmul(x, *args, gemm=True)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dequantize_pins_unpack_codes(h, bits):
    """The CUDA code reader equals fq_export.packing.unpack_codes (exact integers)."""
    codes, packed, _, _ = random_packed(77, 1000 + bits, bits)
    ones, zeros = torch.ones(77, device=DEV).half(), torch.zeros(77, device=DEV).half()
    decoded = h.dequantize(packed, ones, zeros, bits, 1000 + bits, 77)
    assert torch.equal(decoded.long(), codes)
    assert torch.equal(packing.unpack_codes(packed.cpu(), bits, 1000 + bits), codes.cpu())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_tensor_core_decode_pins_unpack_codes(h, bits):
    """One-hot activations read single codes back through the tensor-core path."""
    in_f = 256
    codes, packed, _, _ = random_packed(48, in_f, bits)
    ones, zeros = torch.ones(48, device=DEV).half(), torch.zeros(48, device=DEV).half()
    eye = torch.eye(in_f, device=DEV).half()
    for rows in (8, 16, in_f):
        got = torch.cat([h.packed_matmul(eye[i:i + rows], packed, ones, zeros, bits, in_f, 48)
                         for i in range(0, in_f, rows)])
        assert torch.equal(got.T.long(), codes), f"rows={rows}"


# ---- whole layers --------------------------------------------------------------------------

def random_layer(in_features, out_features, bits=2, redundancy=1.1, seed=0, bias=True, rotate=True, frames=True):
    torch.manual_seed(seed)
    in_r = SideRecipe(in_features, RotationSpec(in_features, seed + 1) if rotate else None,
                      choose_frame(in_features, redundancy) if frames else None)
    out_r = SideRecipe(out_features, RotationSpec(out_features, seed + 2) if rotate else None,
                       choose_frame(out_features, redundancy) if frames else None)
    codes, packed, scale, zero = random_packed(out_r.size, in_r.size, bits, "cpu")
    scale = (scale.float() / math.sqrt(in_r.size)).half()
    b = torch.randn(out_features) * 0.1 if bias else None
    return FrameQuantLinear(in_r, out_r, bits, packed, scale, zero, b)


def layer_forward(layer, x, dtype):
    """The five steps with fq_export's operators in ``dtype`` (float64 reference / fp16 PyTorch)."""
    c = layer.in_basis.to_frame(x.to(dtype))
    z = c @ layer._dequantized.to(dtype).T
    y = layer.out_basis.from_frame(z)
    if layer.bias is not None:
        y = y + layer.bias.to(dtype)
    return y


def layer_paths(rows, gemm=True, split=True):
    """Every layer path that takes ``rows`` rows (``split``: the layer has both rotations and frames)."""
    return (["kernels"] + (["gemm", "dense"] if gemm else []) + (["fused", "cooperative"] if rows <= 16 else [])
            + (["decode"] if rows <= 8 else []) + (["split"] if rows <= 8 and split else [])
            + (["gemv"] if rows == 1 else []))


def odd_rotation(layer):
    """The layer has a rotation whose dimension is not a power of two (the gemv kernel refuses it)."""
    rotations = (layer.in_recipe.rotation, layer.out_recipe.rotation)
    return any(r is not None and r.dim & (r.dim - 1) for r in rotations)


@pytest.mark.parametrize("shape", [(4096, 4096), (4096, 11008), (11008, 4096), (768, 3072)])
@pytest.mark.parametrize("rows", [1, 3, 8, 16, 197 * 2])
def test_frame_linear_random_layers(h, shape, rows):
    in_f, out_f = shape
    layer = random_layer(in_f, out_f, seed=in_f + out_f).to(DEV)
    x = torch.randn(rows, in_f, device=DEV)
    ref64 = layer_forward(layer, x, torch.float64)
    torch16 = layer_forward(layer, x, torch.float16)
    for path in layer_paths(rows):
        try:
            out = h.frame_linear(x.half(), layer, path=path)
        except RuntimeError as err:
            # The decode kernel holds every token's frame coefficients in shared memory; only
            # layers where they cannot fit may refuse it (the fused path then takes the other kernel).
            # The gemv kernel refuses rotations with an odd factor.
            k_in = layer.frame_shape[1]
            if path == "gemv":
                assert odd_rotation(layer) and "not supported" in str(err), str(err)
            else:
                assert path == "decode" and "not supported" in str(err) and rows * k_in * 2 > 100_000, str(err)
            continue
        check_against(out, ref64, torch16, f"layer {shape} M={rows} path={path}")
    # Repeated single-launch layers share one counter (the decode kernel's arrivals, the
    # cooperative kernel's barrier): interleaved, results must not change.
    if rows <= 8 and rows * layer.frame_shape[1] * 2 <= 100_000:
        paths = [h.KernelLinear(layer, path=name) for name in ("decode", "cooperative", "split")]
        shared = torch.zeros(1, dtype=torch.int32, device=DEV)
        for kl in paths:
            kl._barrier = shared
        first = [kl(x.half()) for kl in paths]
        for _ in range(3):
            for kl, want in zip(paths, first):
                assert torch.equal(kl(x.half()), want), kl.path
        assert int(shared.item()) & 0x7FFFFFFF == 0


@pytest.mark.parametrize("shape,bits", [((4096, 4096), 2), ((4096, 4096), 4), ((4096, 4096), 8), ((1024, 2048), 2),
                                        ((2048, 1024), 2), ((128, 512), 2), ((256, 256), 4), ((1024, 8192), 2),
                                        ((8192, 1024), 2)])
def test_gemv_path(h, shape, bits):
    # One row: the codes split over the SMs by (tile, chunk) units, tiles shared by two blocks,
    # the epilogue by the last block. (1024, 8192): its epilogue does not fit in shared memory, so
    # the kernel refuses it and the fused path takes another kernel.
    in_f, out_f = shape
    layer = random_layer(in_f, out_f, bits=bits, seed=in_f + out_f + bits).to(DEV)
    x = torch.randn(1, in_f, device=DEV)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    try:
        got = h.frame_linear(x.half(), layer, path="gemv")
    except RuntimeError as err:
        assert shape == (1024, 8192) and "not supported" in str(err), str(err)
    else:
        check_against(got, ref64, torch16, f"gemv {shape} b={bits}")
        # The fused path takes this kernel for one row: the same result, bit for bit.
        assert torch.equal(h.frame_linear(x.half(), layer, path="fused"), got)
        out32 = h.frame_linear(x, layer, path="gemv")
        assert out32.dtype == torch.float32
        check_against(out32, ref64, torch16, f"gemv fp32 {shape} b={bits}")
    check_against(h.frame_linear(x.half(), layer, path="fused"), ref64, torch16, f"fused {shape} b={bits}")


@pytest.mark.parametrize("rotate,frames,bias", [(True, False, True), (False, True, True), (False, False, False),
                                                (True, True, False)])
def test_gemv_path_partial_sides(h, rotate, frames, bias):
    layer = random_layer(1024, 2048, rotate=rotate, frames=frames, bias=bias, seed=3).to(DEV)
    x = torch.randn(1, 1024, device=DEV)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    check_against(h.frame_linear(x.half(), layer, path="gemv"), ref64, torch16, f"gemv {rotate} {frames} {bias}")


def test_gemv_path_repeats_and_refuses(h):
    # Repeated launches sharing one counter with the decode kernel give identical results and
    # leave the counter's arrivals at zero; rows other than one and odd rotations are refused.
    layer = random_layer(4096, 4096, seed=9).to(DEV)
    x = torch.randn(1, 4096, device=DEV).half()
    kls = [h.KernelLinear(layer, path=name) for name in ("gemv", "decode")]
    shared = torch.zeros(1, dtype=torch.int32, device=DEV)
    for kl in kls:
        kl._barrier = shared
    first = [kl(x) for kl in kls]
    for _ in range(5):
        for kl, want in zip(kls, first):
            assert torch.equal(kl(x), want), kl.path
    assert int(shared.item()) & 0x7FFFFFFF == 0
    with pytest.raises(ValueError, match="one row, got 2"):
        h.frame_linear(torch.randn(2, 4096, device=DEV).half(), layer, path="gemv")
    with pytest.raises(RuntimeError, match="not supported"):
        h.frame_linear(torch.randn(1, 768, device=DEV).half(), random_layer(768, 768).to(DEV), path="gemv")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 6])
def test_split_path_wider_codes(h, bits, rows):
    layer = random_layer(4096, 4096, bits=bits, seed=bits).to(DEV)
    x = torch.randn(rows, 4096, device=DEV)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    for path in ("split", "decode"):
        check_against(h.frame_linear(x.half(), layer, path=path), ref64, torch16, f"b={bits} M={rows} {path}")


def test_split_path_needs_both_sides(h):
    layer = random_layer(768, 768, rotate=False).to(DEV)
    with pytest.raises(RuntimeError, match="not supported"):
        h.frame_linear(torch.randn(1, 768, device=DEV).half(), layer, path="split")
    with pytest.raises(ValueError, match="at most 8 rows, got 9"):
        h.frame_linear(torch.randn(9, 768, device=DEV).half(), random_layer(768, 768).to(DEV), path="split")


def test_decode_path_refuses_too_many_rows(h):
    layer = random_layer(768, 768).to(DEV)
    with pytest.raises(ValueError, match="at most 8 rows, got 9"):
        h.frame_linear(torch.randn(9, 768, device=DEV).half(), layer, path="decode")


@pytest.mark.parametrize("rotate,frames", [(True, False), (False, True), (False, False)])
def test_frame_linear_partial_sides(h, rotate, frames):
    layer = random_layer(768, 768, rotate=rotate, frames=frames).to(DEV)
    x = torch.randn(4, 768, device=DEV)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    for path in layer_paths(4, split=False):
        check_against(h.frame_linear(x.half(), layer, path=path), ref64, torch16, f"partial path={path}")



@pytest.mark.parametrize("shape,bias,rotate,frames", [((768, 3072), True, True, True), ((4096, 4096), False, True, True),
                                                     ((768, 768), True, True, False), ((768, 768), True, False, True)])
def test_many_rows_per_block(h, shape, bias, rotate, frames):
    # Several rows per block of the prologue and epilogue kernels: the staged form streams the
    # next row in while it transforms the current one (and reads its tables from shared memory).
    in_f, out_f = shape
    layer = random_layer(in_f, out_f, seed=7, bias=bias, rotate=rotate, frames=frames).to(DEV)
    rows = 1500 if in_f * out_f < 4e6 else 900
    x = torch.randn(rows, in_f, device=DEV)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    for path in ("kernels", "gemm", "dense"):
        check_against(h.frame_linear(x.half(), layer, path=path), ref64, torch16, f"{shape} M={rows} {path}")
    check_against(h.frame_linear(x, layer, path="kernels"), ref64, torch16, f"fp32 {shape} M={rows}")


@pytest.mark.parametrize("path", ["gemm", "dense"])
def test_gemm_path_padding_is_zeroed(h, path):
    # The GEMM runs on K rounded up to 64 with zero padding; a workspace that held NaN before
    # (the caching allocator hands the same memory back) must not leak into the output. The dense
    # path writes every value of its workspace buffers before reading it.
    layer = random_layer(4096, 4096, seed=3).to(DEV)
    assert layer.frame_shape[1] % 64 != 0
    x = torch.randn(300, 4096, device=DEV)
    stale = torch.full((64 << 20,), float("nan"), dtype=torch.float16, device=DEV)
    del stale
    out = h.frame_linear(x.half(), layer, path=path)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    check_against(out, ref64, torch16, f"{path} after a NaN workspace")


def test_dense_path_on_tensors_inside_an_allocation(h):
    # cuBLASLt is told the actual alignment of x (here 16 bytes, inside a larger allocation), not
    # the 256 bytes its heuristic assumes by default.
    layer = random_layer(768, 768, seed=4).to(DEV)
    rows = 1000
    big = torch.randn(rows * 768 + 8, device=DEV).half()
    x = big[8:].view(rows, 768)
    assert x.data_ptr() % 256 != 0 and x.is_contiguous()
    ref64, torch16 = layer_forward(layer, x.float(), torch.float64), layer_forward(layer, x.float(), torch.float16)
    check_against(h.frame_linear(x, layer, path="dense"), ref64, torch16, "dense, x 16-byte aligned")


@pytest.mark.parametrize("shape", [(768, 3072), (1024, 512)])
def test_dense_gemm_choices(h, shape):
    # Every entry of cuBLASLt's heuristic list (the plugin's tactics) computes the same layer, and
    # the timed choice is one of them.
    in_f, out_f = shape
    layer = random_layer(in_f, out_f, seed=9).to(DEV)
    x = torch.randn(1200, in_f, device=DEV)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    kl = h.KernelLinear(layer, path="dense")
    n = kl.dense_gemm_choices(x.half())
    assert 1 <= n <= 8
    for choice in range(n):
        kl.gemm_choice = choice
        check_against(kl(x.half()), ref64, torch16, f"dense {shape} GEMM choice {choice} of {n}")
    times = kl.choose_dense_gemm(x.half(), calls=2, repeats=1)
    assert len(times) == n and all(t > 0 for t in times) and kl.gemm_choice == times.index(min(times))
    check_against(kl(x.half()), ref64, torch16, f"dense {shape} chosen GEMM {kl.gemm_choice}")


@pytest.mark.parametrize("shape,bias", [((768, 3072), True), ((4096, 4096), True), ((1024, 512), False)])
def test_dense_weights_mode(h, shape, bias):
    # Dense at load: the weight built once and kept, every call one cuBLASLt GEMM. Any row count
    # (one row too) and fp32 activations (run in fp16); the buffer is built once and reused.
    in_f, out_f = shape
    layer = random_layer(in_f, out_f, seed=21, bias=bias).to(DEV)
    kl = h.KernelLinear(layer, weights="dense")
    for rows in (1, 16, 300):
        x = torch.randn(rows, in_f, device=DEV)
        ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
        out = kl(x.half())
        assert kl.last_path == "dense-weights" and out.dtype == torch.float16
        check_against(out, ref64, torch16, f"dense weights {shape} at {rows} rows")
    built = kl.dense_weight(x.device)
    assert kl(x).dtype == torch.float32 and kl.dense_weight(x.device).data_ptr() == built.data_ptr()
    with pytest.raises(ValueError, match="weights"):
        h.KernelLinear(layer, weights="fp8")


def dense_weight16(layer):
    """P_out D_hat P_in^T with fq_export's operators in fp16 on the GPU (PyTorch's own rounding)."""
    d_hat = layer._dequantized.half()
    left = layer.out_basis.from_frame(d_hat.T).T
    return layer.in_basis.from_frame(left)


@pytest.mark.parametrize("by_rows", [False, True], ids=["auto", "rows"])
@pytest.mark.parametrize("shape,rotate,frames,bits", [((768, 3072), True, True, 2), ((3072, 768), True, True, 2),
                                                      ((4096, 4096), True, True, 2), ((1024, 2048), True, True, 2),
                                                      ((128, 512), True, True, 2), ((1024, 8192), True, True, 2),
                                                      ((2048, 1024), True, False, 2), ((768, 768), False, True, 2),
                                                      ((768, 768), True, False, 2), ((384, 1536), False, False, 2),
                                                      ((97, 130), False, False, 2), ((1024, 1024), False, True, 2),
                                                      ((512, 256), False, False, 2), ((1024, 2048), True, True, 4),
                                                      ((2048, 1024), True, True, 8), ((1024, 2048), True, True, 3),
                                                      ((384, 1536), True, True, 2), ((640, 1280), True, True, 2),
                                                      ((4096, 11008), True, True, 2), ((11008, 4096), True, True, 2)])
def test_effective_weight(h, shape, rotate, frames, bits, by_rows):
    # The dense path's weight, built on the GPU, against FrameQuantLinear.dense_weight (float64,
    # dense frame and rotation operators). by_rows: one weight row at a time (the side-rows
    # kernel: Walsh-Hadamard passes of 16 points on tensor cores, of fewer points (1024, 2048,
    # 8192) or short rows (128) on CUDA cores, DFT widths over 64 (8192); with an odd factor (384,
    # 768, 1536, 3072: 3; 640, 1280: 5; 11008: 43) on planes of the power axis, then the odd mix on
    # tensor cores; the input side decodes D_hat's rows from 2-, 4- and 8-bit codes in the kernel,
    # 3 bits decode apart). auto: the slab kernels, 8 rows decoded from the codes (2, 4, 8 bits; 3
    # bits decode apart) and then 8 columns at a time, on power-of-two sides and sides with the odd
    # factor 3 (planes of the power axis, the DCT mixed in registers); the odd factors 5 and 43
    # take the rows (where the input side takes slabs, its pass writes F transposed for them:
    # 4096x11008, and 1024x8192 whose 8192 side's slabs exceed shared memory); K_out = 4500 leaves
    # a partial last slab.
    in_f, out_f = shape
    layer = random_layer(in_f, out_f, bits=bits, seed=in_f + 2 * out_f, rotate=rotate, frames=frames).to(DEV)
    w = h.effective_weight(layer, by_rows=by_rows)
    assert w.shape == (out_f, in_f) and w.dtype == torch.float16
    check_against(w, layer.dense_weight().to(DEV), dense_weight16(layer), f"effective weight {shape}")


def test_dense_path_refuses_fp32(h):
    layer = random_layer(768, 768).to(DEV)
    with pytest.raises(RuntimeError, match="float16"):
        h.frame_linear(torch.randn(300, 768, device=DEV), layer, path="dense")


def test_auto_path_rule(h):
    # fq::auto_layer_path, which the FQFrameLinear plugin calls too: one row single-launch, three
    # launches below 64 rows and for fp32, then for fp16 the gemm path and from dense_min_rows the dense form.
    n, m, k_out = 768, 3072, random_layer(768, 3072).frame_shape[0]
    dense = h.dense_min_rows(n, m, k_out)
    assert 64 < dense
    expect = {(1, True): "fused", (1, False): "fused", (2, True): "kernels", (63, True): "kernels",
              (64, True): "gemm", (dense - 1, True): "gemm", (dense, True): "dense", (5000, False): "kernels"}
    for (rows, fp16), path in expect.items():
        assert h.auto_path(rows, fp16, n, m, k_out) == path, (rows, fp16)


def test_auto_path_takes_dense_for_many_rows(h, monkeypatch):
    # From dense_min_rows rows the automatic choice is the dense form, below it the gemm path.
    layer = random_layer(768, 3072, seed=5).to(DEV)
    taken = []
    ext = h.load_extension()

    class Spy:
        def __getattr__(self, name):
            return getattr(ext, name)

        def frame_linear(self, x, tables, ints, path, barrier, **kw):
            taken.append(path)
            return ext.frame_linear(x, tables, ints, path, barrier, **kw)

    # KernelLinear's module looks the extension up at every call (plugins_trt.runtime.layers).
    monkeypatch.setattr(sys.modules[h.KernelLinear.__module__], "load_extension", lambda: Spy())
    kl = h.KernelLinear(layer)
    k_out = layer.frame_shape[0]
    rows_dense = h.dense_min_rows(768, 3072, k_out)
    assert rows_dense == -(-768 * (k_out + 3072) // (768 + 3072)) and 768 < rows_dense < 3072
    for rows in (rows_dense - 1, rows_dense):
        x = torch.randn(rows, 768, device=DEV)
        ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
        check_against(kl(x.half()), ref64, torch16, f"auto M={rows}")
    assert taken == [h.PATHS["gemm"], h.PATHS["dense"]]

MINILM_LAYERS = os.environ.get("FQ_MINILM_LAYERS", "")


@pytest.mark.skipif(not MINILM_LAYERS or not os.path.exists(MINILM_LAYERS),
                    reason="set FQ_MINILM_LAYERS to a checkpoint of quantized MiniLM layers")
def test_frame_linear_real_minilm_layers(h):
    from fq_export.checkpoint import load_checkpoint

    layers, _ = load_checkpoint(MINILM_LAYERS, device=DEV)
    assert layers
    for name, layer in layers.items():
        for rows in (1, 16, 128):
            x = torch.randn(rows, layer.in_features, device=DEV)
            ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
            for path in layer_paths(rows):
                if path == "gemv" and odd_rotation(layer):  # MiniLM's widths have the odd factor 3
                    continue
                check_against(h.frame_linear(x.half(), layer, path=path), ref64, torch16, f"{name} M={rows} {path}")


@pytest.mark.parametrize("rows", [5, 300])
def test_frame_linear_fp32_activations(h, rows):
    layer = random_layer(768, 3072, seed=11).to(DEV)
    x = torch.randn(rows, 768, device=DEV)
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    for path in layer_paths(rows, gemm=False):
        out = h.frame_linear(x, layer, path=path)
        assert out.dtype == torch.float32
        check_against(out, ref64, torch16, f"fp32 M={rows} {path}")


def test_unknown_path_is_refused(h):
    layer = random_layer(768, 768).to(DEV)
    with pytest.raises(ValueError, match="unknown kernel path"):
        h.KernelLinear(layer, path="fastest")


def test_act_dtype_casts_activations(h):
    # act_dtype=float16: fp32 activations go into the kernels as fp16 (so the fp16-only dense path
    # is taken for many rows) and the output comes back as fp32.
    layer = random_layer(768, 768, seed=9).to(DEV)
    x = torch.randn(1000, 768, device=DEV)
    kl = h.KernelLinear(layer, act_dtype=torch.float16)
    out = kl(x)
    assert out.dtype == torch.float32 and kl.last_path == "dense"
    ref64, torch16 = layer_forward(layer, x, torch.float64), layer_forward(layer, x, torch.float16)
    check_against(out, ref64, torch16, "act_dtype fp16")
    assert h.KernelLinear(layer)(x).dtype == torch.float32
    with pytest.raises(ValueError, match="act_dtype"):
        h.KernelLinear(layer, act_dtype=torch.int8)
