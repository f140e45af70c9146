"""Whole-model proof: every quantized linear through the CUDA kernels vs the PyTorch reference.

    # on a machine with the MiniLM package (CPU is fine): quantize and bundle the model
    python plugins_trt/tools/whole_model.py bundle-minilm DIR
    # on the GPU machine
    python plugins_trt/tools/whole_model.py run --minilm DIR --vit --json OUT.json

MiniLM: real weights (the bundle holds the FrameQuant checkpoint, the remaining fp32 weights, the
config and tokenized held-out sentences). ViT-B/16: timm random weights (seeded), quantized on the
GPU with FrameQuant from the offline photos; numerics only. For each model the reference is the
same quantized model run by ``FrameQuantLinear`` (PyTorch, fp32); the kernel path replaces every
quantized layer by ``harness.KernelLinear`` (fp16 activations into the kernels, fp32 accumulation)
with its automatic path choice (``KernelLinear``: one launch for one row, three launches, the
cuBLAS path from 64 fp16 rows, the dense form from ``harness.dense_min_rows``); ``paths`` counts
the layers by the path their last call took. The models run fp32, so their layers take the fp32
paths; ``fp16_activations`` repeats the pass with fp16 activations into every kernel layer (the
gemm and dense paths are fp16-only).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _compare(ref: torch.Tensor, out: torch.Tensor) -> dict:
    ref, out = ref.double().flatten(1), out.double().flatten(1)
    cos = torch.nn.functional.cosine_similarity(ref, out, dim=1)
    return {"max_abs_err": float((ref - out).abs().max()), "ref_max_abs": float(ref.abs().max()),
            "rel_fro_err": float((ref - out).norm() / ref.norm()), "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()), "argmax_agreement": float((ref.argmax(1) == out.argmax(1)).double().mean())}


def bundle_minilm(out_dir: Path) -> None:
    from safetensors.torch import save_file

    from calib.sources import calibration_batches
    from fq_export.checkpoint import save_checkpoint
    from fq_export.config import QuantConfig
    from fq_export.cli.export import validation_batches
    from fq_export.models import load_model
    from fq_export.pipeline import quantize, quantized_layers

    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = load_model("minilm")
    batches, _ = calibration_batches(adapter, None, 32)
    quantize(adapter, QuantConfig(method="framequant", bits=2, redundancy=1.1), batches, progress=False)
    layers = quantized_layers(adapter.model)
    save_checkpoint(out_dir / "layers.safetensors", layers, {"model": {"model": "minilm"}})
    rest = {k: v.contiguous() for k, v in adapter.model.state_dict().items()
            if not any(k.startswith(name + ".") for name in layers)}
    save_file(rest, str(out_dir / "rest.safetensors"))
    (out_dir / "config.json").write_text(adapter.model.config.to_json_string())
    val, _ = validation_batches(adapter, 32)
    ids = torch.nn.utils.rnn.pad_sequence([r for b in val for r in b["input_ids"]], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([r for b in val for r in b["attention_mask"]], batch_first=True)
    save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous()}, str(out_dir / "inputs.safetensors"))
    print(f"bundled {len(layers)} quantized layers into {out_dir}")


def run_minilm(folder: Path, device: str) -> dict:
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    from fq_export.checkpoint import load_checkpoint
    from fq_export.models.base import mean_pool
    from fq_export.pipeline import set_submodule
    from plugins_trt import harness

    config = BertConfig.from_json_file(str(folder / "config.json"))
    model = BertModel(config, add_pooling_layer=False).eval()
    model.load_state_dict(load_file(str(folder / "rest.safetensors")), strict=False)
    layers, _ = load_checkpoint(folder / "layers.safetensors")
    for name, layer in layers.items():
        set_submodule(model, name, layer)
    model.to(device)
    inputs = {k: v.to(device) for k, v in load_file(str(folder / "inputs.safetensors")).items()}

    def embed():
        with torch.no_grad():
            return mean_pool(model(**inputs).last_hidden_state, inputs["attention_mask"])

    ref = embed()
    count = harness.use_kernels(model)
    out = embed()
    result = {"model": "all-MiniLM-L6-v2 (real weights), FrameQuant 2 bits r=1.1", "kernel_layers": count,
              "paths": paths_taken(model),
              "sentences": int(inputs["input_ids"].shape[0]), "tokens_per_batch": int(inputs["input_ids"].numel()),
              **_compare(ref, out)}
    result["fp16_activations"] = fp16_pass(model, embed, ref)
    return result


def paths_taken(model) -> dict:
    """Quantized layers per kernel path that their last call took (KernelLinear.last_path)."""
    from plugins_trt import harness

    taken: dict = {}
    for mod in model.modules():
        if isinstance(mod, harness.KernelLinear) and mod.last_path:
            taken[mod.last_path] = taken.get(mod.last_path, 0) + 1
    return taken


def run_vit(device: str, calib_images: int = 32) -> dict:
    from calib.sources import calibration_batches
    from fq_export.config import QuantConfig
    from fq_export.models import load_model
    from fq_export.pipeline import quantize
    from plugins_trt import harness

    adapter = load_model("vit-b", random_weights=True, device=device)
    batches, _ = calibration_batches(adapter, None, calib_images)
    start = time.perf_counter()
    quantize(adapter, QuantConfig(method="framequant", bits=2, redundancy=1.1), batches, progress=False)
    seconds = time.perf_counter() - start
    evals, _ = calibration_batches(adapter, None, 16, seed=7, split="eval")
    pixels = torch.cat([b["pixel_values"] for b in evals]).to(device)
    with torch.no_grad():
        ref = adapter.model(pixels)
        count = harness.use_kernels(adapter.model)
        out = adapter.model(pixels)
    result = {"model": "ViT-B/16 (random weights, seeded), FrameQuant 2 bits r=1.1", "kernel_layers": count,
              "paths": paths_taken(adapter.model),
              "images": int(pixels.shape[0]), "quantize_seconds": seconds, **_compare(ref, out)}
    with torch.no_grad():
        result["fp16_activations"] = fp16_pass(adapter.model, lambda: adapter.model(pixels), ref)
    return result


def fp16_pass(model, forward, ref) -> dict:
    """The same forward pass with fp16 activations into every kernel layer (the model's other
    layers stay fp32): the automatic choice then takes the fp16-only gemm and dense paths."""
    from plugins_trt import harness

    for mod in model.modules():
        if isinstance(mod, harness.KernelLinear):
            mod.act_dtype = torch.float16
    out = forward()
    return {"paths": paths_taken(model), **_compare(ref, out)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle-minilm")
    b.add_argument("dir", type=Path)
    r = sub.add_parser("run")
    r.add_argument("--minilm", type=Path, help="bundle folder from bundle-minilm")
    r.add_argument("--vit", action="store_true")
    r.add_argument("--json", required=True)
    args = parser.parse_args()
    if args.cmd == "bundle-minilm":
        bundle_minilm(args.dir)
        return 0
    results = {"device": torch.cuda.get_device_name()}
    if args.minilm:
        results["minilm"] = run_minilm(args.minilm, "cuda")
        print(json.dumps(results["minilm"], indent=1))
    if args.vit:
        results["vit_b16"] = run_vit("cuda")
        print(json.dumps(results["vit_b16"], indent=1))
    Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
