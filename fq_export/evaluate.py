"""Evaluation of full-precision and quantized models on real data."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from calib import metrics
from .models.base import ModelAdapter
from .models.text import sentence_batches, token_windows

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(adapter: ModelAdapter, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    outs = [adapter.forward({k: v.to(adapter.device) for k, v in b.items()}).float().cpu()
            for b in sentence_batches(adapter, sentences, batch_size)]
    return torch.cat(outs)


def read_pairs(path: str | Path) -> tuple[list[str], list[str], list[float]]:
    """A TSV with header ``sentence1<TAB>sentence2<TAB>score``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentence-pair file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        need = {"sentence1", "sentence2", "score"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: the header must name sentence1, sentence2 and score (tab-separated), "
                             f"got {reader.fieldnames}")
        first, second, scores = [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                scores.append(float(row["score"]))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: score {row.get('score')!r} is not a number") from exc
            first.append(row["sentence1"])
            second.append(row["sentence2"])
    if len(scores) < 2:
        raise ValueError(f"{path}: at least two sentence pairs are needed for a rank correlation")
    return first, second, scores


def pairs_spearman(adapter: ModelAdapter, path: str | Path) -> float:
    first, second, scores = read_pairs(path)
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
    from .models.vision import preprocess

    batches, labels = folder_batches(folder, preprocess(adapter), limit)
    targets = [class_index(adapter, label) for label in labels]
    if any(t is None for t in targets):
        raise ValueError(f"{folder}: every image needs a class: a folder named by class index or WordNet id, "
                         "or a WordNet id (n01440764 ...) in the file name")
    preds = torch.cat([adapter.forward({"pixel_values": b["pixel_values"].to(adapter.device)}).argmax(-1).cpu()
                       for b in batches])
    correct = (preds == torch.tensor(targets)).float()
    return {"top1": float(correct.mean()), "images": len(targets)}
