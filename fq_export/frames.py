"""Real tight fusion frames (TFFs), built deterministically from ``(k, rho, d)``.

Construction (Casazza, Fickus, Mixon, Wang, Zhou 2011, "Constructing tight fusion frames"):

1. Spectral tetris builds ``F`` (``rho_c x d_c``, real, sparse): ``d_c`` unit-norm columns
   ``f_j`` in ``C^rho_c`` whose rows are orthogonal with squared norm ``lam = d_c / rho_c``
   (needs ``lam >= 2``). Each row ``i`` is supported on a run of consecutive columns ``S_i``;
   neighbouring runs share the two columns of a "tetris" 2x2 piece.
2. Modulation by the k-th roots of unity ``w = exp(2 pi i / k)``: subspace ``l`` has the
   orthonormal basis ``diag(w^{l j}) F^T sqrt(rho_c / d_c)``. The ``k`` subspaces form a tight
   fusion frame when ``f_j`` and ``f_j'`` are orthogonal whenever ``j != j'`` and
   ``j = j' (mod k)``; for spectral tetris that holds iff every run ``S_i`` spans at most
   ``k`` columns (the existence test, ``tff_exists``).
3. The complex synthesis operator, scaled to be Parseval (``T T^* = I``), is
   ``T_c[j, i*k + l] = F[i, j] w^{l j} / sqrt(k)``; its columns are ordered by row ``i`` of
   ``F`` then by ``l``, which makes ``T_c`` block-banded: block ``i`` has rows ``S_i`` and
   columns ``[i*k, (i+1)*k)``.
4. The real TFF maps each entry ``x + iy`` to ``[[x, -y], [y, x]]``: real dimension
   ``d = 2 d_c``, subspace dimension ``rho = 2 rho_c``, ``K = k rho`` frame vectors,
   redundancy ``r = K / d``. Real coordinate ``2j`` / ``2j+1`` is the real / imaginary part of
   complex coordinate ``j``; the same holds for frame coefficients.

Fast application (no dense matrix). Because ``w^{l j}`` depends on ``j mod k`` only and each
run spans at most ``k`` columns, frame analysis ``c = T^T u`` is: gather ``u_c[j]`` of run
``i`` into bin ``(i, j mod k)`` weighted by ``F[i, j]``, then a unitary length-k DFT per run.
Synthesis ``v = T z`` is the inverse DFT per run, then each ``v_c[j]`` gathers from the (one or
two) runs containing ``j``. The same tables drive the ONNX subgraph and the CUDA kernels.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_TARGET_BLOCK = 32  # preferred k (complex block width) when several triples tie
DEFAULT_MAX_BLOCK = 64  # largest k tried before falling back to any divisor
MAX_REDUNDANCY = 4.0


@dataclass(frozen=True)
class FrameSpec:
    """Recipe of a real TFF: ``k`` subspaces of dimension ``rho`` in ``R^d``."""

    k: int
    rho: int
    d: int

    @property
    def num_vectors(self) -> int:
        return self.k * self.rho

    @property
    def redundancy(self) -> float:
        return self.k * self.rho / self.d

    def to_dict(self) -> dict:
        return {"k": self.k, "rho": self.rho, "d": self.d}

    @staticmethod
    def from_dict(data: dict) -> "FrameSpec":
        return FrameSpec(int(data["k"]), int(data["rho"]), int(data["d"]))


def spectral_tetris(rows: int, cols: int) -> list[list[tuple[int, float]]]:
    """Spectral tetris frame ``F`` (rows x cols) as, per column, a list of (row, value).

    Columns are unit vectors; rows are orthogonal with squared norm ``cols / rows``.
    Needs ``cols >= 2 * rows``. Bookkeeping is exact (integers); only values are floats.
    """
    if cols < 2 * rows:
        raise ValueError(f"spectral tetris needs cols >= 2 * rows, got {cols} x {rows}")
    # Row weights are counted in units of 1/rows: lam = cols / rows is `cols` units, 1 is `rows`.
    lam, one = cols, rows
    columns: list[list[tuple[int, float]]] = []
    row, left = 0, lam
    while len(columns) < cols:
        if left >= one:
            columns.append([(row, 1.0)])
            left -= one
            if left == 0:
                row, left = row + 1, lam
        else:
            # 2x2 piece over rows (row, row+1): columns (a, b) and (a, -b).
            a = math.sqrt(left / (2.0 * one))
            b = math.sqrt(1.0 - left / (2.0 * one))
            columns.append([(row, a), (row + 1, b)])
            columns.append([(row, a), (row + 1, -b)])
            row, left = row + 1, lam - (2 * one - left)
    return columns


def _runs(rows: int, cols: int) -> list[tuple[int, int]] | None:
    """Column run [start, stop) of each row of spectral tetris, computed without values."""
    if cols < 2 * rows:
        return None
    lam, one = cols, rows  # units of 1/rows, as in spectral_tetris
    starts = [None] * rows
    stops = [0] * rows
    row, left, col = 0, lam, 0
    while col < cols:
        if left >= one:
            # A run of unit vectors: jump over all of them at once.
            count = left // one
            starts[row] = col if starts[row] is None else starts[row]
            stops[row] = col + count
            left -= count * one
            col += count
            if left == 0:
                row, left = row + 1, lam
        else:
            starts[row] = col if starts[row] is None else starts[row]
            stops[row] = col + 2
            starts[row + 1] = col
            stops[row + 1] = col + 2
            row, left, col = row + 1, lam - (2 * one - left), col + 2
    return list(zip(starts, stops))


def tff_exists(k: int, rho: int, d: int) -> bool:
    """Existence test for the real ``(k, rho, d)`` TFF of this construction."""
    if k < 1 or rho < 2 or d < 2 or rho % 2 or d % 2:
        return False
    rho_c, d_c = rho // 2, d // 2
    if k * rho_c < d_c:
        return False
    runs = _runs(rho_c, d_c)
    if runs is None:
        return False
    return all(stop - start <= k for start, stop in runs)


@functools.lru_cache(maxsize=256)
def choose_frame(
    d: int,
    redundancy: float,
    target_block: int = DEFAULT_TARGET_BLOCK,
    max_block: int = DEFAULT_MAX_BLOCK,
) -> FrameSpec:
    """The valid ``(k, rho, d)`` with the largest redundancy at or below ``redundancy``.

    Ties are broken by the block width ``k`` closest to ``target_block``. Raises ``ValueError``
    for impossible requests (odd ``d``, ``redundancy < 1`` or above ``MAX_REDUNDANCY``).
    """
    if d < 2 or d % 2:
        raise ValueError(f"a real tight fusion frame needs an even dimension, got d={d}")
    if not (1.0 <= redundancy <= MAX_REDUNDANCY):
        raise ValueError(f"redundancy must lie in [1, {MAX_REDUNDANCY}], got {redundancy}")
    d_c = d // 2
    budget = int(math.floor(redundancy * d_c + 1e-9))  # largest allowed k * rho_c
    best = None
    for limit in (max_block, d_c):
        for k in range(2, min(limit, budget) + 1):
            rho_c = budget // k
            if rho_c < 1 or k * rho_c < d_c or 2 * rho_c > d_c:
                continue
            if not tff_exists(k, 2 * rho_c, d):
                continue
            key = (k * rho_c, -abs(k - target_block), -k)
            if best is None or key > best[0]:
                best = (key, FrameSpec(k, 2 * rho_c, d))
        if best is not None:
            break
    if best is None:
        raise ValueError(f"no tight fusion frame of redundancy in [1, {redundancy}] exists for d={d}")
    spec = best[1]
    if spec.redundancy < redundancy - 1e-9:
        log.info("d=%d: redundancy %.4f requested, %.4f used (k=%d, rho=%d)",
                 d, redundancy, spec.redundancy, spec.k, spec.rho)
    return spec


@dataclass(frozen=True)
class FrameBlock:
    """One block of the banded real synthesis operator: ``T[rows, cols]`` is dense."""

    row_start: int
    row_stop: int
    col_start: int
    col_stop: int


class TightFusionFrame:
    """The real TFF of a ``FrameSpec`` with fast, matrix-free analysis and synthesis."""

    def __init__(self, spec: FrameSpec):
        if not tff_exists(spec.k, spec.rho, spec.d):
            raise ValueError(f"no tight fusion frame exists for (k, rho, d) = {(spec.k, spec.rho, spec.d)}")
        self.spec = spec
        k, rho_c, d_c = spec.k, spec.rho // 2, spec.d // 2
        self.k, self.rho_c, self.d_c = k, rho_c, d_c
        columns = spectral_tetris(rho_c, d_c)
        runs = _runs(rho_c, d_c)
        self.runs = runs
        # Analysis tables: bin (i, t) <- complex coordinate gather_index with weight gather_weight.
        gather_index = np.zeros(rho_c * k, dtype=np.int64)
        gather_weight = np.zeros(rho_c * k, dtype=np.float64)
        # Synthesis tables: v_c[j] = sum_s weight[s, j] * w_c[bin[s, j]], s in {0, 1}.
        synth_bin = np.zeros((2, d_c), dtype=np.int64)
        synth_weight = np.zeros((2, d_c), dtype=np.float64)
        for j, entries in enumerate(columns):
            for s, (i, value) in enumerate(entries):
                b = i * k + j % k
                gather_index[b] = j
                gather_weight[b] = value
                synth_bin[s, j] = b
                synth_weight[s, j] = value
        self.gather_index, self.gather_weight = gather_index, gather_weight
        self.synth_bin, self.synth_weight = synth_bin, synth_weight
        self.dft = self._realified_dft(k)
        self.blocks = [
            FrameBlock(2 * start, 2 * stop, 2 * i * k, 2 * (i + 1) * k) for i, (start, stop) in enumerate(runs)
        ]
        self._cache: dict = {}

    @staticmethod
    def _realified_dft(k: int) -> np.ndarray:
        """Real ``2k x 2k`` matrix of the unitary DFT ``Y[l] = sum_t w^{-l t} y[t] / sqrt(k)``.

        Acts on interleaved (re, im) vectors: ``Y_real = M @ y_real``.
        """
        lt = (np.arange(k)[:, None] * np.arange(k)[None, :]) % k
        angle = -2.0 * np.pi * lt / k
        re, im = np.cos(angle) / math.sqrt(k), np.sin(angle) / math.sqrt(k)
        m = np.zeros((2 * k, 2 * k))
        m[0::2, 0::2], m[0::2, 1::2] = re, -im
        m[1::2, 0::2], m[1::2, 1::2] = im, re
        return m

    @property
    def d(self) -> int:
        return self.spec.d

    @property
    def num_vectors(self) -> int:
        return self.spec.num_vectors

    def dense(self) -> np.ndarray:
        """Dense real synthesis operator ``T`` (``d x K``, float64), for tests and GPTQ."""
        k = self.k
        t_c = np.zeros((self.d_c, self.rho_c * k), dtype=np.complex128)
        for s in range(2):
            for j in range(self.d_c):
                weight = self.synth_weight[s, j]
                if weight == 0.0:
                    continue
                i = self.synth_bin[s, j] // k
                phase = np.exp(2j * np.pi * ((np.arange(k) * j) % k) / k)
                t_c[j, i * k:(i + 1) * k] += weight * phase / math.sqrt(k)
        t = np.zeros((self.d, self.num_vectors))
        t[0::2, 0::2], t[0::2, 1::2] = t_c.real, -t_c.imag
        t[1::2, 0::2], t[1::2, 1::2] = t_c.imag, t_c.real
        return t

    def block_values(self, block: int) -> np.ndarray:
        """Dense values of block ``block`` of ``T`` (float64)."""
        b = self.blocks[block]
        return self.dense_cached()[b.row_start:b.row_stop, b.col_start:b.col_stop]

    def dense_cached(self) -> np.ndarray:
        if "dense" not in self._cache:
            self._cache["dense"] = self.dense()
        return self._cache["dense"]

    def _tensors(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._cache:
            as_t = functools.partial(torch.as_tensor, device=device)
            self._cache[key] = (
                as_t(self.gather_index),
                as_t(self.gather_weight, dtype=dtype).unsqueeze(-1),
                as_t(self.dft, dtype=dtype),
                as_t(self.synth_bin),
                as_t(self.synth_weight, dtype=dtype).unsqueeze(-1),
            )
        return self._cache[key]

    def analysis(self, u: torch.Tensor) -> torch.Tensor:
        """Frame analysis ``c = T^T u`` on the last axis: ``(..., d) -> (..., K)``."""
        if u.shape[-1] != self.d:
            raise ValueError(f"frame analysis of dimension {self.d} got last axis {u.shape[-1]}")
        index, weight, dft, _, _ = self._tensors(u.device, u.dtype)
        pairs = u.reshape(*u.shape[:-1], self.d_c, 2)
        binned = pairs.index_select(-2, index) * weight  # (..., rho_c * k, 2)
        binned = binned.reshape(*u.shape[:-1], self.rho_c, 2 * self.k)
        return (binned @ dft.T).reshape(*u.shape[:-1], self.num_vectors)

    def synthesis(self, z: torch.Tensor) -> torch.Tensor:
        """Frame synthesis ``v = T z`` on the last axis: ``(..., K) -> (..., d)``."""
        if z.shape[-1] != self.num_vectors:
            raise ValueError(f"frame synthesis of {self.num_vectors} vectors got last axis {z.shape[-1]}")
        _, _, dft, bins, weight = self._tensors(z.device, z.dtype)
        runs = z.reshape(*z.shape[:-1], self.rho_c, 2 * self.k) @ dft  # inverse DFT = M^T
        runs = runs.reshape(*z.shape[:-1], self.rho_c * self.k, 2)
        v = runs.index_select(-2, bins[0]) * weight[0] + runs.index_select(-2, bins[1]) * weight[1]
        return v.reshape(*z.shape[:-1], self.d)


@functools.lru_cache(maxsize=128)
def get_frame(k: int, rho: int, d: int) -> TightFusionFrame:
    return TightFusionFrame(FrameSpec(k, rho, d))
