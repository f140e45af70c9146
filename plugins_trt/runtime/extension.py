"""The PyTorch extension of the plugins_trt kernels and the tables it makes from the recipes.

The extension is JIT-built (``torch.utils.cpp_extension.load``, ninja) from the very sources the
TensorRT plugins compile: every ``plugins_trt/csrc/**/*.cu``, ``csrc/recipe.cpp``,
``csrc/gemm_cublas.cpp`` and the thin binding ``torch_ext/binding.cpp``. Tables (signs, DCT, frame
gathers, DFT) come from the C++ recipe, not from fq_export, so a test against fq_export's PyTorch
reference also checks the recipe.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # plugins_trt/
CSRC = ROOT / "csrc"
KERNEL_SOURCES = sorted(str(p) for p in CSRC.rglob("*.cu"))
HOST_SOURCES = [str(CSRC / "recipe.cpp"), str(CSRC / "gemm_cublas.cpp")]


@functools.lru_cache(maxsize=1)
def load_extension(verbose: bool = False):
    """Build (once per source change) and import the extension; needs a CUDA toolkit and GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("the plugins_trt kernels need a CUDA GPU; none is visible to torch")
    from torch.utils.cpp_extension import load

    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    # FQ_TRACE=1: a profiling build whose kernels record %globaltimer stamps (ext.read_trace()).
    trace = ["-DFQ_TRACE"] if os.environ.get("FQ_TRACE") == "1" else []
    return load(
        name="fq_plugins_ext_trace" if trace else "fq_plugins_ext",
        sources=[str(ROOT / "torch_ext" / "binding.cpp"), *HOST_SOURCES, *KERNEL_SOURCES],
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O3", *trace],
        extra_ldflags=["-lcublas", "-lcublasLt"],
        extra_cuda_cflags=["-O3", "--use_fast_math", "-lineinfo", *trace],
        verbose=verbose,
    )


@functools.lru_cache(maxsize=1)
def layer_paths() -> dict[str, int]:
    """Every layer path, name -> value, as ``fq::kLayerPathNames`` (csrc/fq_kernels.h) defines them;
    ``"dense-weights"`` is the dense-at-load mode, the others are what ``frame_linear`` takes."""
    return dict(load_extension().layer_paths())


# ---- tables from the C++ recipe -----------------------------------------------------------

@functools.lru_cache(maxsize=256)
def rotation_tables(dim: int, seed: int, device: str):
    """``([signs f32, dct f32], [dim, power, odd])`` on ``device``."""
    ext = load_extension()
    signs, dct = ext.rotation_tables(dim, seed)
    power = dim & -dim
    return [signs.float().to(device), dct.float().contiguous().to(device)], [dim, power, dim // power]


@functools.lru_cache(maxsize=256)
def frame_tables(k: int, rho: int, d: int, device: str):
    """``([gather_index, gather_weight, synth_bin, synth_weight, dft, dft_t], [k, rho_c, d_c, kp])``.

    The realified DFT ``M`` (``2k x 2k``) is zero-padded to ``kp = ceil(2k / 16) * 16`` and
    stored in fp16 (the kernels run it on tensor cores with fp32 accumulation).
    """
    ext = load_extension()
    gi, gw, sb, sw, dft = ext.frame_tables(k, rho, d)
    kp = -(-2 * k // 16) * 16
    padded = torch.zeros(kp, kp, dtype=torch.float64)
    padded[: 2 * k, : 2 * k] = dft
    tables = [gi, gw.float(), sb.contiguous(), sw.float().contiguous(), padded.half(), padded.T.contiguous().half()]
    return [t.contiguous().to(device) for t in tables], [k, rho // 2, d // 2, kp]


def matmul_tables(packed_codes, scale, zero, bits, in_features, out_features):
    """``([codes i32, scale f16, zero f16], [bits, in_features, out_features])``."""
    return ([packed_codes.to(torch.int32).contiguous(), scale.to(torch.float16).contiguous(),
             zero.to(torch.float16).contiguous()], [bits, in_features, out_features])
