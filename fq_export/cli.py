"""The ``fq-export`` command line: a thin layer over the Python API.

    fq-export layer-error --model minilm --bits 2 --calib-samples 128 --json OUT.json
    fq-export quantize --model M --r R --bits B --method framequant --out CKPT --report R.json
    fq-export eval (--checkpoint CKPT | --model M) [--pairs F.tsv | --text F | --images DIR] --json OUT.json
    fq-export export --checkpoint CKPT --out X.onnx [--onnx-form standard|packed|plugin|plugin-layer]
    fq-export --model M --r R --bits B --out X.onnx|engine.plan --report R.json   (quantize, export, validate)
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("fq_export")
COMMANDS = ("layer-error", "quantize", "eval", "export", "run")


class UserError(Exception):
    """Bad input: printed as one clear line, exit code 2."""


def _model_args(p: argparse.ArgumentParser, required: bool = False, default: str | None = None) -> None:
    p.add_argument("--model", required=required, default=default,
                   help="minilm (default, offline), smollm2-135m, vit-b, vit-s, deit-s, deit-b, swin-t, ..., "
                        "a timm name or a local Hugging Face folder")
    p.add_argument("--weights", help="local weights file or folder (timm models)")
    p.add_argument("--random-weights", action="store_true",
                   help="random-initialised timm model: plumbing and export numerics only, never accuracy")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")


def _quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="framequant", choices=["framequant", "gptq", "quip", "quip-clip", "rtn"])
    p.add_argument("--r", type=float, default=1.1, help="frame redundancy (framequant); nearest valid value at or below is used")
    p.add_argument("--side", default="both", choices=["both", "input"], help="redundancy on both sides or the input only")
    p.add_argument("--bits", type=int, default=2, choices=[2, 3, 4, 8])
    p.add_argument("--clip-sigma", type=float, default=2.0, help="row clipping to mean +- c sigma; 0 turns it off")
    p.add_argument("--act-order", action="store_true", help="GPTQ activation order")
    p.add_argument("--calib", help="calibration data: text file/folder, image folder, or hf:NAME[:SPLIT[:FIELD]]; "
                                   "default: offline real data (see README)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--window", type=int, help="token window of causal-LM calibration samples (default 512)")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fq-export", description="FrameQuant quantization and deployable export.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log per-layer details")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command")
    _add = sub.add_parser

    def add_parser(name, **kwargs):
        return _add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser

    p = sub.add_parser("layer-error", help="quantize every linear independently with every method; compare errors")
    _model_args(p, default="minilm")
    p.add_argument("--bits", type=int, default=2, choices=[2, 3, 4, 8])
    p.add_argument("--r", default="1.0,1.1", help="comma-separated FrameQuant redundancies")
    p.add_argument("--methods", help="comma-separated method labels to keep (default: all)")
    p.add_argument("--calib", help="calibration text (default: offline stdlib docstrings, calibration part)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--heldout-samples", type=int, default=128, help="held-out samples for rel_proxy_loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="output JSON (one record per layer and method)")

    p = sub.add_parser("quantize", help="quantize a model and save a checkpoint")
    _model_args(p, default="minilm")
    _quant_args(p)
    p.add_argument("--out", required=True, help="checkpoint (.safetensors)")
    p.add_argument("--report", help="per-layer report (JSON)")

    p = sub.add_parser("eval", help="evaluate a checkpoint, or a full-precision model with --model alone")
    p.add_argument("--checkpoint")
    _model_args(p)
    p.add_argument("--pairs", help="sentence-pair TSV (sentence1, sentence2, score) -> spearman")
    p.add_argument("--text", help="text file/folder -> perplexity (causal LMs) or embedding_cosine (encoders)")
    p.add_argument("--images", help="ImageNet-style folder -> top1")
    p.add_argument("--limit", type=int, help="at most this many samples / windows")
    p.add_argument("--window", type=int, help="perplexity window (default: the model's context, 2048 at most)")
    p.add_argument("--json", required=True)

    p = sub.add_parser("export", help="export a saved quantization to ONNX (and validate it)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cpu")
    _export_args(p)

    p = sub.add_parser("run", help="quantize, export and validate in one command (the default command)")
    _model_args(p, default="minilm")
    _quant_args(p)
    _export_args(p)
    return parser


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="X.onnx, or engine.plan to build a TensorRT engine")
    p.add_argument("--onnx-form", default="standard", choices=["standard", "packed", "plugin", "plugin-layer"],
                   help="standard: stock ONNX operators that a runtime folds into one dense MatMul per layer at "
                        "load (fp32 speed and memory, small file); packed: onnxruntime's MatMulNBits on the packed "
                        "codes plus cheap transforms (weights stay packed in memory); plugin: one TensorRT plugin "
                        "node per step (five per layer); plugin-layer: one FQFrameLinear node per layer (engines "
                        "from --out *.plan use it unless --onnx-form plugin is given)")
    p.add_argument("--accuracy-level", type=int, default=4, choices=[0, 4],
                   help="packed form: MatMulNBits accuracy_level (4: int8 activations inside the op, fast; 0: fp32)")
    p.add_argument("--embeddings", default="fp32", choices=["fp32", "fp16", "int8", "int4"],
                   help="store token/position embedding tables in this precision (every form)")
    p.add_argument("--report", help="report JSON: sizes, effective bits, validation figures")
    p.add_argument("--validate-samples", type=int, default=16, help="real held-out samples for validation")
    p.add_argument("--plugin-library", help="libfq_trt_plugins.so for engine builds")


def _config(args):
    from .config import QuantConfig

    return QuantConfig(method=args.method, bits=args.bits, redundancy=args.r, redundancy_side=args.side,
                       clip_sigma=args.clip_sigma or None, act_order=args.act_order, seed=args.seed)


def _load(args):
    from .models import load_model

    return load_model(args.model, weights=args.weights, random_weights=args.random_weights, device=args.device)


def cmd_layer_error(args) -> int:
    from calib.sources import calibration_batches
    from .io import format_table, write_json
    from .layer_error import default_configs, layer_errors, summarize

    adapter = _load(args)
    if adapter.family != "encoder" and args.model != "minilm":
        log.info("layer-error on a %s model", adapter.family)
    redundancies = tuple(float(r) for r in args.r.split(","))
    configs = default_configs(args.bits, redundancies, args.seed)
    if args.methods:
        keep = set(args.methods.split(","))
        unknown = keep - {c.label for c in configs}
        if unknown:
            raise UserError(f"unknown method labels {sorted(unknown)}; known: {[c.label for c in configs]}")
        configs = [c for c in configs if c.label in keep]
    calib, where = calibration_batches(adapter, args.calib, args.calib_samples, args.seed, split="calib")
    heldout, where_eval = calibration_batches(adapter, None, args.heldout_samples, args.seed + 1, split="eval")
    records = layer_errors(adapter, calib, heldout, configs, progress=not args.no_progress)
    write_json(args.json, records)
    summary = summarize(records)
    print(f"model {adapter.name}: {len(adapter.linear_names())} layers, calibration {len(calib)} samples from {where}; "
          f"held-out {len(heldout)} samples from {where_eval}")
    print(format_table(summary, ["method", "layers", "effective_bits", "mean_rel_proxy_loss", "mean_seconds"]))
    print(f"wrote {args.json}")
    return 0


def _quantize(args):
    from calib.sources import calibration_batches
    from .accounting import model_effective_bits
    from .pipeline import quantize, stats_table

    config = _config(args)
    adapter = _load(args)
    batches, where = calibration_batches(adapter, args.calib, args.calib_samples, args.seed, window=args.window)
    start = time.perf_counter()
    stats = quantize(adapter, config, batches, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    totals = model_effective_bits(adapter.model)
    report = {"model": adapter.source, "config": config.to_dict(), "calibration": {"source": where, "samples": len(batches)},
              "totals": totals, "quantize_seconds": seconds, "layers": stats_table(stats)}
    print(f"quantized {totals['quantized_layers']} layers of {adapter.name} with {config.label} in {seconds:.1f}s: "
          f"effective bits {totals['effective_bits']:.3f}")
    return adapter, config, report


def cmd_quantize(args) -> int:
    from .checkpoint import save_checkpoint
    from .io import write_json
    from .pipeline import quantized_layers

    adapter, config, report = _quantize(args)
    save_checkpoint(args.out, quantized_layers(adapter.model),
                    {"model": adapter.source, "config": config.to_dict(), "calibration": report["calibration"]})
    report["checkpoint"] = {"path": str(args.out), "bytes": Path(args.out).stat().st_size}
    if args.report:
        write_json(args.report, report)
    print(f"wrote {args.out} ({report['checkpoint']['bytes']} bytes)")
    return 0


def load_quantized(checkpoint: str, device: str = "cpu"):
    """A model adapter with the checkpoint's layers in place, plus the checkpoint metadata."""
    from .checkpoint import load_checkpoint
    from .models import load_model
    from .pipeline import apply_layers

    layers, meta = load_checkpoint(checkpoint)
    source = meta.get("model") or {}
    if "model" not in source:
        raise UserError(f"{checkpoint} does not say which model it quantizes")
    adapter = load_model(source["model"], weights=source.get("weights"), random_weights=bool(source.get("random_weights")),
                         device=device)
    apply_layers(adapter, layers)
    return adapter, meta


