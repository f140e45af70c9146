"""The FQFrameLinear TensorRT plugin run through TensorRT's calling sequence, without TensorRT.

TensorRT's runtime cannot be installed here, but its headers can be had (NVIDIA/TensorRT) and the
plugin's glue does not link libnvinfer. ``plugin_glue_check.cpp`` links the plugin library's
sources and drives the plugin the way TensorRT does (creator, build checks, serialization,
context clone, onShapeChange + enqueue per case, a workspace of the size the plugin asks for, filled with NaN).
This script writes its data (a random 768x768 FrameQuant layer, or --size N for N x N, inputs,
float64 references and tolerances), builds it with nvcc and runs it on the GPU:

    python plugins_trt/tools/plugin_glue_check.py run --trt-include /path/to/TensorRT/include [--workdir DIR]

The cases cover the plugin's four paths at the default thresholds: 1 row (single launch), 16 rows
(three launches), 300 fp16 rows (gemm path), 1000 fp16 rows (dense form, from dense_min_rows =
804 rows for 768x768) and 300 fp32 rows; scale/zero fp32 (as the ONNX Cast gives them) and fp16.
Tolerance as in tests/test_plugins_kernels.py: relative error at most twice PyTorch's fp16 error.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fq_export import plugin_ops  # noqa: E402
from plugins_trt import harness  # noqa: E402

CASES = {  # name: (rows, activations, scale/zero dtype); the dense case takes at least dense_min_rows
    "single": (1, 16, 32),
    "three": (16, 16, 32),
    "gemm": (300, 16, 32),
    "dense": (1000, 16, 16),
    "fp32": (300, 32, 32),
}
SIZE = 768  # the layer is SIZE x SIZE; --size 1024 for a width without an odd factor (one row: the gemv kernel)


def forward(layer, x: torch.Tensor, dtype) -> torch.Tensor:
    """The five steps with fq_export's operators in ``dtype`` (float64 reference, fp16 PyTorch)."""
    c = layer.in_basis.to_frame(x.to(dtype))
    y = layer.out_basis.from_frame(c @ layer._dequantized.to(dtype).T)
    return y + layer.bias.to(dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def write_data(folder: Path, seed: int = 5, size: int = SIZE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    layer = harness.random_frame_layer(size, size, seed=seed)
    attrs = plugin_ops.layer_attributes(layer)
    names = list(plugin_ops.ATTRIBUTES[plugin_ops.LAYER_OP])
    k_out = layer.frame_shape[0]
    cases = dict(CASES)
    cases["dense"] = (max(CASES["dense"][0], dense_rows(size, k_out)), *CASES["dense"][1:])
    layer.packed_codes.numpy().astype(np.int32).tofile(folder / "codes.bin")
    layer.scale.float().numpy().tofile(folder / "scale.bin")
    layer.zero.float().numpy().tofile(folder / "zero.bin")
    layer.bias.float().numpy().tofile(folder / "bias.bin")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gpu_layer = layer.to(dev)
    lines = [f"fields {' '.join(names)}", f"values {' '.join(str(attrs[n]) for n in names)}",
             f"in_dim {size}", f"out_dim {size}", f"k_out {k_out}", f"words {layer.packed_codes.shape[1]}",
             f"max_rows {max(c[0] for c in cases.values())}", f"cases {' '.join(cases)}"]
    gen = torch.Generator().manual_seed(seed)
    for name, (rows, act, sz) in cases.items():
        x = torch.randn(rows, size, generator=gen)
        x_in = x.half().float() if act == 16 else x  # what the plugin is given
        ref = forward(gpu_layer, x_in.to(dev), torch.float64)
        e16 = rel_err(forward(gpu_layer, x_in.to(dev), torch.float16), ref)
        x_in.numpy().astype(np.float32).tofile(folder / f"x_{name}.bin")
        ref.cpu().numpy().astype(np.float64).tofile(folder / f"y_{name}.bin")
        lines.append(f"case_{name} {rows} {act} {sz} {2 * e16 + 1e-6:.6e}")
    (folder / "meta.txt").write_text("\n".join(lines) + "\n")
    assert cases["gemm"][0] < dense_rows(size, k_out) <= cases["dense"][0]


def dense_rows(size: int, k_out: int) -> int:
    """dense_min_rows of fq_kernels.h for a size x size layer, evaluated here without the extension."""
    return math.ceil(size * (k_out + size) / (2 * size))


def sources() -> list[Path]:
    """Everything the plugin library compiles: the kernels, the host parts, the plugins."""
    plugins = ROOT / "plugins_trt"
    csrc = plugins / "csrc"
    return [*sorted(csrc.rglob("*.cu")), csrc / "gemm_cublas.cpp", csrc / "recipe.cpp", *sorted((plugins / "trt").rglob("*.cpp"))]


def build(trt_include: Path, out: Path) -> None:
    """One nvcc per source, as many at once as there are CPUs, then the link."""
    csrc = ROOT / "plugins_trt" / "csrc"
    major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
    flags = ["-O2", "-std=c++17", f"-arch=sm_{major}{minor}", "--use_fast_math", "-DFQ_WITH_CUBLAS",
             "-Xcompiler", "-Wno-deprecated-declarations", "-I", str(csrc), "-I", str(trt_include)]
    objects = out.parent / "obj"
    objects.mkdir(parents=True, exist_ok=True)
    units = [*sources(), Path(__file__).with_suffix(".cpp")]

    def compile_one(source: Path) -> Path:
        obj = objects / (str(source.relative_to(ROOT)).replace("/", "_") + ".o")
        subprocess.run(["nvcc", *flags, "-c", str(source), "-o", str(obj)], check=True)
        return obj

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        objs = list(pool.map(compile_one, units))
    subprocess.run(["nvcc", f"-arch=sm_{major}{minor}", *map(str, objs), "-lcublas", "-lcublasLt", "-o", str(out)],
                   check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write the layer, inputs and references")
    d.add_argument("dir", type=Path)
    d.add_argument("--size", type=int, default=SIZE, help=f"layer width (default {SIZE})")
    r = sub.add_parser("run", help="write the data, build with nvcc, run")
    r.add_argument("--size", type=int, default=SIZE, help=f"layer width (default {SIZE})")
    r.add_argument("--trt-include", type=Path,
                   default=Path(os.environ.get("FQ_TRT_INCLUDE") or ROOT / ".trt_headers" / "include"),
                   help="TensorRT's include folder (NvInferRuntime.h; default $FQ_TRT_INCLUDE, else .trt_headers/include)")
    r.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "data":
        write_data(args.dir, size=args.size)
        return 0
    if not (args.trt_include / "NvInferRuntime.h").exists():
        raise SystemExit(f"no NvInferRuntime.h in {args.trt_include}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fq_glue_"))
    write_data(work / "data", size=args.size)
    build(args.trt_include, work / "plugin_glue_check")
    return subprocess.run([str(work / "plugin_glue_check"), str(work / "data")]).returncode


if __name__ == "__main__":
    raise SystemExit(main())
