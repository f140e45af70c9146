"""Checkpoints: safetensors tensors plus JSON metadata, never pickle, integrity-checked on every load.

A checkpoint holds, per quantized layer ``<name>``: ``<name>.packed_codes`` (int32),
``<name>.scale`` and ``<name>.zero`` (fp16; one per row, or ``rows x groups`` with a group
size), ``<name>.bias`` (fp32, if any); the metadata key ``fq_export`` holds JSON with the format
version, each layer's recipe (``FrameQuantLinear.metadata``) and whatever the caller adds (model
identity, config, report). Frames and rotations are rebuilt from the recipes on load, bit-exactly.

Version 3 adds the full-precision parameters that fine-tuning changed (a causal LM's norm
weights): the metadata key ``params`` maps each parameter's qualified name to the SHA-256 of its
tensor, stored under that name (fp32); :func:`load_parameters` returns them and
:func:`fq_export.pipeline.apply_parameters` puts them in place.

Format version 2 adds content hashes, verified by :func:`read_metadata` (recipes) and
:func:`load_checkpoint` (tensors): per layer, ``sha256`` maps each tensor to the SHA-256 of its
dtype, shape and bytes, and ``recipe_sha256`` is the SHA-256 of the canonical JSON of the recipe
fields (in/out recipes, bits, method, layout version, group size, has_bias). A flipped byte, a
changed frame ``k``, a removed rotation or a changed seed is an error naming the layer. Scales,
zeros, biases and parameters must be finite. Version 2 files are read (they hold no parameters);
version 1 files (no hashes) are refused: re-quantize.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .basis import SideRecipe
from .files import atomic_write  # noqa: F401  (re-exported: older callers import it from here)
from .layer import FrameQuantLinear

FORMAT = "fq-export-checkpoint"
FORMAT_VERSION = 3
#: the versions this fq-export reads
READ_VERSIONS = (2, 3)
_TENSORS = ("packed_codes", "scale", "zero")
_DTYPES = {"packed_codes": torch.int32, "scale": torch.float16, "zero": torch.float16, "bias": torch.float32}
_WORDS = {"packed_codes": "codes", "scale": "scales", "zero": "zero points", "bias": "bias values"}
#: the recipe fields that ``recipe_sha256`` covers
RECIPE_FIELDS = ("in", "out", "bits", "method", "layout_version", "group_size", "has_bias")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not match what is asked of it."""


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (row-major, as stored)."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def recipe_sha256(info: dict) -> str:
    """SHA-256 of the canonical JSON of a layer's recipe fields (:data:`RECIPE_FIELDS`)."""
    fields = {k: info.get(k) for k in RECIPE_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _layer_tensors(layer: FrameQuantLinear) -> dict[str, torch.Tensor]:
    tensors = {"packed_codes": layer.packed_codes, "scale": layer.scale, "zero": layer.zero}
    if layer.bias is not None:
        tensors["bias"] = layer.bias
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_checkpoint(path: str | os.PathLike, layers: dict[str, FrameQuantLinear], extra: dict | None = None,
                    params: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``layers`` (quantized, by name), ``params`` (full-precision parameters that
    quantization changed, by qualified name) and the metadata ``extra`` to ``path`` atomically."""
    tensors, layer_meta, param_meta = {}, {}, {}
    for name, layer in layers.items():
        own = _layer_tensors(layer)
        for kind, tensor in own.items():
            if kind != "packed_codes" and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"layer {name}: its {kind} holds NaN or Inf; nothing was written to {path}")
            tensors[f"{name}.{kind}"] = tensor
        info = layer.metadata()
        info["recipe_sha256"] = recipe_sha256(info)
        info["sha256"] = {kind: tensor_sha256(tensor) for kind, tensor in own.items()}
        layer_meta[name] = info
    for name, value in (params or {}).items():
        tensor = value.detach().to(torch.float32).cpu().contiguous()
        if name in tensors or not name:
            raise CheckpointError(f"parameter name {name!r} is empty or clashes with a layer's tensor; "
                                  f"nothing was written to {path}")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"parameter {name} holds NaN or Inf; nothing was written to {path}")
        tensors[name] = tensor
        param_meta[name] = tensor_sha256(tensor)
    meta = {**(extra or {}), "format": FORMAT, "format_version": FORMAT_VERSION, "layers": layer_meta,
            "params": param_meta}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"fq_export": json.dumps(meta, sort_keys=True)}))


def _is_hex64(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_layer_meta(path: Path, name, info) -> None:
    """Types of one layer's metadata, then its recipe hash."""
    where = f"checkpoint {path}: layer {name}"
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"checkpoint {path}: layer names must be non-empty strings, got {name!r}")
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: its metadata must be a JSON object, got {type(info).__name__}")
    for side in ("in", "out"):
        if not isinstance(info.get(side), dict):
            raise CheckpointError(f"{where}: the {side!r} recipe must be a JSON object, got {info.get(side)!r:.60}")
    checks = {"bits": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "layout_version": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "method": lambda v: isinstance(v, str),
              "has_bias": lambda v: isinstance(v, bool),
              "group_size": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool))}
    for key, ok in checks.items():
        if key not in info or not ok(info[key]):
            raise CheckpointError(f"{where}: metadata field {key!r} is missing or of the wrong type "
                                  f"({info.get(key)!r:.60})")
    hashes = info.get("sha256")
    expected = set(_TENSORS) | ({"bias"} if info["has_bias"] else set())
    if not isinstance(hashes, dict) or set(hashes) != expected or not all(_is_hex64(v) for v in hashes.values()):
        raise CheckpointError(f"{where}: 'sha256' must map {sorted(expected)} to SHA-256 hex digests")
    if not _is_hex64(info.get("recipe_sha256")):
        raise CheckpointError(f"{where}: 'recipe_sha256' is missing or not a SHA-256 hex digest")
    if recipe_sha256(info) != info["recipe_sha256"]:
        raise CheckpointError(f"{where}: its recipe (frames, rotations, bits, method, layout) does not match its "
                              "recipe_sha256 (the file is corrupt or was modified)")


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata, its structure checked and every layer's recipe hash verified."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("fq_export")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not an fq-export checkpoint (no 'fq_export' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the fq-export metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the fq-export metadata must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT!r})")
    version = meta.get("format_version")
    if version == 1:
        raise CheckpointError(f"{path} is a format version 1 checkpoint (no content hashes), which this fq-export "
                              f"no longer reads: quantize the model again with `fq-export quantize`")
    if version not in READ_VERSIONS:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {version!r} "
                              f"(this fq-export reads versions {', '.join(map(str, READ_VERSIONS))})")
    layers = meta.get("layers")
    if not isinstance(layers, dict):
        raise CheckpointError(f"{path}: metadata 'layers' must be a JSON object mapping layer names to recipes, "
                              f"got {type(layers).__name__}")
    if not layers:
        raise CheckpointError(f"{path}: the checkpoint holds no quantized layers")
    for name, info in layers.items():
        _check_layer_meta(path, name, info)
    params = meta.setdefault("params", {})
    if version == 2 and params:
        raise CheckpointError(f"{path}: a format version 2 checkpoint cannot hold parameters ('params')")
    if not isinstance(params, dict) or not all(isinstance(k, str) and k and _is_hex64(v) for k, v in params.items()):
        raise CheckpointError(f"{path}: metadata 'params' must map parameter names to SHA-256 hex digests")
    for key in ("model", "config", "calibration"):
        if key in meta and not isinstance(meta[key], dict):
            raise CheckpointError(f"{path}: metadata {key!r} must be a JSON object, got {type(meta[key]).__name__}")
    return meta


