"""Evaluation of full-precision and quantized models on real data (the ``eval`` command's library)."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch

from calib import metrics
from fq_export.models.base import ModelAdapter
from fq_export.models.text import sentence_batches, token_windows

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(adapter: ModelAdapter, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    outs = [adapter.forward({k: v.to(adapter.device) for k, v in b.items()}).float().cpu()
            for b in sentence_batches(adapter, sentences, batch_size)]
    return torch.cat(outs)


def read_pairs(path: str | Path) -> tuple[list[str], list[str], list[float]]:
    """A TSV with header ``sentence1<TAB>sentence2<TAB>score``; scores finite and not all equal."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"sentence-pair file {path} is a folder, not a TSV file")
    if not path.is_file():
        raise FileNotFoundError(f"sentence-pair file {path} does not exist")
    if b"\x00" in path.read_bytes():
        raise ValueError(f"sentence-pair file {path} is not a text file (it holds NUL bytes: binary data?)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            need = {"sentence1", "sentence2", "score"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise ValueError(f"{path}: the header must name sentence1, sentence2 and score (tab-separated), "
                                 f"got {reader.fieldnames}")
            first, second, scores = [], [], []
            for row in reader:
                line = reader.line_num
                try:
                    score = float(row["score"])
                except (TypeError, ValueError):
                    raise ValueError(f"{path}:{line}: score {row.get('score')!r} is not a number") from None
                if not math.isfinite(score):
                    raise ValueError(f"{path}:{line}: score {row.get('score')!r} is not a finite number")
                if not row.get("sentence1") or not row.get("sentence2"):
                    raise ValueError(f"{path}:{line}: a sentence is missing (three tab-separated fields per line)")
                first.append(row["sentence1"])
                second.append(row["sentence2"])
                scores.append(score)
    except UnicodeDecodeError as exc:
        raise ValueError(f"sentence-pair file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if len(scores) < 2:
        raise ValueError(f"{path}: at least two sentence pairs are needed for a rank correlation, got {len(scores)}")
    if len(set(scores)) == 1:
        raise ValueError(f"{path}: all {len(scores)} scores are equal ({scores[0]:g}): the Spearman rank correlation "
                         "is undefined")
    return first, second, scores


def pairs_spearman(adapter: ModelAdapter, pairs) -> float:
    """Spearman correlation of the pairs' scores with the embeddings' cosines. ``pairs``: a path,
    or ``read_pairs``'s result."""
    first, second, scores = read_pairs(pairs) if isinstance(pairs, (str, Path)) else pairs
    cos = metrics.cosine_rows(embed(adapter, first), embed(adapter, second))
    return metrics.spearman(cos.numpy(), scores)


@torch.no_grad()
def perplexity(adapter: ModelAdapter, text: str, window: int | None = None, max_windows: int | None = None) -> dict:
    """Perplexity over non-overlapping windows of the model's context (2048 tokens at most)."""
    window = window or adapter.max_length
    windows = token_windows(adapter, text, window, max_windows)
    nll, tokens = 0.0, 0
    for batch in windows:
        ids = batch["input_ids"].to(adapter.device)
        logits = adapter.forward({"input_ids": ids}).float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        nll += float(loss)
        tokens += ids.shape[1] - 1
    return {"perplexity": metrics.perplexity(nll, tokens), "windows": len(windows), "window": window,
            "tokens": tokens}


def class_index(adapter: ModelAdapter, label: str | None) -> int | None:
    if label is None:
        return None
    if label.isdigit():
        return int(label)
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    try:
        return info.label_names().index(label)
    except ValueError:
        return None


@torch.no_grad()
def top1(adapter: ModelAdapter, folder: str | Path, limit: int | None = None) -> dict:
    from calib.images import folder_batches
    from fq_export.models.vision import preprocess

    batches, labels = folder_batches(folder, preprocess(adapter), limit)
    targets = [class_index(adapter, label) for label in labels]
    if any(t is None for t in targets):
        raise ValueError(f"{folder}: every image needs a class: a folder named by class index or WordNet id, "
                         "or a WordNet id (n01440764 ...) in the file name")
    preds = torch.cat([adapter.forward({"pixel_values": b["pixel_values"].to(adapter.device)}).argmax(-1).cpu()
                       for b in batches])
    correct = (preds == torch.tensor(targets)).float()
    return {"top1": float(correct.mean()), "images": len(targets)}
