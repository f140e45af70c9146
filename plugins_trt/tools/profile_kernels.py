"""One call of a layer path on a random FrameQuant layer, for Nsight Compute.

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats \\
        python plugins_trt/tools/profile_kernels.py --shape 4096x4096 --rows 12608 --path gemm
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from plugins_trt import harness  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x4096", help="INxOUT")
    parser.add_argument("--rows", default="1,12608", help="comma-separated row counts")
    parser.add_argument("--path", help="one layer path (default: fused and three-launch where they apply)")
    args = parser.parse_args()
    n, m = (int(v) for v in args.shape.split("x"))
    layer = harness.random_frame_layer(n, m, seed=n + m).cuda()
    for rows in (int(v) for v in args.rows.split(",")):
        x = torch.randn(rows, n, device="cuda", dtype=torch.float16)
        if args.path:
            harness.KernelLinear(layer, path=args.path)(x)
        else:
            for fused in ([True, False] if rows <= 16 else [False]):
                harness.KernelLinear(layer, fused=fused)(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
