"""onnxruntime latency of the exported forms against the fp32 ONNX of the same model, side by side.

Exports one quantized checkpoint (default: MiniLM, FrameQuant r = 1.1, 2 bits, quantized here if
no checkpoint is given) as the fp32 ONNX and in the asked forms, opens each in onnxruntime on one
provider, and times batches of real held-out sentences padded to a fixed length. The sessions are
timed in interleaved rounds (A, B, A, B, ...) so that machine noise hits every form alike; the table
reports the median per form and its ratio to fp32.

    python benchmarks/onnx_latency.py --batch 32 --seq 128 --json benchmarks/results/onnx_latency_minilm.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def real_batch(adapter, batch: int, seq: int) -> dict[str, np.ndarray]:
    """``batch`` held-out sentences (the eval split of the offline corpus), padded/truncated to ``seq``."""
    from calib import text as text_data

    sentences = text_data.stdlib_sentences("eval")[:batch]
    enc = adapter.tokenizer(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a MiniLM FrameQuant checkpoint (default: quantize one, r 1.1, 2 bits)")
    parser.add_argument("--forms", default="standard", help="comma-separated: standard, plugin")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--json", default="benchmarks/results/onnx_latency_minilm.json")
    args = parser.parse_args()

    import onnxruntime as ort

    from converters import validate
    from converters.export import export_artifacts
    from fq_export.cli import load_quantized

    with tempfile.TemporaryDirectory(prefix="fq-latency-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = str(tmp / "minilm.safetensors")
            subprocess.run(["fq-export", "quantize", "--model", "minilm", "--r", "1.1", "--bits", "2",
                            "--no-progress", "--out", checkpoint], check=True)
        adapter, meta = load_quantized(checkpoint)
        feeds = real_batch(adapter, args.batch, args.seq)
        forms = [f for f in args.forms.split(",") if f]
        paths = {f: tmp / f"{f}.onnx" for f in forms}
        example = {k: adapter.tokenizer(["example"], return_tensors="pt")[k] for k in ("input_ids", "attention_mask")}
        report = export_artifacts(adapter, forms, paths, example, [], fp32_path=tmp / "fp32.onnx",
                                  validate_artifacts=False)
        paths = {"fp32": tmp / "fp32.onnx", **paths}
        sizes = {"fp32": report["fp32_onnx"]["bytes"], **{f: report["artifacts"][f]["bytes"] for f in forms}}
        sessions = {}
        for name, path in paths.items():
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if args.threads:
                options.intra_op_num_threads = args.threads
            if name == "plugin":
                from converters.ort_ops import register

                options.register_custom_ops_library(register())
            start = time.perf_counter()
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            print(f"{name}: session ready in {time.perf_counter() - start:.2f} s", flush=True)
        outputs = {}
        for name, sess in sessions.items():  # warm-up, and the outputs for a sanity check
            input_names = {i.name for i in sess.get_inputs()}
            outputs[name] = sess.run(None, {k: v for k, v in feeds.items() if k in input_names})[0]
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                input_names = {i.name for i in sess.get_inputs()}
                start = time.perf_counter()
                sess.run(None, {k: v for k, v in feeds.items() if k in input_names})
                times[name].append((time.perf_counter() - start) * 1000)

    fp32_ms = statistics.median(times["fp32"])
    rows = []
    for name in sessions:
        ms = statistics.median(times[name])
        ref, out = outputs["fp32"].astype(np.float64).ravel(), outputs[name].astype(np.float64).ravel()
        rows.append({"form": name, "bytes": sizes[name], "median_ms": ms, "min_ms": min(times[name]),
                     "max_ms": max(times[name]), "ratio_to_fp32": ms / fp32_ms,
                     "max_abs_diff_vs_fp32_onnx": float(np.abs(ref - out).max())})
    print(f"\nonnxruntime CPUExecutionProvider, MiniLM batch {args.batch} x {args.seq} tokens, "
          f"{args.rounds} interleaved rounds ({platform.processor() or platform.machine()}, "
          f"threads {args.threads or 'default'})")
    print(f"{'form':10s} {'bytes':>12s} {'median ms':>10s} {'min ms':>9s} {'x fp32':>7s}")
    for r in rows:
        print(f"{r['form']:10s} {r['bytes']:12d} {r['median_ms']:10.1f} {r['min_ms']:9.1f} {r['ratio_to_fp32']:7.2f}")
    result = {"model": meta.get("model"), "config": meta.get("config"), "batch": args.batch, "seq": args.seq,
              "rounds": args.rounds, "provider": "CPUExecutionProvider", "onnxruntime": ort.__version__,
              "threads": args.threads or "default", "cpu_count": __import__("os").cpu_count(), "rows": rows,
              "samples_ms": times,
              "note": "max_abs_diff_vs_fp32_onnx compares the quantized artifact with the fp32 export of the "
                      "same quantized model (W_hat dense), so it measures export error, not quantization error"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
