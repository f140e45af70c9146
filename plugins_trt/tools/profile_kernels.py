"""One call of each kernel path on a random 4096x4096 FrameQuant layer, for Nsight Compute.

    ncu --section SpeedOfLight --section WarpStateStats python plugins_trt/tools/profile_kernels.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from plugins_trt import harness  # noqa: E402


def main():
    layer = harness.random_frame_layer(4096, 4096).cuda()
    for rows in (1, 12608):
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.float16)
        for fused in ([True, False] if rows <= 16 else [False]):
            harness.KernelLinear(layer, fused=fused)(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
