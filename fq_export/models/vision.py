"""Adapters for timm vision transformers: ViT, DeiT, DeiT-III and Swin."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import ModelAdapter, UnknownModelError


def is_timm_name(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return name in timm.list_models()


def _load_state_dict(weights: Path) -> dict:
    """A state dict from a safetensors file, or from a pickle holding tensors only (loaded with
    ``weights_only=True``: anything else in the pickle is refused, never run)."""
    if weights.is_dir():
        for candidate in ("model.safetensors", "pytorch_model.bin", "model.pth"):
            if (weights / candidate).is_file():
                return _load_state_dict(weights / candidate)
        raise UnknownModelError(f"weights folder {weights} has no model.safetensors, pytorch_model.bin or model.pth")
    if not weights.is_file():
        raise UnknownModelError(f"weights file {weights} does not exist")
    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnknownModelError(f"weights file {weights} is not a readable safetensors file ({first})") from exc
    import pickle

    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError) as exc:
        raise UnknownModelError(refused_pickle(weights)) from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnknownModelError(f"weights file {weights} does not hold a state dict (a mapping of names to tensors)")
    return state


def refused_pickle(path: Path) -> str:
    """The one-line refusal of a pickle weights file that is not a plain tensor state dict."""
    return (f"weights file {path} was refused: it is not a plain tensor state dict that loads safely "
            "(a pickle holding other objects, or not a PyTorch file at all); fq-export never runs pickled code. "
            "Convert the weights to .safetensors")


def load_timm(alias: str, timm_name: str, weights: str | None, random_weights: bool) -> ModelAdapter:
    import timm

    source = {"model": alias, "timm_name": timm_name}
    if weights is not None:
        model = timm.create_model(timm_name, pretrained=False)
        state = _load_state_dict(Path(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            raise UnknownModelError(f"weights {weights} do not fit {timm_name}: missing {missing[:5]}...")
        source["weights"] = str(Path(weights).resolve())
    elif random_weights:
        with torch.random.fork_rng(devices=[]):  # seeded, leaving the caller's RNG untouched
            torch.manual_seed(0)
            model = timm.create_model(timm_name, pretrained=False)
        source["random_weights"] = True
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:  # the local timm / Hugging Face cache, or the hub where it is reachable
            model = timm.create_model(timm_name, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - any failure means: no weights here
            raise UnknownModelError(
                f"no pretrained weights for {alias} ({timm_name}) are reachable (no hub, nothing in the local cache). "
                "Pass --weights FILE_OR_FOLDER (a timm state dict .safetensors/.pth, or a Hugging Face timm folder), "
                "or --random-weights to test plumbing and export numerics only"
            ) from exc
    model.eval()
    if hasattr(model, "blocks"):
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        chained = True
    elif hasattr(model, "layers"):  # Swin: stages of blocks, downsampling between stages
        blocks = [(f"layers.{i}.blocks.{j}", b) for i, stage in enumerate(model.layers)
                  for j, b in enumerate(stage.blocks)]
        chained = False
    else:
        raise UnknownModelError(f"{timm_name}: not a ViT/DeiT/Swin layout (no .blocks or .layers)")
    data_config = timm.data.resolve_data_config({}, model=model)
    return ModelAdapter(alias, "vit", model, blocks, source, chained=chained,
                        extra={"data_config": data_config})


def preprocess(adapter: ModelAdapter):
    """The model's own timm evaluation transform (resize, crop, normalize)."""
    import timm

    return timm.data.create_transform(**adapter.extra["data_config"], is_training=False)
