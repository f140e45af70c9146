"""What the subcommands share: options, input and output checks, model loading, quantization.

Every subcommand module imports this one and nothing else of the command line, so imports run one
way: ``main`` -> subcommand modules -> ``common`` -> the core package.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger("fq_export")

#: rotation seeds are 31-bit in the checkpoint format and the kernels; a larger --seed would alias
MAX_SEED = 2**31 - 1


class UserError(Exception):
    """Bad input: printed as one clear line, exit code 2."""


# ---- options ------------------------------------------------------------------------------------

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
    p.add_argument("--r", type=float, help="frame redundancy (framequant; default 1.1); nearest valid value at or below "
                                         "is used")
    p.add_argument("--side", choices=["both", "input"], help="redundancy on both sides (default) or the input only")
    p.add_argument("--bits", type=int, default=2, choices=[2, 3, 4, 8])
    p.add_argument("--clip-sigma", type=float, default=2.0, help="row clipping to mean +- c sigma; 0 turns it off")
    p.add_argument("--act-order", action="store_true", help="GPTQ activation order")
    p.add_argument("--group-size", type=int, choices=[32, 64, 128],
                   help="a scale and zero per group of this many frame-space columns (default: one per row)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="after each block is quantized, tune its scales and zeros (codes fixed) for this many "
                        "steps to match the full-precision block's output (default: 100 on a GPU; on a CPU 50 "
                        "for models of up to 50M block weights, else 0)")
    p.add_argument("--e2e-steps", type=int, default=None,
                   help="after the last block, tune every block's scales and zeros together for this many steps "
                        "to match the full-precision model's output (causal LMs: next-token KL; default: "
                        "the --finetune-steps count)")
    p.add_argument("--budget-bits", type=float,
                   help="choose each layer's bits, r and side from its measured effect on the output so that the "
                        "model's effective bits stay at or under this budget (overrides --bits, --r and --side; "
                        "default: 2-bit FrameQuant with --r and --side not given, on a GPU or on a model of up to "
                        "50M block weights, spends the bits of r 1.1 on both sides this way)")
    p.add_argument("--calib", help="calibration data: text file/folder, image folder, or hf:NAME[:SPLIT[:FIELD]]; "
                                   "default: offline real data (see README)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--window", type=int, help="token window of causal-LM calibration samples (default 512)")
    p.add_argument("--seed", type=int, default=0)


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


# ---- checks made before any work ----------------------------------------------------------------

#: integer options and the least value each accepts
_INT_MINIMA = {"calib_samples": 1, "heldout_samples": 1, "validate_samples": 1, "limit": 1, "window": 2,
               "finetune_steps": 0, "e2e_steps": 0}


def check_numbers(args) -> None:
    """Counts, windows, seeds, budgets: the values no command can honour are refused up front."""
    for name, least in _INT_MINIMA.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must lie in [0, {MAX_SEED}] (rotation seeds are 31-bit in the checkpoint format and "
                        f"the kernels, so a larger or negative seed would repeat another seed's rotations), got {seed}")
    for name in ("r", "clip_sigma", "budget_bits"):
        value = getattr(args, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if getattr(args, "clip_sigma", None) is not None and args.clip_sigma < 0:
        raise UserError(f"--clip-sigma must be positive (or 0 to turn clipping off), got {args.clip_sigma}")
    if getattr(args, "budget_bits", None) is not None and args.budget_bits <= 0:
        raise UserError(f"--budget-bits must be positive, got {args.budget_bits}")


def check_device(device: str | None) -> None:
    """``cpu``, or a CUDA device that exists here."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return
    if parsed.type != "cuda":
        raise UserError(f"--device {device!r}: only cpu and cuda devices are supported")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is usable here (torch.cuda.is_available() is false); "
                        "use --device cpu")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise UserError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")


