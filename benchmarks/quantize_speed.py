"""Wall time of whole-model quantization (FrameQuant r=1.1, 2 bits).

    python benchmarks/quantize_speed.py --model minilm --device cpu --calib-samples 128
    python benchmarks/quantize_speed.py --model vit-b --random-weights --device cuda --calib-samples 128
    python benchmarks/quantize_speed.py --model smollm2-135m --device cuda --calib-samples 128 --window 512
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calib.sources import calibration_batches  # noqa: E402
from fq_export.config import QuantConfig  # noqa: E402
from fq_export.io import write_json  # noqa: E402
from fq_export.models import load_model  # noqa: E402
from fq_export.pipeline import quantize  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--json")
    args = p.parse_args()
    t0 = time.perf_counter()
    adapter = load_model(args.model, random_weights=args.random_weights, device=args.device)
    t1 = time.perf_counter()
    batches, where = calibration_batches(adapter, None, args.calib_samples, window=args.window)
    t2 = time.perf_counter()
    stats = quantize(adapter, QuantConfig(redundancy=1.1, bits=2), batches, progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t3 = time.perf_counter()
    gptq = sum(s.seconds for s in stats)
    result = {"model": args.model, "device": torch.cuda.get_device_name() if "cuda" in args.device else "cpu",
              "threads": torch.get_num_threads(), "calibration": f"{len(batches)} x {where}",
              "layers": len(stats), "load_seconds": t1 - t0, "data_seconds": t2 - t1,
              "quantize_seconds": t3 - t2, "per_layer_quantize_seconds_total": gptq,
              "forward_and_capture_seconds": (t3 - t2) - gptq}
    print(result, flush=True)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
