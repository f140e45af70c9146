"""Task metrics, written out so that they can be checked against numpy/scipy in tests."""
from __future__ import annotations

import math

import numpy as np
import torch


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks (1-based) with ties given their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_vals = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_vals[stop + 1] == sorted_vals[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""
    ra, rb = rankdata(np.asarray(a)), rankdata(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else float("nan")


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of corresponding rows."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def topk_neighbour_agreement(reference: torch.Tensor, candidate: torch.Tensor, k: int = 10) -> float:
    """Mean overlap of each item's top-k cosine neighbours (itself excluded) between two embeddings."""
    def neighbours(emb):
        emb = torch.nn.functional.normalize(emb.double(), dim=-1)
        sim = emb @ emb.T
        sim.fill_diagonal_(-math.inf)
        return sim.topk(k, dim=-1).indices

    ref, cand = neighbours(reference), neighbours(candidate)
    overlap = [len(set(r.tolist()) & set(c.tolist())) / k for r, c in zip(ref, cand)]
    return float(np.mean(overlap))


def perplexity(total_nll: float, total_tokens: int) -> float:
    return math.exp(total_nll / total_tokens)