def check_output(path: str, option: str, suffixes: tuple[str, ...]) -> Path:
    """An output path the command can write: right extension, not a folder, in a writable folder.

    Also removes temporaries that killed fq-export runs left in that folder.
    """
    from fq_export.files import clean_stale_temporaries, temporary_file

    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise UserError(f"{option} must end in {' or '.join(suffixes)}, got {path}")
    if out.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file path ending in {' or '.join(suffixes)}")
    folder = out.parent
    if not folder.exists():
        raise UserError(f"{option} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is not a folder")
    clean_stale_temporaries(folder)
    try:  # the real test (permissions, read-only file systems, root or not)
        with temporary_file(folder):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in folder {folder} ({exc.strerror or exc})") from None
    return out


def check_outputs(args, spec: dict[str, tuple[str, ...]]) -> None:
    """Each output option of ``spec`` (attribute -> accepted suffixes) that is set; no two the same."""
    seen: dict[Path, str] = {}
    for attr, suffixes in spec.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        option = "--" + attr.replace("_", "-")
        resolved = check_output(value, option, suffixes).resolve()
        if resolved in seen:
            raise UserError(f"{option} and {seen[resolved]} name the same file {value}")
        seen[resolved] = option


def check_calibration(args, batches: list) -> None:
    """Exactly the calibration samples asked for, or an error that says how many there are."""
    if len(batches) < args.calib_samples:
        source = args.calib or "the default calibration data"
        raise UserError(f"--calib-samples {args.calib_samples} asks for more calibration samples than {source} "
                        f"yields ({len(batches)}): pass --calib-samples {len(batches)} or more data")


def check_calibration_source(args) -> None:
    """A local ``--calib`` source read and counted before the model loads: text must be UTF-8 text,
    and text encoders and vision models must find ``--calib-samples`` sentences or images in it
    (causal LMs count token windows, which needs the tokenizer: ``check_calibration`` does that)."""
    if not getattr(args, "calib", None) or args.calib.startswith("hf:"):
        return
    from calib import corpora
    from calib import text as text_data
    from fq_export.models.registry import model_family

    family = model_family(args.model) if args.model else None
    if args.calib.startswith(corpora.PREFIX):  # packaged text: the names checked, the counts after loading
        try:
            corpora.parse(args.calib)
        except corpora.CorpusError as exc:
            raise UserError(f"--calib: {exc}") from None
        if family == "vit":
            raise UserError(f"--calib {args.calib} is text; {args.model} is a vision model: pass an image folder")
        return
    if family == "vit":
        from calib.images import list_images

        found, what = len(list_images(args.calib)), "images"
    elif family in ("encoder", "causal_lm"):
        if family == "causal_lm":
            text_data.read_text_source(args.calib)
            return
        found, what = len(text_data.text_sentences(args.calib)), "sentences"
    else:
        return
    if found < args.calib_samples:
        raise UserError(f"--calib {args.calib} holds {found} {what}, fewer than the {args.calib_samples} asked for by "
                        f"--calib-samples: pass --calib-samples {found} or more data")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


# ---- models and quantization -------------------------------------------------------------------

def _config(args):
    from fq_export.config import QuantConfig

    return QuantConfig(method=args.method, bits=args.bits, redundancy=1.1 if args.r is None else args.r,
                       redundancy_side=args.side or "both",
                       clip_sigma=args.clip_sigma or None, act_order=args.act_order, seed=args.seed,
                       group_size=args.group_size)


def _load(args):
    from fq_export.models import load_model

    return load_model(args.model, weights=args.weights, random_weights=args.random_weights, device=args.device)


