"""Per-layer timings of the plugins_trt kernels against cuBLAS fp16 (run on a GPU).

For each shape (in_features x out_features) and row count M, the layer's kernel paths:
``fused`` (one launch, M <= 16: at M = 1 the gemv kernel where the layer takes it (no odd rotation
factor), else the spread decode kernel on layers wider than 4096, else the decode kernel; the
cooperative kernel from 2 rows, whose time is also shown on its own as ``coop``; at M <= 8 also the
``split`` (spread decode) and ``decode`` (one-block epilogue) kernels on their own, at M = 1 the
``gemv`` kernel), ``kernels`` (three launches: prologue, packed
matmul, epilogue), ``gemm`` (prologue, D_hat decoded to fp16, cuBLAS, epilogue; M >= 197),
``dense`` (the effective weight P_out D_hat P_in^T built from the codes in a workspace, then one
cuBLASLt GEMM with the bias in its epilogue; M >= 197; ``tuned``: the same with the GEMM that
timing picks among cuBLASLt's heuristic list, as TensorRT picks among the plugin's tactics), and
cuBLAS fp16 on the dense weight (``torch.matmul``). At M = 1 also the bytes the fused layer must
move and the fraction of the measured device-to-device copy bandwidth that this amounts to
(percent of the memory roofline).

Timing: CUDA graphs of calls replayed, median of the replays (falls back to events around
eager calls if a path cannot be captured); inputs rotate among 4 buffers. From 197 rows cuBLAS is
timed before and after the dense paths (which come first, before the long three-launch and gemm
paths) and their ratio is against the mean of the two. "warm": one weight,
reused by every call (a 2-bit 4096x4096 layer's 5 MB of codes then stay in the 50 MB L2);
"cold" (M <= 16): each call of a graph uses another copy of the weights, with copies enough to
hold at least twice the L2 (what a model with many layers sees).

    python benchmarks/kernels.py --json benchmarks/results/kernels_h100.json
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fq_export import packing  # noqa: E402
from plugins_trt import harness  # noqa: E402

VIT_SHAPES = [(768, 768), (768, 3072), (3072, 768)]
LLAMA_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
ROWS = [1, 16, 197 * 8, 197 * 64]
CALLS_PER_GRAPH = 20


def time_fn(fn, inputs, reps=30, calls=CALLS_PER_GRAPH, weights=None) -> tuple[float, str]:
    """Median microseconds per call of fn(x) (or fn(x, w) over rotating ``weights``)."""
    def call(i):
        x = inputs[i % len(inputs)]
        return fn(x) if weights is None else fn(x, weights[i % len(weights)])

    for i in range(max(len(inputs), len(weights or []))):
        call(i)
    torch.cuda.synchronize()
    return harness.gpu_time_us(call, calls, reps, warm=len(inputs))


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n / statistics.median(times)


def fused_bytes(layer) -> int:
    """Bytes the fused layer must read/write at M = 1: codes, scale/zero, bias, tables, x and y."""
    k_out, k_in = layer.frame_shape
    total = layer.packed_codes.numel() * 4 + 4 * k_out + 4 * layer.out_features
    total += 2 * (layer.in_features + layer.out_features)
    for recipe in (layer.in_recipe, layer.out_recipe):
        f = recipe.frame
        kp = -(-f.k // 8) * 16
        total += 8 * f.num_vectors // 2 + 8 * f.d + 2 * kp * kp + 4 * recipe.dim  # gathers, DFT, signs
    return total


def copies_for(nbytes: int, l2_bytes: int, cap: int = 256) -> int:
    """Weight copies whose total is at least twice the L2 (at least CALLS_PER_GRAPH, at most cap)."""
    return max(CALLS_PER_GRAPH, min(cap, -(-2 * l2_bytes // max(nbytes, 1))))


def bench_shape(in_f, out_f, rows_list, bandwidth, bits, redundancy, l2_bytes):
    layer = harness.random_frame_layer(in_f, out_f, bits=bits, redundancy=redundancy, seed=in_f * 7 + out_f).cuda()
    kls = {path: harness.KernelLinear(layer, path=path)
           for path in ("fused", "kernels", "gemm", "dense", "cooperative", "split", "decode", "gemv")}
    # Dense-at-load mode: the weight built once (outside the timing), then one cuBLASLt GEMM per call.
    dense_weights = harness.KernelLinear(layer, weights="dense")
    weight = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16) / in_f**0.5
    k_out, k_in = layer.frame_shape
    cold = None
    results = []
    for rows in rows_list:
        inputs = [torch.randn(rows, in_f, device="cuda", dtype=torch.float16) for _ in range(4)]
        row = {"in_features": in_f, "out_features": out_f, "M": rows, "K_in": k_in, "K_out": k_out, "bits": bits}
        cublas = lambda x: torch.matmul(x, weight.T)  # noqa: E731
        row["cublas_fp16_us"], _ = time_fn(cublas, inputs)
        dense_weights.gemm_choice = 0
        row["dense_weights_us"], row["dense_weights_timing"] = time_fn(dense_weights, inputs)
        if rows >= 197:
            # The dense paths between two cuBLAS timings, before the long three-launch and gemm
            # paths heat the GPU: their ratio is against the mean of the two (both kept).
            row["dense_us"], row["dense_timing"] = time_fn(kls["dense"], inputs)
            # The GEMM as TensorRT would pick it among the plugin's tactics: every entry of
            # cuBLASLt's heuristic list timed once, the fastest timed again like the others.
            tuned = harness.KernelLinear(layer, path="dense")
            row["dense_gemm_choice_us"] = tuned.choose_dense_gemm(inputs[0])
            row["dense_gemm_choice"] = tuned.gemm_choice
            row["dense_tuned_us"], _ = time_fn(tuned, inputs)
            dense_weights.gemm_choice = tuned.gemm_choice
            row["dense_weights_tuned_us"], _ = time_fn(dense_weights, inputs)
            row["cublas_fp16_before_us"] = row["cublas_fp16_us"]
            row["cublas_fp16_after_us"], _ = time_fn(cublas, inputs)
            row["cublas_fp16_us"] = (row["cublas_fp16_before_us"] + row["cublas_fp16_after_us"]) / 2
        row["kernels_us"], row["kernels_timing"] = time_fn(kls["kernels"], inputs)
        if rows <= 16:
            row["fused_us"], row["fused_timing"] = time_fn(kls["fused"], inputs)
            row["coop_us"], _ = time_fn(kls["cooperative"], inputs)
            if rows <= 8:
                for name in ("split", "decode") + (("gemv",) if rows == 1 else ()):
                    try:
                        row[f"{name}_us"], _ = time_fn(kls[name], inputs)
                    except RuntimeError as err:  # a layer the kernel does not take
                        row[f"{name}_error"] = str(err)
            if cold is None:  # weight copies for the cold-L2 timings
                n_dense = copies_for(weight.numel() * 2, l2_bytes)
                n_codes = copies_for(layer.packed_codes.numel() * 4, l2_bytes)
                cold = ([weight.clone() for _ in range(n_dense)],
                        [harness.KernelLinear(copy.deepcopy(layer), path="fused") for _ in range(n_codes)])
            dense_w, fused_kls = cold
            row["cold_copies"] = {"cublas": len(dense_w), "fused": len(fused_kls)}
            row["cublas_cold_us"], _ = time_fn(lambda x, w: torch.matmul(x, w.T), inputs, calls=len(dense_w),
                                               weights=dense_w)
            row["fused_cold_us"], _ = time_fn(lambda x, kl: kl(x), inputs, calls=len(fused_kls), weights=fused_kls)
        if rows >= 197:
            row["gemm_us"], row["gemm_timing"] = time_fn(kls["gemm"], inputs)
        best = min([row.get(key, float("inf"))
                    for key in ("fused_us", "coop_us", "split_us", "decode_us", "gemv_us", "gemm_us", "dense_us",
                                "dense_tuned_us")]
                   + [row["kernels_us"]])
        row["best_us"] = best
        row["dense_weights_vs_cublas"] = min(row["dense_weights_us"], row.get("dense_weights_tuned_us", float("inf"))) \
            / row["cublas_fp16_us"]
        row["speedup_vs_cublas"] = row["cublas_fp16_us"] / best
        if "fused_cold_us" in row:
            row["cold_speedup_vs_cublas"] = row["cublas_cold_us"] / row["fused_cold_us"]
        if rows == 1:
            nbytes = fused_bytes(layer)
            row["fused_bytes"] = nbytes
            row["dense_fp16_bytes"] = 2 * in_f * out_f
            row["fused_roofline_pct"] = 100 * (nbytes / (row["fused_cold_us"] * 1e-6)) / bandwidth
            row["cublas_roofline_pct"] = 100 * (2 * in_f * out_f / (row["cublas_cold_us"] * 1e-6)) / bandwidth
        results.append(row)
        print(_format(row), flush=True)
    return results


def _format(r) -> str:
    f = lambda key: f"{r[key]:8.1f}" if key in r else "       -"  # noqa: E731
    roof = f"{r['fused_roofline_pct']:5.1f}%" if "fused_roofline_pct" in r else "     -"
    cold = f"x{r['cold_speedup_vs_cublas']:5.2f}" if "cold_speedup_vs_cublas" in r else "     -"
    return (f"{r['in_features']:>5}x{r['out_features']:<5} M={r['M']:<6} fused {f('fused_us')} split {f('split_us')}"
            f" decode {f('decode_us')} gemv {f('gemv_us')} coop {f('coop_us')}"
            f" kernels {f('kernels_us')}"
            f" gemm {f('gemm_us')} dense {f('dense_us')} tuned {f('dense_tuned_us')} cuBLAS {f('cublas_fp16_us')} best x{r['speedup_vs_cublas']:5.2f}"
            f" | dense-weights {f('dense_weights_us')} tuned {f('dense_weights_tuned_us')} x{r['dense_weights_vs_cublas']:5.3f} of cuBLAS | cold: fused "
            f"{f('fused_cold_us')} cuBLAS {f('cublas_cold_us')} {cold} roofline {roof}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results (JSON)")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--redundancy", type=float, default=1.1)
    parser.add_argument("--quick", action="store_true", help="only 4096x4096 at M = 1 and 197 x 64")
    parser.add_argument("--shapes", help="comma-separated INxOUT shapes instead of the ViT-B and Llama-7B ones")
    parser.add_argument("--rows", help="comma-separated row counts instead of 1,16,1576,12608")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True
    bandwidth = copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 50 << 20)
    print(f"device {props.name}, {props.multi_processor_count} SMs, L2 {l2_bytes / 2**20:.0f} MiB; "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s "
          f"(read + write); bits={args.bits} redundancy={args.redundancy} (both sides)", flush=True)
    shapes = [(4096, 4096)] if args.quick else VIT_SHAPES + LLAMA_SHAPES
    rows_list = [1, 197 * 64] if args.quick else ROWS
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.rows:
        rows_list = [int(v) for v in args.rows.split(",")]
    results = []
    for in_f, out_f in shapes:
        results += bench_shape(in_f, out_f, rows_list, bandwidth, args.bits, args.redundancy, l2_bytes)
    out = {"device": props.name, "sms": props.multi_processor_count, "l2_bytes": l2_bytes,
           "copy_bandwidth_Bps": bandwidth,
           "torch": torch.__version__, "bits": args.bits, "redundancy": args.redundancy,
           "packing_layout": packing.LAYOUT_VERSION, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
