"""Where the time of one FrameQuant layer goes on the GPU: each of the five steps timed alone.

(The layer paths fuse rotate-in + analysis into one prologue and synthesis + rotate-out into one
epilogue; the single-op kernels timed here are those of the TensorRT op plugins.)

For each shape and row count M: the input rotation, frame analysis, packed matmul, frame synthesis and
output rotation kernels of ``plugins_trt`` (each launched alone, CUDA graphs as in
``benchmarks/kernels.py``), against what the same step would cost at the memory roofline (its bytes
read + written over the measured copy bandwidth) and against cuBLAS fp16 on the dense weight. The
profile that explains a missed goal of ``benchmarks/kernels.py``.

    python benchmarks/kernel_steps.py --json benchmarks/results/h100/kernel_steps_h100.json
"""
from __future__ import annotations

import argparse
import re
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import copy_bandwidth, time_fn  # noqa: E402
from plugins_trt import harness  # noqa: E402

SHAPES = [(768, 768), (4096, 4096), (4096, 11008)]
ROWS = [1, 16, 197 * 64]


def steps(layer, rows: int, bandwidth: float) -> list[dict]:
    ri, fi = layer.in_recipe.rotation, layer.in_recipe.frame
    ro, fo = layer.out_recipe.rotation, layer.out_recipe.frame
    k_out, k_in = layer.frame_shape
    kl = harness.KernelLinear(layer, fused=False)
    tables, _ = kl.tables(torch.device("cuda"))
    mt = tables[8:11]
    n, m = layer.in_features, layer.out_features
    x = [torch.randn(rows, n, device="cuda", dtype=torch.float16) for _ in range(4)]
    c = [torch.randn(rows, k_in, device="cuda", dtype=torch.float16) for _ in range(4)]
    z = [torch.randn(rows, k_out, device="cuda", dtype=torch.float16) for _ in range(4)]
    v = [torch.randn(rows, m, device="cuda", dtype=torch.float16) for _ in range(4)]
    code_bytes = layer.packed_codes.numel() * 4 + 4 * k_out
    plan = [
        ("rotate in", lambda t: harness.hadamard_rotation(t, ri.dim, ri.seed, transpose=True), x, 2 * 2 * rows * n),
        ("frame analysis", lambda t: harness.frame_transform(t, fi.k, fi.rho, fi.d, True), x, 2 * rows * (n + k_in)),
        ("packed matmul", lambda t: harness.packed_matmul(t, *mt, layer.bits, k_in, k_out), c,
         2 * rows * (k_in + k_out) + code_bytes),
        ("frame synthesis", lambda t: harness.frame_transform(t, fo.k, fo.rho, fo.d, False), z, 2 * rows * (k_out + m)),
        ("rotate out", lambda t: harness.hadamard_rotation(t, ro.dim, ro.seed), v, 2 * 2 * rows * m),
    ]
    if rows >= 64:  # what the FQPackedMatMul TensorRT plugin runs from 64 fp16 rows
        plan.insert(3, ("packed matmul, cuBLAS form", lambda t: harness.packed_matmul(t, *mt, layer.bits, k_in, k_out,
                                                                                     gemm=True), c,
                        2 * rows * (k_in + k_out) + code_bytes))
    out = []
    for name, fn, inputs, nbytes in plan:
        us, how = time_fn(fn, inputs)
        out.append({"step": name, "us": us, "bytes": nbytes, "roofline_us": 1e6 * nbytes / bandwidth,
                    "pct_of_roofline": 100 * (nbytes / bandwidth) / (us * 1e-6), "timing": how})
    d16 = harness.dequantize(*mt, layer.bits, k_in, k_out)
    us, _ = time_fn(lambda t: torch.matmul(t, d16.T), c)
    out.append({"step": "cuBLAS fp16 on decoded D_hat (K_out x K_in)", "us": us})
    us, _ = time_fn(lambda t: harness.dequantize(*mt, layer.bits, k_in, k_out), c)
    out.append({"step": "dequantize D_hat to fp16", "us": us})
    w = torch.randn(m, n, device="cuda", dtype=torch.float16) / n**0.5
    us, _ = time_fn(lambda t: torch.matmul(t, w.T), x)
    out.append({"step": "cuBLAS fp16 dense W (m x n), the baseline", "us": us})
    us, _ = time_fn(kl, x)
    out.append({"step": "three-launch layer (prologue, packed matmul, epilogue)", "us": us})
    if rows >= 197:
        gemm = harness.KernelLinear(layer, path="gemm")
        us, _ = time_fn(gemm, x)
        out.append({"step": "gemm layer (prologue, dequantize, cuBLAS, epilogue)", "us": us})
        for name, k_us in kernel_breakdown(gemm, x[0]):
            out.append({"step": f"  in the gemm layer: {name}", "us": k_us})
        dense = harness.KernelLinear(layer, path="dense")
        us, _ = time_fn(dense, x)
        out.append({"step": "dense layer (effective weight built, one cuBLASLt GEMM)", "us": us})
        for name, k_us in kernel_breakdown(dense, x[0]):
            out.append({"step": f"  in the dense layer: {name}", "us": k_us})
    if rows <= 16:
        fused = harness.KernelLinear(layer, fused=True)
        us, _ = time_fn(fused, x)
        out.append({"step": "fused layer (one launch)", "us": us})
    return out


