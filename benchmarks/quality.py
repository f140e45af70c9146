"""Paper-style quality table: quality against honest effective bits, for MiniLM and SmolLM2-135M.

    python benchmarks/quality.py --models minilm,smollm2-135m --out-dir benchmarks/results

MiniLM: embedding cosine to full precision and top-10 neighbour agreement on held-out real text
(standard-library docstrings, evaluation part). SmolLM2: perplexity on held-out real text
(same source), non-overlapping windows. Writes ``quality.md``, ``quality.json``, ``quality.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calib import text as text_data  # noqa: E402
from calib.metrics import cosine_rows, topk_neighbour_agreement  # noqa: E402
from calib.sources import calibration_batches  # noqa: E402
from fq_export.accounting import model_effective_bits  # noqa: E402
from fq_export.config import QuantConfig  # noqa: E402
from fq_export.evaluate import embed, perplexity  # noqa: E402
from fq_export.io import markdown_table, write_json, write_text  # noqa: E402
from fq_export.models import load_model  # noqa: E402
from fq_export.pipeline import quantize  # noqa: E402


def configs(bits_list=(2, 3), redundancies=(1.0, 1.05, 1.1, 1.2)) -> list[QuantConfig]:
    """Every method at 2 bits; at other widths a reference subset."""
    out = []
    for bits in bits_list:
        if bits != 2:
            out += [QuantConfig(method=m, bits=bits) for m in ("rtn", "gptq", "quip-clip")]
            out += [QuantConfig(method="framequant", bits=bits, redundancy=r) for r in (1.0, 1.1)]
            continue
        out += [QuantConfig(method=m, bits=bits) for m in ("rtn", "gptq", "quip", "quip-clip")]
        for r in redundancies:
            out.append(QuantConfig(method="framequant", bits=bits, redundancy=r, redundancy_side="both"))
            if r > 1.0:
                out.append(QuantConfig(method="framequant", bits=bits, redundancy=r, redundancy_side="input"))
    return out


def evaluate(adapter, reference_emb, eval_data, args) -> dict:
    if adapter.family == "encoder":
        emb = embed(adapter, eval_data)
        return {"embedding_cosine": float(cosine_rows(emb, reference_emb).mean()),
                "retrieval_top10_agreement": topk_neighbour_agreement(reference_emb, emb, 10)}
    return {"perplexity": perplexity(adapter, eval_data, args.eval_window, args.eval_windows)["perplexity"]}


def run_model(name: str, args, sink=None) -> list[dict]:
    base = load_model(name, device=args.device)
    if base.family == "encoder":
        eval_data = text_data.stdlib_sentences("eval")[: args.eval_sentences]
        reference = embed(base, eval_data)
    else:
        eval_data = text_data.stdlib_corpus("eval")
        reference = None
    only = set(args.only.split(",")) if args.only else None
    rows = []
    if only is None or "full precision" in only:
        rows.append({"model": name, "method": "full precision", "bits": 32, "effective_bits": 32.0, "r_in": 1.0,
                     "r_out": 1.0, **evaluate(base, reference, eval_data, args), "seconds": 0.0})
        print(rows[-1], flush=True)
    batches, where = calibration_batches(base, None, args.calib_samples, seed=0, window=args.window)
    bits_list = tuple(int(b) for b in args.bits.split(","))
    for config in configs(bits_list):
        if only is not None and f"{config.label}@{config.bits}" not in only and config.label not in only:
            continue
        adapter = copy.copy(base)
        adapter.model = copy.deepcopy(base.model)
        adapter.blocks = [(p, adapter.model.get_submodule(p)) for p, _ in base.blocks]
        start = time.perf_counter()
        stats = quantize(adapter, config, batches, progress=False)
        seconds = time.perf_counter() - start
        totals = model_effective_bits(adapter.model)
        row = {"model": name, "method": config.label, "bits": config.bits, "effective_bits": totals["effective_bits"],
               "r_in": stats[0].redundancy_in, "r_out": stats[0].redundancy_out,
               **evaluate(adapter, reference, eval_data, args), "seconds": seconds}
        rows.append(row)
        print(row, flush=True)
        if args.save and args.save.split("=")[0] == f"{config.label}@{config.bits}":
            from fq_export.checkpoint import save_checkpoint
            from fq_export.pipeline import quantized_layers

            save_checkpoint(args.save.split("=", 1)[1], quantized_layers(adapter.model),
                            {"model": base.source, "config": config.to_dict(),
                             "calibration": {"source": where, "samples": len(batches)}})
        if sink is not None:
            sink(rows)
        del adapter
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for row in rows:
        row["calibration"] = f"{len(batches)} samples of {where}"
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = [r for r in rows if r["model"] == model and r["method"] != "full precision"]
        metric = "embedding_cosine" if "embedding_cosine" in sub[0] else "perplexity"
        fp = next((r[metric] for r in rows if r["model"] == model and r["method"] == "full precision"), None)
        for family, marker in (("rtn", "x"), ("gptq", "s"), ("quip", "^"), ("quip-clip", "v"), ("framequant", "o")):
            pts = [r for r in sub if r["method"] == family or (family == "framequant" and r["method"].startswith("framequant"))]
            if pts:
                ax.scatter([p["effective_bits"] for p in pts], [p[metric] for p in pts], marker=marker, label=family)
        if fp is not None:
            ax.axhline(fp, color="gray", linestyle="--", label="full precision")
        ax.set_xlabel("effective bits per weight (honest: codes + scales + padding)")
        ax.set_ylabel(metric)
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,smollm2-135m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bits", default="2,3")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--window", type=int, default=512, help="causal-LM calibration window")
    parser.add_argument("--eval-window", type=int, default=2048, help="perplexity window")
    parser.add_argument("--eval-windows", type=int, default=40, help="perplexity windows (None: all)")
    parser.add_argument("--eval-sentences", type=int, default=1000)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--tag", default="quality")
    parser.add_argument("--only", help="comma-separated rows to run: 'full precision', a method label "
                                       "(framequant-r1.1-both) or label@bits")
    parser.add_argument("--save", help="LABEL@BITS=PATH: also save that configuration's checkpoint")
    parser.add_argument("--merge", help="comma-separated result JSON files (partial or final) to merge into one table")
    args = parser.parse_args()
    out = Path(args.out_dir)
    rows = []
    if args.merge:
        for f in args.merge.split(","):
            data = json.loads(Path(f).read_text())
            rows += data["rows"] if isinstance(data, dict) else data
        args.models = ""
    for name in filter(None, args.models.split(",")):
        done = list(rows)
        rows += run_model(name, args, sink=lambda partial: write_json(out / f"{args.tag}.partial.json", done + partial))
    columns = ["model", "method", "bits", "effective_bits", "r_in", "r_out"]
    metrics = [m for m in ("embedding_cosine", "retrieval_top10_agreement", "perplexity") if any(m in r for r in rows)]
    table_rows = [{c: r.get(c, "") for c in columns + metrics + ["seconds"]} for r in rows]
    md = markdown_table(table_rows, columns + metrics + ["seconds"])
    print(md)
    write_text(out / f"{args.tag}.md", md + "\n")
    write_json(out / f"{args.tag}.json", {"args": vars(args), "rows": rows,
                                          "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"})
    plot(rows, out / f"{args.tag}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
