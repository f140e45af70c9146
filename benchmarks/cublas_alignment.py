"""cuBLAS fp16 time at the frame sizes of a 4096-wide layer (K = 4500) against aligned sizes: does an
unaligned K keep cuBLAS off its fast path? Prints a table and writes JSON (GPU only).

    python benchmarks/cublas_alignment.py --json benchmarks/results/h100/cublas_alignment.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

SHAPES = [(4096, 4096), (4500, 4500), (4504, 4504), (4544, 4544), (4500, 12104), (4544, 12160)]


def median_us(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=197 * 64)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/cublas_alignment.py needs a CUDA GPU")
    rows = []
    for k_in, k_out in SHAPES:
        x = torch.randn(args.rows, k_in, device="cuda", dtype=torch.float16)
        w = torch.randn(k_out, k_in, device="cuda", dtype=torch.float16)
        us = median_us(lambda: torch.matmul(x, w.T))
        rows.append({"M": args.rows, "K_in": k_in, "K_out": k_out, "us": us,
                     "tflops": 2 * args.rows * k_in * k_out / us / 1e6})
        print(f"M={args.rows} K_in={k_in} K_out={k_out}: {us:8.1f} us  {rows[-1]['tflops']:6.1f} TFLOP/s", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