def short_name(name: str) -> str:
    """A kernel's name without namespaces, template arguments and parameters."""
    cols = re.search(r"side_cols_kernel<\d+, (\d+)>", name)
    if cols:
        return "side_cols_kernel" + (f" (decoding {cols.group(1)}-bit codes)" if cols.group(1) != "0" else "")
    for key in ("prologue_kernel", "epilogue_kernel", "side_rows_kernel", "transpose_kernel", "dequantize", "memset",
                "Memset"):
        if key in name:
            return key.lower() if key != "dequantize" else "dequantize_words_kernel"
    return name.split("(")[0].split("<")[0][-60:]


def kernel_breakdown(fn, x, calls: int = 10) -> list[tuple[str, float]]:
    """Mean device microseconds per call of each kernel that fn(x) launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(x)
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            key = short_name(ev.name)
            totals[key] = totals.get(key, 0.0) + ev.device_time
    return sorted(((k, v / calls) for k, v in totals.items()), key=lambda kv: -kv[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--redundancy", type=float, default=1.1)
    parser.add_argument("--shapes", help="comma-separated INxOUT shapes (default 768x768,4096x4096,4096x11008)")
    parser.add_argument("--rows", help="comma-separated row counts (default 1,16,12608)")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    row_counts = [int(v) for v in args.rows.split(",")] if args.rows else ROWS
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernel_steps.py needs a CUDA GPU")
    bandwidth = copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}; copy bandwidth {bandwidth / 1e12:.2f} TB/s; bits {args.bits}, r {args.redundancy}")
    results = []
    for n, m in shapes:
        layer = harness.random_frame_layer(n, m, bits=args.bits, redundancy=args.redundancy, seed=n + m).cuda()
        for rows in row_counts:
            rows_out = steps(layer, rows, bandwidth)
            results.append({"in_features": n, "out_features": m, "M": rows, "frame_shape": list(layer.frame_shape),
                            "steps": rows_out})
            print(f"\n{n}x{m} M={rows} (K_out x K_in = {layer.frame_shape[0]}x{layer.frame_shape[1]})")
            for s in rows_out:
                roof = (f"  roofline {s['roofline_us']:8.1f} us ({s['pct_of_roofline']:5.1f}%)"
                        if "roofline_us" in s else "")
                print(f"  {s['step']:58s} {s['us']:9.1f} us{roof}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"device": props.name, "copy_bandwidth_Bps": bandwidth, "bits": args.bits,
                                           "redundancy": args.redundancy, "results": results}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
