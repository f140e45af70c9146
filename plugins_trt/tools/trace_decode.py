"""Where the time of the decode layer kernels goes, from %globaltimer stamps (a profiling build).

Builds the extension with -DFQ_TRACE (FQ_TRACE=1), runs a decode layer kernel (path "decode",
"split" for the spread one, "gemv" for the one-row kernel) on random 2-bit layers and prints the
median time of each stamp after the kernel's start (decode and gemv: block 0 for the prologue and
matmul, the last block for the epilogue; split: block 0 throughout).

    python plugins_trt/tools/trace_decode.py [--shapes 4096x4096,768x768] [--rows 1] [--path split]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ["FQ_TRACE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from plugins_trt import harness  # noqa: E402

STAMPS = {0: "start (block 0)", 1: "codes cp.async started", 2: "DFT table in shared memory", 3: "x loaded",
          4: "rotation R_in^T", 5: "frame analysis", 6: "codes arrived + barrier", 7: "split-K GEMV done",
          8: "z written", 32: "last block starts epilogue", 33: "DFT^T table loaded", 34: "frame synthesis",
          35: "rotation R_out", 36: "y stored"}

SPLIT_STAMPS = {0: "start (block 0)", 1: "x, gathers, DFT staged", 2: "band found, codes started", 3: "fold (H_n_hi)",
                4: "rotation chunks done", 5: "frame analysis", 6: "codes arrived", 7: "partial z written",
                8: "grid barrier 1", 9: "z summed", 10: "W written", 11: "grid barrier 2", 12: "fold of W",
                13: "y stored"}

GEMV_STAMPS = {0: "start (block 0)", 1: "tables and codes started", 2: "x loaded, tables arrived",
               3: "rotation R_in^T", 4: "frame analysis, codes arrived", 5: "GEMV done", 6: "z written",
               32: "last block starts epilogue", 33: "z, tables, bias loaded", 34: "frame synthesis",
               35: "rotation R_out", 36: "y stored"}
STAMP_SETS = {"decode": STAMPS, "split": SPLIT_STAMPS, "gemv": GEMV_STAMPS}


def trace(shape: tuple[int, int], rows: int, path: str = "decode", reps: int = 30) -> dict[int, float]:
    ext = harness.load_extension()
    layer = harness.random_frame_layer(*shape, seed=shape[0] + shape[1]).cuda()
    kl = harness.KernelLinear(layer, path=path)
    stamps = STAMP_SETS[path]
    x = torch.randn(rows, shape[0], device="cuda", dtype=torch.float16)
    for _ in range(5):
        kl(x)
    torch.cuda.synchronize()
    samples: dict[int, list[float]] = {k: [] for k in stamps}
    for _ in range(reps):
        kl(x)
        torch.cuda.synchronize()
        t = ext.read_trace(path).tolist()
        for k in stamps:
            samples[k].append((t[k] - t[0]) / 1000)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x4096,768x768,11008x4096")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--path", choices=tuple(STAMP_SETS), default="decode")
    args = parser.parse_args()
    for s in args.shapes.split(","):
        shape = tuple(int(v) for v in s.split("x"))
        med = trace(shape, args.rows, args.path)
        print(f"{s} M={args.rows} path={args.path} (microseconds after the kernel starts; medians)")
        for k, name in STAMP_SETS[args.path].items():
            print(f"  {name:32s} {med[k]:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
