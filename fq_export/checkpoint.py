"""Checkpoints: safetensors tensors plus JSON metadata, never pickle.

A checkpoint holds, per quantized layer ``<name>``: ``<name>.packed_codes`` (int32),
``<name>.scale`` and ``<name>.zero`` (fp16), ``<name>.bias`` (fp32, if any); the metadata key
``fq_export`` holds JSON with the format version, each layer's recipe (``FrameQuantLinear.metadata``)
and whatever the caller adds (model identity, config, report). Frames and rotations are rebuilt
from the recipes on load, bit-exactly.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .basis import SideRecipe
from .layer import FrameQuantLinear

FORMAT = "fq-export-checkpoint"
FORMAT_VERSION = 1
_TENSORS = ("packed_codes", "scale", "zero")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not match what is asked of it."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so no half-written file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, layers: dict[str, FrameQuantLinear], extra: dict | None = None) -> None:
    tensors, layer_meta = {}, {}
    for name, layer in layers.items():
        tensors[f"{name}.packed_codes"] = layer.packed_codes.detach().cpu().contiguous()
        tensors[f"{name}.scale"] = layer.scale.detach().cpu().contiguous()
        tensors[f"{name}.zero"] = layer.zero.detach().cpu().contiguous()
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.detach().cpu().contiguous()
        layer_meta[name] = layer.metadata()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "layers": layer_meta, **(extra or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"fq_export": json.dumps(meta, sort_keys=True)}))


def read_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("fq_export")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not an fq-export checkpoint (no 'fq_export' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the fq-export metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} "
                              f"version {meta.get('format_version')!r} (this reads version {FORMAT_VERSION})")
    return meta


def load_checkpoint(path: str | os.PathLike, device="cpu") -> tuple[dict[str, FrameQuantLinear], dict]:
    """Rebuild every quantized layer of a checkpoint; returns (layers by name, metadata)."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: tensors could not be read ({exc})") from exc
    layers = {}
    for name, info in meta["layers"].items():
        missing = [t for t in _TENSORS if f"{name}.{t}" not in tensors]
        if info.get("has_bias") and f"{name}.bias" not in tensors:
            missing.append("bias")
        if missing:
            raise CheckpointError(f"{path}: layer {name} lacks tensors {missing}")
        try:
            layer = FrameQuantLinear(
                SideRecipe.from_dict(info["in"]), SideRecipe.from_dict(info["out"]), int(info["bits"]),
                tensors[f"{name}.packed_codes"], tensors[f"{name}.scale"], tensors[f"{name}.zero"],
                tensors.get(f"{name}.bias"), method=info.get("method", "framequant"),
                layout_version=int(info["layout_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: layer {name} does not match its recipe: {exc}") from exc
        layers[name] = layer.to(device)
    return layers, meta