def _check_tensors(path: Path, name: str, info: dict, tensors: dict[str, torch.Tensor]) -> None:
    where = f"checkpoint {path}: layer {name}"
    for kind, digest in info["sha256"].items():
        tensor = tensors[f"{name}.{kind}"]
        if tensor.dtype != _DTYPES[kind]:
            raise CheckpointError(f"{where}: {kind} is {tensor.dtype}, expected {_DTYPES[kind]}")
        if tensor_sha256(tensor) != digest:
            raise CheckpointError(f"{where}: its {_WORDS[kind]} ({name}.{kind}) do not match their sha256 "
                                  "(the file is corrupt or was modified)")
        if kind != "packed_codes" and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{where}: its {_WORDS[kind]} ({name}.{kind}) hold NaN or Inf")


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metadata and tensors; the parameters' tensors verified against their hashes."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: tensors could not be read ({exc})") from exc
    for name, digest in meta["params"].items():
        tensor = tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"checkpoint {path}: parameter {name} is listed but its tensor is missing")
        if tensor.dtype != torch.float32 or tensor_sha256(tensor) != digest:
            raise CheckpointError(f"checkpoint {path}: parameter {name} does not match its sha256 "
                                  "(the file is corrupt or was modified)")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint {path}: parameter {name} holds NaN or Inf")
    return meta, tensors


def load_parameters(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """The full-precision parameters a checkpoint carries (empty for most), hashes verified."""
    meta, tensors = _read(Path(path))
    return {name: tensors[name].to(device) for name in meta["params"]}


def load_checkpoint(path: str | os.PathLike, device="cpu") -> tuple[dict[str, FrameQuantLinear], dict]:
    """Rebuild every quantized layer of a checkpoint; returns (layers by name, metadata).

    Every recipe and tensor is verified against its hash; any mismatch is a ``CheckpointError``
    naming the layer. The parameters it carries: :func:`load_parameters`, or both in one read:
    :func:`load_with_parameters`.
    """
    layers, meta, _ = load_with_parameters(path, device)
    return layers, meta


def load_with_parameters(path: str | os.PathLike, device="cpu"
                         ) -> tuple[dict[str, FrameQuantLinear], dict, dict[str, torch.Tensor]]:
    """(layers by name, metadata, parameters by name) from one read of the file, all verified."""
    path = Path(path)
    meta, tensors = _read(path)
    known = set(meta["params"])
    layers = {}
    for name, info in meta["layers"].items():
        kinds = list(info["sha256"])
        known.update(f"{name}.{t}" for t in kinds)
        missing = [t for t in kinds if f"{name}.{t}" not in tensors]
        if missing:
            raise CheckpointError(f"checkpoint {path}: layer {name} lacks tensors {missing}")
        try:
            layer = FrameQuantLinear(
                SideRecipe.from_dict(info["in"]), SideRecipe.from_dict(info["out"]), int(info["bits"]),
                tensors[f"{name}.packed_codes"], tensors[f"{name}.scale"], tensors[f"{name}.zero"],
                tensors.get(f"{name}.bias"), method=info.get("method", "framequant"),
                layout_version=int(info["layout_version"]), group_size=info.get("group_size"),
            )
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path}: layer {name} does not match its recipe: {exc}") from exc
        _check_tensors(path, name, info, tensors)
        layers[name] = layer.to(device)
    extra = sorted(set(tensors) - known)
    if extra:
        raise CheckpointError(f"checkpoint {path}: tensors {extra[:5]} belong to no layer of its metadata "
                              "(the file is corrupt or was modified)")
    return layers, meta, {name: tensors[name].to(device) for name in meta["params"]}
