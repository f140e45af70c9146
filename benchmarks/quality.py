"""Quality against honest effective bits, in and out of the calibration domain.

    python benchmarks/quality.py --models minilm --out-dir benchmarks/results
    python benchmarks/quality.py --models smollm2-135m --device cuda --out-dir benchmarks/results

Every row is one quantization of the model (the same calibration samples for all rows of a
seed), evaluated on named real-text sources (:mod:`calib.corpora`): the calibration corpus' own
evaluation part (in domain) and BBC News articles (another kind of text: out of domain).
MiniLM: mean embedding cosine to full precision and top-10 neighbour agreement per source, and
the Spearman correlation on the STS-B test pairs (human scores). SmolLM2: perplexity per
source. Rows: the per-row baselines (RTN, GPTQ, QuIP, QuIP+clip), group-wise GPTQ and RTN (RTN
with groups of 32 is onnxruntime's own weight-only quantizer's math), FrameQuant at r 1.0 / 1.1
both / 1.1 input (and r 1.0 with groups of 64), with and without fine-tuning ("+ ftN": N
block-wise steps per block, then N end-to-end steps, as ``--finetune-steps N`` does; for a causal
LM also with its norm weights left as they were), and under a bit budget (where the CLI spends
the default recipe's own bits by a budget, as for MiniLM on a CPU and every model on a GPU, that
row too: the default); for MiniLM also onnxruntime's own 2-bit and 4-bit exports of the fp32
ONNX, evaluated in onnxruntime. ``--calib A,B,...`` runs the default recipe once per extra
calibration source (how the default source was chosen); ``--seeds 0,1,2,3`` runs every row once
per seed and adds each figure's mean and spread over them. Writes
``quality_<model>.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from calib import corpora  # noqa: E402
from calib.metrics import cosine_rows, spearman, topk_neighbour_agreement  # noqa: E402
from calib.sources import DEFAULT_CALIBRATION, calibration_batches  # noqa: E402
from fq_export.accounting import model_effective_bits  # noqa: E402
from fq_export.budget import default_budget  # noqa: E402
from fq_export.cli.evaluate import embed, perplexity, read_pairs  # noqa: E402
from fq_export.config import QuantConfig  # noqa: E402
from fq_export.io import markdown_table, write_json, write_text  # noqa: E402
from fq_export.models import load_model  # noqa: E402
from fq_export.pipeline import default_finetune_steps, dense_weights, quantize  # noqa: E402

OUT_OF_DOMAIN = "bbc-news"


def rows_to_run(steps: int, budget: float, family: str = "encoder", default_budget: float | None = None) -> list[dict]:
    """(name, config fields, fine-tuning steps, budget) of every row of a model of ``family``;
    ``default_budget``: the CLI's own budget for the model (:func:`fq_export.budget.default_budget`)."""
    fq = lambda r, side, **kw: dict(method="framequant", redundancy=r, redundancy_side=side, **kw)  # noqa: E731
    rows = [
        ("rtn", dict(method="rtn")), ("gptq", dict(method="gptq")), ("quip", dict(method="quip")),
        ("quip-clip", dict(method="quip-clip")),
        ("rtn g32 (onnxruntime RTN math)", dict(method="rtn", group_size=32)),
        ("gptq g64", dict(method="gptq", group_size=64)), ("gptq g128", dict(method="gptq", group_size=128)),
        ("framequant r1.0", fq(1.0, "both")), ("framequant r1.1 input", fq(1.1, "input")),
        ("framequant r1.1 both", fq(1.1, "both")),
    ]
    out = [{"name": n, "config": c, "steps": 0, "budget": None} for n, c in rows]
    out += [{"name": f"gptq g128 + ft{steps}", "config": dict(method="gptq", group_size=128), "steps": steps, "budget": None},
            {"name": f"framequant r1.0 + ft{steps}", "config": fq(1.0, "both"), "steps": steps, "budget": None},
            {"name": f"framequant r1.0 g64 + ft{steps}", "config": fq(1.0, "both", group_size=64), "steps": steps,
             "budget": None},
            {"name": f"framequant r1.1 both + ft{steps}", "config": fq(1.1, "both"), "steps": steps, "budget": None,
             "default": default_budget is None},
            *([{"name": f"framequant budget {default_budget:.3f} (default) + ft{steps}", "config": fq(1.1, "both"),
                "steps": steps, "budget": default_budget, "default": True}] if default_budget is not None else []),
            *([{"name": f"framequant r1.1 both + ft{steps} (norms fixed)", "config": fq(1.1, "both"), "steps": steps,
                "budget": None, "tune_norms": False}] if family == "causal_lm" else []),
            {"name": f"framequant budget {budget} + ft{steps}", "config": fq(1.1, "both"), "steps": steps,
             "budget": budget},
            {"name": "gptq 4-bit", "config": dict(method="gptq", bits=4), "steps": 0, "budget": None},
            {"name": "framequant r1.0 4-bit", "config": fq(1.0, "both", bits=4), "steps": 0, "budget": None}]
    return out


