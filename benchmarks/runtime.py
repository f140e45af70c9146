"""What each export costs to run in onnxruntime: file size, memory and latency against the fp32 ONNX.

For each model (default: the packaged MiniLM, FrameQuant r = 1.1, 2 bits), side by side in one run:

* the fp32 ONNX of the full-precision model (``torch.onnx.export``);
* onnxruntime's own weight-only quantizer on that fp32 ONNX (``MatMulNBitsQuantizer``, RTN, block 32,
  asymmetric) at 2 and 4 bits, at its default ``accuracy_level`` and at level 4 (int8 activations),
  the peer a user would try first;
* every fq-export form asked for (``standard``: dense at load; ``packed``: ``MatMulNBits`` in frame
  space), each passing fq-export's validation against PyTorch first.

Figures per artifact: file bytes; session memory (the process's RSS growth from before
``InferenceSession(...)`` to after one run, in a fresh process per artifact); the peak RSS growth
while the session is created (the kernel's high-water mark, reset just before); the session memory
again with glibc told to serve allocations of 1 MiB and more by mmap (``MALLOC_MMAP_THRESHOLD_``),
so that memory freed after constant folding goes back to the system; latency p50 per
shape, timed in interleaved rounds (A, B, C, A, B, C, ...) in one process so machine noise hits every
artifact alike, with its ratio to fp32.

    python benchmarks/runtime.py                      # MiniLM, shapes 8x128 and 1x16
    python benchmarks/runtime.py --models minilm,smollm2-135m,vit-b --json out.json --png out.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# This folder holds a kernels.py that would shadow the `kernels` package transformers imports.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

PEERS = ((2, None), (2, 4), (4, None), (4, 4))  # (bits, accuracy_level); None is the quantizer's default


# ---- memory, measured in a child process per artifact ---------------------------------------------

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(path: str, feeds_path: str, threads: int) -> dict:
    """RSS growth (MB) across session creation and one run; peak RSS growth during creation."""
    import onnxruntime as ort  # imported before the baseline so its own pages are not counted

    feeds = dict(np.load(feeds_path))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    create_s = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    created = _status_kb("VmRSS")
    session.run(None, feeds)
    after = _status_kb("VmRSS")
    return {"session_mb": (after - before) / 1024, "peak_create_mb": (peak - before) / 1024,
            "after_create_mb": (created - before) / 1024, "create_s": create_s}


# ---- artifacts ----------------------------------------------------------------------------------

def model_inputs(adapter, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Real held-out inputs of one shape: sentences / token windows padded or cut to ``seq``; images."""
    from calib import text as text_data

    if adapter.family == "encoder":
        sentences = (text_data.stdlib_sentences("eval") * 2)[:batch]
        enc = adapter.tokenizer(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
    if adapter.family == "causal_lm":
        ids = adapter.tokenizer(text_data.stdlib_corpus("eval")[:200_000], return_tensors="np")["input_ids"][0]
        return {"input_ids": ids[: batch * seq].reshape(batch, seq).astype(np.int64)}
    from calib.sources import calibration_batches

    images = calibration_batches(adapter, None, batch, 1, split="eval")
    return {"pixel_values": np.concatenate([b["pixel_values"].numpy() for b in images])[:batch]}


def peer_export(fp32: Path, out: Path, bits: int, accuracy_level: int | None) -> Path:
    """onnxruntime's own weight-only quantizer (RTN, block 32, asymmetric) on the fp32 ONNX."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=accuracy_level, bits=bits)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=bits, block_size=32, is_symmetric=False,
                                     accuracy_level=accuracy_level, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


def build_artifacts(model: str, tmp: Path, forms: list[str], checkpoint: str | None, feeds: dict) -> tuple[list[dict], dict]:
    """Quantize (or load), export fp32 + every form (validated) + the peers; returns rows and info."""
    import torch

    from converters.export import export_artifacts
    from fq_export.cli.common import load_quantized
    from fq_export.cli.export import validation_batches

    if checkpoint is None:
        checkpoint = str(tmp / f"{model}.safetensors")
        extra = ["--random-weights"] if model.startswith("vit") else []
        subprocess.run(["fq-export", "quantize", "--model", model, "--r", "1.1", "--bits", "2", "--no-progress",
                        "--calib-samples", "16" if model.startswith("vit") else "128", *extra, "--out", checkpoint],
                       check=True)
    adapter, meta = load_quantized(checkpoint, "cpu")
    batches, _ = validation_batches(adapter, 8)
    example = {k: torch.as_tensor(v[:2]) for k, v in feeds.items()}
    fp32 = tmp / f"{model}.fp32.onnx"
    # The fp32 ONNX must be the full-precision model: export it from a fresh, unquantized copy.
    from converters.torch_export import export_onnx
    from fq_export.models import load_model

    source = meta["model"]
    full = load_model(source["model"], weights=source.get("weights"), random_weights=bool(source.get("random_weights")),
                      device="cpu")
    export_onnx(full, example, fp32)
    rows = [{"name": "fp32 ONNX", "path": str(fp32), "kind": "fp32"}]
    for bits, level in PEERS:
        name = f"onnxruntime RTN {bits}-bit" + ("" if level is None else f", level {level}")
        path = peer_export(fp32, tmp / f"{model}.ort{bits}.{level}.onnx", bits, level)
        rows.append({"name": name, "path": str(path), "kind": "peer"})
    by_embeddings: dict[str, list[str]] = {}
    for spec in forms:
        form, _, embeddings = spec.partition(":")
        by_embeddings.setdefault(embeddings or "fp32", []).append(form)
    for embeddings, group in by_embeddings.items():
        if embeddings != "fp32":  # the tables are quantized in place: a fresh copy per mode
            adapter, _ = load_quantized(checkpoint, "cpu")
        paths = {f: tmp / f"{model}.{f}.{embeddings}.onnx" for f in group}
        report = export_artifacts(adapter, group, paths, example, batches, embeddings=embeddings)
        for form in group:
            entry = report["artifacts"][form]
            suffix = "" if embeddings == "fp32" else f", {embeddings} embeddings"
            rows.append({"name": f"fq-export {form}{suffix}", "path": str(paths[form]), "kind": form,
                         "validation": {k: entry.get(k) for k in ("max_abs_err", "cosine", "task_agreement", "passed")},
                         "effective_bits": entry["size"]["effective_bits"],
                         "embeddings": report.get("embeddings", {"mode": "fp32"})})
    return rows, {"checkpoint": checkpoint, "model": model}


def time_sessions(rows: list[dict], shapes: dict[str, dict], rounds: int, threads: int) -> None:
    import onnxruntime as ort

    sessions = []
    for row in rows:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        sessions.append(ort.InferenceSession(row["path"], options, providers=["CPUExecutionProvider"]))
    for label, feeds in shapes.items():
        times = [[] for _ in rows]
        for session in sessions:  # warm-up
            session.run(None, feeds)
        for _ in range(rounds):
            for i, session in enumerate(sessions):
                start = time.perf_counter()
                session.run(None, feeds)
                times[i].append(time.perf_counter() - start)
        for row, t in zip(rows, times):
            row.setdefault("latency_ms", {})[label] = 1e3 * statistics.median(t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm", help="comma-separated: minilm, smollm2-135m, vit-b")
    parser.add_argument("--checkpoint", action="append", default=[], help="MODEL=CKPT: use this checkpoint")
    parser.add_argument("--forms", default="standard,packed,standard:int4,packed:int4",
                        help="fq-export forms, each optionally FORM:EMBEDDINGS (fp16, int8, int4)")
    parser.add_argument("--shapes", default="8x128,1x16", help="batch x sequence (images: batch only)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--json", default="benchmarks/results/runtime.json")
    parser.add_argument("--png", default="benchmarks/results/runtime.png")
    parser.add_argument("--measure-memory", nargs=2, metavar=("ONNX", "FEEDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

    if args.measure_memory:
        print(json.dumps(measure_memory(*args.measure_memory, args.threads)))
        return 0

    from fq_export.models import load_model

    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    forms = [f for f in args.forms.split(",") if f]
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
               "shapes": args.shapes, "rounds": args.rounds, "models": {}}
    with tempfile.TemporaryDirectory(prefix="fq-runtime-") as tmp:
        tmp = Path(tmp)
        for model in args.models.split(","):
            probe = load_model(model, random_weights=model.startswith("vit"), device="cpu")
            shapes = {}
            for spec in args.shapes.split(","):
                batch, _, seq = spec.partition("x")
                shapes[spec] = model_inputs(probe, int(batch), int(seq or 1))
            del probe
            first = next(iter(shapes.values()))
            rows, info = build_artifacts(model, tmp, forms, checkpoints.get(model), first)
            feeds_path = tmp / f"{model}.feeds.npz"
            np.savez(feeds_path, **first)
            for row in rows:
                row["bytes"] = Path(row["path"]).stat().st_size
                for key, env in (("memory", {}), ("memory_mmap_1mib", {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})):
                    child = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--measure-memory",
                                            row["path"], str(feeds_path)], check=True, capture_output=True, text=True,
                                           env={**os.environ, **env})
                    row[key] = json.loads(child.stdout.strip().splitlines()[-1])
            time_sessions(rows, shapes, args.rounds, args.threads)
            base = rows[0]
            for row in rows:
                row["bytes_vs_fp32"] = row["bytes"] / base["bytes"]
                row["session_memory_vs_fp32"] = row["memory"]["session_mb"] / base["memory"]["session_mb"]
                row["session_memory_mmap_1mib_vs_fp32"] = (row["memory_mmap_1mib"]["session_mb"]
                                                           / base["memory_mmap_1mib"]["session_mb"])
                row["latency_vs_fp32"] = {s: row["latency_ms"][s] / base["latency_ms"][s] for s in shapes}
                row.pop("path")
            results["models"][model] = {"rows": rows, **info}
            print_table(model, rows, list(shapes))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")
    if args.png:
        plot(results, args.png)
        print(f"wrote {args.png}")
    return 0


def print_table(model: str, rows: list[dict], shapes: list[str]) -> None:
    head = ["artifact", "MB", "x fp32", "session MB", "x fp32", "peak at creation MB", "session MB, mmap >= 1 MiB",
            "x fp32"]
    for s in shapes:
        head += [f"p50 {s} ms", "x fp32"]
    print(f"\n{model}\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        cells = [row["name"], f"{row['bytes'] / 1e6:.1f}", f"{row['bytes_vs_fp32']:.2f}",
                 f"{row['memory']['session_mb']:.0f}", f"{row['session_memory_vs_fp32']:.2f}",
                 f"{row['memory']['peak_create_mb']:.0f}", f"{row['memory_mmap_1mib']['session_mb']:.0f}",
                 f"{row['session_memory_mmap_1mib_vs_fp32']:.2f}"]
        for s in shapes:
            cells += [f"{row['latency_ms'][s]:.1f}", f"{row['latency_vs_fp32'][s]:.2f}"]
        print("| " + " | ".join(cells) + " |")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 3.2 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        rows = results["models"][model]["rows"]
        names = [row["name"].replace("onnxruntime ", "ort ").replace("fq-export ", "fq ") for row in rows]
        shapes = list(rows[0]["latency_vs_fp32"])
        panels = [("file size / fp32", [row["bytes_vs_fp32"] for row in rows]),
                  ("session memory / fp32", [row["session_memory_vs_fp32"] for row in rows])]
        for c, (title, values) in enumerate(panels):
            ax = axes[r][c]
            ax.barh(names, values, color=["grey" if row["kind"] == "fp32" else "tab:blue" if row["kind"] == "peer"
                                          else "tab:orange" for row in rows])
            ax.axvline(1.0, color="black", lw=0.8)
            ax.set_title(f"{model}: {title}")
            ax.invert_yaxis()
        ax = axes[r][2]
        y = np.arange(len(rows))
        for i, s in enumerate(shapes):
            ax.barh(y + 0.4 * i, [row["latency_vs_fp32"][s] for row in rows], height=0.4, label=s)
        ax.set_yticks(y + 0.2, names)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_title(f"{model}: latency p50 / fp32")
        ax.invert_yaxis()
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
