"""Resolve a ``--calib`` source into model-ready batches, for each model family.

* text encoders: sentences (default: :data:`DEFAULT_CALIBRATION`, its calibration part);
* causal LMs: non-overlapping token windows of a running text (same default);
  ``corpus:NAME[+NAME]`` names packaged corpora (:mod:`calib.corpora`), else a file or folder;
* vision: images of a folder (offline default: seeded crops of three real photographs).
A source may also be ``hf:NAME[:SPLIT[:FIELD]]`` (Hugging Face ``datasets``, where reachable).
Selection is seeded; the evaluation splits never share a document with the calibration split.

This package sits on the method core: it reads data and turns it into batches with the model
adapters of :mod:`fq_export.models` (imported where a family needs them, so reading text never
loads the vision stack); the core never imports it (``tests/test_layering.py``).
"""
from __future__ import annotations

import random
from pathlib import Path

from . import corpora
from . import text as text_data

DEFAULT_LM_WINDOW = 512
#: the text calibration source when none is given (chosen by out-of-domain quality: README, "Quality")
DEFAULT_CALIBRATION = "corpus:flatland+docstrings"


def _hf_texts(source: str) -> list[str]:
    parts = source[3:].split(":")
    name, split, field = parts[0], (parts[1] if len(parts) > 1 else "train"), (parts[2] if len(parts) > 2 else "text")
    try:
        import datasets
    except ImportError as exc:
        raise RuntimeError(f"calibration source {source!r} needs the 'datasets' package (pip install datasets)") from exc
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline or unknown dataset
        raise RuntimeError(f"dataset {name!r} is not reachable here ({exc}); pass a local text file or folder") from exc
    return [row[field] for row in data if row.get(field)]


def _texts(source: str | None, split: str) -> tuple[list[str], str]:
    source = source or DEFAULT_CALIBRATION
    if source.startswith(corpora.PREFIX):
        return corpora.mix_sentences(source, split), f"{source}:{split}"
    if source.startswith("hf:"):
        return _hf_texts(source), source
    return text_data.text_sentences(source), str(Path(source).resolve())


def calibration_batches(adapter, source: str | None, count: int, seed: int = 0, split: str = "calib",
                        window: int | None = None) -> tuple[list[dict], str]:
    """``count`` calibration batches for ``adapter`` and a description of where they came from."""
    if count < 1:
        raise ValueError(f"the number of calibration samples must be positive, got {count}")
    rng = random.Random(seed)
    if adapter.family == "encoder":
        from fq_export.models.text import sentence_batches

        sentences, where = _texts(source, split)
        picked = rng.sample(sentences, min(count, len(sentences)))
        return sentence_batches(adapter, picked, batch_size=1), where
    if adapter.family == "causal_lm":
        from fq_export.models.text import token_windows

        source = source or DEFAULT_CALIBRATION
        if source.startswith(corpora.PREFIX):
            corpus, where = corpora.mix_text(source, split), f"{source}:{split}"
        elif source.startswith("hf:"):
            corpus, where = "\n\n".join(_hf_texts(source)), source
        else:
            corpus, where = text_data.read_text_source(source), str(Path(source).resolve())
        windows = token_windows(adapter, corpus, window or min(DEFAULT_LM_WINDOW, adapter.max_length))
        picked = sorted(rng.sample(range(len(windows)), min(count, len(windows))))
        return [windows[i] for i in picked], where
    from fq_export.models.vision import preprocess

    from . import images

    transform = preprocess(adapter)
    size = adapter.extra["data_config"]["input_size"][-1]
    if source is None:
        photos = images.default_photos()
        return (images.augmented_batches(photos, transform, count, seed, size=size),
                "offline photos (seeded crops): " + ", ".join(p.name for p in photos))
    items = images.list_images(source)
    picked = sorted(rng.sample(range(len(items)), min(count, len(items))))
    batches, _ = images.folder_batches_from([items[i][0] for i in picked], transform)
    return batches, str(Path(source).resolve())