class Evaluator:
    def __init__(self, base, calib_source: str, args):
        self.base, self.args = base, args
        names = [n for n in corpora.parse(calib_source)]
        self.sources = list(dict.fromkeys(names + [OUT_OF_DOMAIN]))
        self.in_domain = set(names)
        if base.family == "encoder":
            self.data = {n: corpora.sentences(n, "eval")[: args.eval_sentences] for n in self.sources}
            self.reference = {n: embed(base, s) for n, s in self.data.items()}
            self.pairs = read_pairs(corpora.pairs_file("sts-b"))
        else:
            self.data = {n: corpora.mix_text(f"corpus:{n}", "eval") for n in self.sources}

    def label(self, source: str) -> str:
        return f"{source} ({'in' if source in self.in_domain else 'out of'} domain)"

    def __call__(self, run_embed=None, adapter=None) -> dict:
        if self.base.family == "encoder":
            run_embed = run_embed or (lambda s: embed(adapter, s))
            out = {}
            for n, sents in self.data.items():
                e = run_embed(sents)
                out[f"cosine {n}"] = float(cosine_rows(e, self.reference[n]).mean())
                out[f"top10 {n}"] = topk_neighbour_agreement(self.reference[n], e, 10)
            first, second, scores = self.pairs
            out["spearman sts-b"] = spearman(cosine_rows(run_embed(first), run_embed(second)).numpy(), np.asarray(scores))
            return out
        return {f"ppl {n}": perplexity(adapter, text, self.args.eval_window, self.args.eval_windows)["perplexity"]
                for n, text in self.data.items()}


def run(name: str, args) -> list[dict]:
    base = load_model(name, device=args.device)
    steps = default_finetune_steps(args.device, base) if args.finetune_steps is None else args.finetune_steps
    sources = args.calib.split(",")
    evaluator = Evaluator(base, sources[0], args)
    results = [{"model": name, "method": "full precision", "effective_bits": 32.0, "seconds": 0.0,
                "calibration": "-", **evaluator(adapter=base)}]
    print(results[-1], flush=True)
    rows = rows_to_run(steps, args.budget, base.family, default_budget(base, QuantConfig(bits=2), args.device))
    plan = [(sources[0], row) for row in rows]
    plan += [(src, row) for src in sources[1:] for row in rows if row.get("default")]
    if args.only:  # the rows named, in the order named; "NAME@SOURCE" for a row of another source
        order = args.only.split(",")
        key = lambda item: item[1]["name"] + ("" if item[0] == sources[0] else "@" + item[0])  # noqa: E731
        plan = sorted((item for item in plan if key(item) in order or item[1]["name"] in order),
                      key=lambda item: order.index(key(item)) if key(item) in order else order.index(item[1]["name"]))
    batches_by_source = {}
    for seed, (source, row) in ((seed, item) for item in plan for seed in args.seeds):
        if (source, seed) not in batches_by_source:
            batches_by_source[source, seed] = calibration_batches(base, source, args.calib_samples, seed=seed,
                                                                  window=args.window)[0]
        adapter = copy.copy(base)
        adapter.model = copy.deepcopy(base.model)
        adapter.blocks = [(p, adapter.model.get_submodule(p)) for p, _ in base.blocks]
        config = QuantConfig(**{"bits": 2, "seed": seed, **row["config"]})
        start = time.perf_counter()
        quantize(adapter, config, batches_by_source[source, seed], progress=False, finetune_steps=row["steps"],
                 e2e_steps=row["steps"], budget_bits=row["budget"], tune_norms=row.get("tune_norms", True))
        seconds = time.perf_counter() - start
        with dense_weights(adapter.model):
            figures = evaluator(adapter=adapter)
        results.append({"model": name, "method": row["name"], "effective_bits": model_effective_bits(adapter.model)["effective_bits"],
                        "seconds": seconds, "calibration": source, **({"seed": seed} if len(args.seeds) > 1 else {}),
                        **figures})
        print(results[-1], flush=True)
        write_json(Path(args.out_dir) / f"quality_{name}.partial.json", results)
        del adapter
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if base.family == "encoder" and not args.no_onnxruntime:
        results += onnxruntime_peers(base, evaluator, Path(args.out_dir), name)
    for r in results:
        r["sources"] = {s: evaluator.label(s) for s in evaluator.sources}
    return results


def onnxruntime_peers(base, evaluator: Evaluator, out_dir: Path, name: str) -> list[dict]:
    """onnxruntime's MatMulNBits quantizer (RTN, block 32, asymmetric, fp32 scales, uint8 zero points)
    on the fp32 ONNX export, run in onnxruntime. Honest bits: ``bits + (32 + 8) / 32`` per weight."""
    import tempfile

    import onnxruntime as ort

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from runtime import peer_export  # the same export that benchmarks/runtime.py times

    from converters.torch_export import export_onnx
    from fq_export.models.text import sentence_batches

    rows = []
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(base, sentence_batches(base, ["an example sentence", "another one"], 2)[0], fp32)
        for bits in (2, 4):
            path = peer_export(fp32, Path(tmp) / f"ort{bits}.onnx", bits, None)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]

            def run_embed(sentences, session=session, names=names):
                outs = []
                for b in sentence_batches(base, sentences, 32):
                    outs.append(torch.from_numpy(session.run(None, {k: b[k].numpy() for k in names})[0]))
                return torch.cat(outs)

            rows.append({"model": name, "method": f"onnxruntime RTN {bits}-bit", "effective_bits": bits + 40 / 32,
                         "seconds": 0.0, "calibration": "none", **evaluator(run_embed=run_embed)})
            print(rows[-1], flush=True)
    return rows