def cmd_eval(args) -> int:
    from calib import text as text_data
    from calib.metrics import cosine_rows, topk_neighbour_agreement
    from .evaluate import embed, pairs_spearman, perplexity, top1
    from .io import write_json

    if not args.checkpoint and not args.model:
        raise UserError("eval needs --checkpoint CKPT, or --model M for the full-precision model")
    if args.checkpoint:
        adapter, meta = load_quantized(args.checkpoint, args.device)
        reference = None
        if adapter.family == "encoder":
            from .models import load_model

            reference = load_model(meta["model"]["model"], device=args.device)
    else:
        adapter, meta, reference = _load(args), None, None
    result = {"model": adapter.source, "checkpoint": args.checkpoint, "quantized": bool(args.checkpoint)}
    if adapter.family == "encoder":
        if args.pairs:
            result["spearman"] = pairs_spearman(adapter, args.pairs)
            if reference is not None:
                result["spearman_full_precision"] = pairs_spearman(reference, args.pairs)
        sentences = text_data.text_sentences(args.text) if args.text else text_data.stdlib_sentences("eval")
        sentences = sentences[: args.limit or 512]
        result["eval_text"] = args.text or "python-stdlib-docstrings:eval"
        if reference is not None:
            emb, ref = embed(adapter, sentences), embed(reference, sentences)
            result["embedding_cosine"] = float(cosine_rows(emb, ref).mean())
            result["retrieval_top10_agreement"] = topk_neighbour_agreement(ref, emb, 10)
            result["sentences"] = len(sentences)
    elif adapter.family == "causal_lm":
        corpus = text_data.read_text_source(args.text) if args.text else text_data.stdlib_corpus("eval")
        result["eval_text"] = args.text or "python-stdlib-docstrings:eval"
        result.update(perplexity(adapter, corpus, args.window, args.limit))
    else:
        if not args.images:
            raise UserError("vision models are evaluated on an image folder: pass --images DIR")
        result.update(top1(adapter, args.images, args.limit))
    write_json(args.json, result)
    shown = {k: v for k, v in result.items() if isinstance(v, float)}
    print(" ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    print(f"wrote {args.json}")
    return 0


def cmd_export(args) -> int:
    from .export_cli import export_command

    return export_command(args)


def cmd_run(args) -> int:
    from .export_cli import run_command

    return run_command(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"layer-error": cmd_layer_error, "quantize": cmd_quantize, "eval": cmd_eval,
               "export": cmd_export, "run": cmd_run}[args.command]
    from .checkpoint import CheckpointError
    from .models.base import UnknownModelError

    try:
        return handler(args)
    except (UserError, UnknownModelError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"fq-export: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if type(exc).__name__ != "ConversionError":  # converters.rewrite: a graph it cannot rewrite
            raise
        print(f"fq-export: error: ONNX conversion failed: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