def _quantize(args):
    from calib.sources import calibration_batches
    from fq_export.accounting import model_effective_bits
    from fq_export.budget import default_budget
    from fq_export.pipeline import default_finetune_steps, quantize, stats_table

    config = _config(args)
    adapter = _load(args)
    batches, where = calibration_batches(adapter, args.calib, args.calib_samples, args.seed, window=args.window)
    check_calibration(args, batches)
    start = time.perf_counter()
    steps = default_finetune_steps(args.device, adapter) if args.finetune_steps is None else args.finetune_steps
    e2e_steps = steps if args.e2e_steps is None else args.e2e_steps
    budget = args.budget_bits
    if budget is None and args.r is None and args.side is None:
        budget = default_budget(adapter, config, args.device)
    stats = quantize(adapter, config, batches, progress=not args.no_progress, finetune_steps=steps,
                     budget_bits=budget, e2e_steps=e2e_steps)
    seconds = time.perf_counter() - start
    totals = model_effective_bits(adapter.model)
    report = {"model": adapter.source, "config": config.to_dict(), "calibration": {"source": where, "samples": len(batches)},
              "finetune_steps": steps, "e2e_steps": e2e_steps, "budget_bits": budget,
              "totals": totals, "quantize_seconds": seconds, "layers": stats_table(stats)}
    recipe = config.label if budget is None else f"a {budget:.3f}-bit budget ({config.method}, per-layer recipes)"
    print(f"quantized {totals['quantized_layers']} layers of {adapter.name} with {recipe} in {seconds:.1f}s: "
          f"effective bits {totals['effective_bits']:.3f}")
    return adapter, config, report


def model_source(meta: dict, checkpoint: str) -> dict:
    """The ``model`` entry of a checkpoint's metadata: how to load the model it quantizes."""
    source = meta.get("model")
    if not isinstance(source, dict) or not isinstance(source.get("model"), str) or not source["model"]:
        raise UserError(f"checkpoint {checkpoint} does not say which model it quantizes (metadata 'model')")
    if source.get("weights") is not None and not isinstance(source["weights"], str):
        raise UserError(f"checkpoint {checkpoint}: metadata model.weights must be a path")
    return source


def load_source(source: dict, device: str = "cpu"):
    """The full-precision model a checkpoint's (or an adapter's) ``source`` names."""
    from fq_export.models import load_model

    return load_model(source["model"], weights=source.get("weights"),
                      random_weights=bool(source.get("random_weights")), device=device)


def load_quantized(checkpoint: str, device: str = "cpu", before_layers=None):
    """A model adapter with the checkpoint's layers (and tuned parameters) in place, plus the
    checkpoint metadata.

    The checkpoint's hashes are verified (``load_with_parameters``) and every layer is compared with the
    full-precision layer it replaces (``converters.validate.full_precision_layers``): a layer that
    does not reproduce it is a ``CheckpointError`` naming the layer. ``before_layers(adapter)``, if
    given, is called on the full-precision model before its layers are replaced.
    """
    from converters import validate
    from fq_export.checkpoint import CheckpointError, load_with_parameters
    from fq_export.pipeline import apply_layers, apply_parameters

    layers, meta, params = load_with_parameters(checkpoint)
    adapter = load_source(model_source(meta, checkpoint), device)
    import torch

    weights = {}
    for name in layers:
        try:
            module = adapter.model.get_submodule(name)
        except AttributeError:
            continue  # apply_layers names the layer the model lacks
        if isinstance(module, torch.nn.Linear) and tuple(module.weight.shape) == (layers[name].out_features,
                                                                                 layers[name].in_features):
            weights[name] = module.weight  # (a wrong shape or kind: apply_layers names it)
    failures = validate.reference_failures([], validate.full_precision_layers(layers, weights))
    if failures:
        more = f" (and {len(failures) - 1} more layers)" if len(failures) > 1 else ""
        raise CheckpointError(f"checkpoint {checkpoint}: {failures[0]}{more}")
    if before_layers is not None:
        before_layers(adapter)
    apply_layers(adapter, layers)
    apply_parameters(adapter, params)
    return adapter, meta


def disable_library_progress() -> None:
    """Keep transformers' and the hub's own progress bars off stderr (``--no-progress``)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import transformers.utils.logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def quiet_libraries() -> None:
    """transformers' notices (deprecations, hints) stay off stderr unless ``--verbose``: stderr is
    for fq-export's own one-line errors."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import sys

    if "transformers" in sys.modules:
        import transformers.utils.logging as hf_logging

        hf_logging.set_verbosity_error()