def seed_spread(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Per method and calibration source run under several seeds: each metric's mean and sample
    standard deviation over the seeds ("mean +- sd")."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "seed" in r:
            groups.setdefault((r["method"], r["calibration"]), []).append(r)
    out = []
    for (method, calibration), runs in groups.items():
        row = {"method": method, "calibration": calibration, "seeds": ",".join(str(r["seed"]) for r in runs)}
        for key in ["effective_bits", *metrics, "seconds"]:
            values = np.array([r[key] for r in runs], dtype=np.float64)
            sd = values.std(ddof=1) if len(values) > 1 else 0.0
            row[key] = f"{values.mean():.4f} +- {sd:.4f}"
        out.append(row)
    return out


def plot(rows: list[dict], path: Path, metric: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    fp = next(r[metric] for r in rows if r["method"] == "full precision")
    for r in rows:
        if r["method"] == "full precision" or metric not in r:
            continue
        family = r["method"].split(" ")[0]
        marker = {"rtn": "x", "gptq": "s", "quip": "^", "quip-clip": "v", "framequant": "o", "onnxruntime": "D"}.get(family, ".")
        ax.scatter(r["effective_bits"], r[metric], marker=marker, color="C3" if "ft" in r["method"] else None)
        ax.annotate(f"{r['method']} [{r['calibration']}]" if r["calibration"] not in ("-", rows[1]["calibration"], "none")
                    else r["method"], (r["effective_bits"], r[metric]), fontsize=6)
    ax.axhline(fp, color="gray", linestyle="--", label="full precision")
    ax.set_xlabel("effective bits per weight (honest: codes, scales, zeros, padding)")
    ax.set_ylabel(metric)
    if metric.startswith("ppl"):
        ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calib", default=DEFAULT_CALIBRATION,
                        help="calibration source of every row; more, comma-separated, run the default recipe once each")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--finetune-steps", type=int, help="fine-tuning steps of the '+ ft' rows (default: the CLI's)")
    parser.add_argument("--budget", type=float, default=2.6, help="bit budget of the budget row")
    parser.add_argument("--window", type=int, default=512, help="causal-LM calibration window")
    parser.add_argument("--eval-window", type=int, default=2048, help="perplexity window")
    parser.add_argument("--eval-windows", type=int, default=40, help="perplexity windows per source")
    parser.add_argument("--eval-sentences", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated row names to run, in this order (full precision always runs)")
    parser.add_argument("--no-onnxruntime", action="store_true", help="MiniLM: skip onnxruntime's own exports")
    parser.add_argument("--merge", help="comma-separated JSON files of earlier rows of the same settings to put "
                                        "before this run's (a run cut into parts)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds (calibration sample and rotations); every row runs once per seed, "
                             "and with several the table adds each metric's mean and spread")
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args()
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    earlier = []
    for path in filter(None, (args.merge or "").split(",")):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        earlier += data["rows"] if isinstance(data, dict) else data
    for name in args.models.split(","):
        rows = run(name, args)
        key = lambda r: (r["method"], r["calibration"], r.get("seed"))  # noqa: E731
        seen = {key(r) for r in rows}
        merged = [r for r in earlier if r["model"] == name and key(r) not in seen]
        for r in merged:
            r["sources"] = rows[0]["sources"]
        rows = rows[:1] + merged + rows[1:]
        metrics = [k for k in rows[0] if k.startswith(("cosine", "top10", "spearman", "ppl"))]
        columns = ["method", "calibration", *(["seed"] if any("seed" in r for r in rows) else []), "effective_bits",
                   *metrics, "seconds"]
        md = markdown_table([{c: r.get(c, "") for c in columns} for r in rows], columns)
        spread = seed_spread(rows, metrics)
        if spread:
            spread_columns = ["method", "calibration", "seeds", "effective_bits", *metrics, "seconds"]
            md += "\n\nOver the seeds (mean +- sample standard deviation):\n\n" + markdown_table(spread, spread_columns)
        sources = "; ".join(rows[0]["sources"].values())
        print(md + f"\n\nsources: {sources}")
        write_text(out / f"quality_{name}.md", md + f"\n\nEvaluation sources: {sources}. Device: {args.device}.\n")
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        write_json(out / f"quality_{name}.json", {"args": vars(args), "device": device, "rows": rows,
                                                    **({"seed_spread": spread} if spread else {})})
        (out / f"quality_{name}.partial.json").unlink(missing_ok=True)  # the rows so far, kept only while running
        metric = "spearman sts-b" if "spearman sts-b" in metrics else f"ppl {OUT_OF_DOMAIN}"
        plot(rows, out / f"quality_{name}.png", metric, f"{name}: {metric} (out of the calibration domain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
