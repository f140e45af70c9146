"""Fine-tuning step time: the dense ``W_hat`` step against the five-step step, side by side.

One MLP block of the given width (two quantized linears, FrameQuant r 1.1 at 2 bits), calibration
batches of ``--tokens`` tokens, ``--steps`` Adam steps of :func:`fq_export.finetune.finetune_block`
each way, taking turns over ``--repeats`` rounds. Prints a table and writes JSON; the ratio is
five-step time over dense time (above 1: the dense step is faster).

    python benchmarks/finetune_speed.py --device cuda --json benchmarks/results/finetune_speed_h200.json
    python benchmarks/finetune_speed.py --device cpu --steps 5 --json benchmarks/results/finetune_speed_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fq_export import finetune  # noqa: E402
from fq_export.config import QuantConfig  # noqa: E402
from fq_export.io import write_json  # noqa: E402
from fq_export.layer import quantize_linear  # noqa: E402


def make_block(width: int, hidden: int, tokens: int, batches: int, device: str):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)).to(device)
    inputs = [((torch.randn(1, tokens, width, device=device),), {}) for _ in range(batches)]
    with torch.no_grad():
        targets = [block(*a) for a, _ in inputs]
    for i in (0, 2):
        lin = block[i]
        eye = torch.eye(lin.in_features, dtype=torch.float64, device=device)
        block[i], _ = quantize_linear(lin.weight, lin.bias, eye, QuantConfig(method="framequant", redundancy=1.1), f"b{i}")
    return block, inputs, targets


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=576, help="block width (SmolLM2-135M: 576)")
    parser.add_argument("--hidden", type=int, help="MLP width (default: 8/3 of --width, rounded to 64)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    hidden = args.hidden or max(64, round(args.width * 8 / 3 / 64) * 64)
    block, inputs, targets = make_block(args.width, hidden, args.tokens, args.batches, args.device)
    times = {"dense": [], "five-step": []}
    errors = {}
    for _ in range(args.repeats):
        for name, dense in (("dense", True), ("five-step", False)):
            trial = copy.deepcopy(block)
            sync(args.device)
            start = time.perf_counter()
            before, after = finetune.finetune_block(trial, inputs, targets, steps=args.steps, dense=dense)
            sync(args.device)
            times[name].append(time.perf_counter() - start)
            errors[name] = (before, after)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "width": args.width, "hidden": hidden, "tokens": args.tokens, "steps": args.steps,
              "seconds": times, "median_seconds": median, "ms_per_step": {k: 1e3 * v / args.steps for k, v in median.items()},
              "five_step_over_dense": median["five-step"] / median["dense"], "block_error": errors}
    print(f"{'step':<10} {'ms/step':>9} {'error before -> after':>24}")
    for name in times:
        print(f"{name:<10} {result['ms_per_step'][name]:9.1f} {errors[name][0]:11.5f} -> {errors[name][1]:.5f}")
    print(f"five-step / dense: {result['five_step_over_dense']:.2f}x ({result['device']}, width {args.width}, "
          f"{args.tokens} tokens x 8 per step)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
