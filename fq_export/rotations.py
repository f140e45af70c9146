"""Seeded randomized Hadamard rotations, exactly orthogonal, applied in O(d log d).

For ``d = 2**p * m`` with ``m`` odd the rotation is

    R = (H_{2**p} kron C_m) diag(s)

* ``s`` are random signs from a splitmix64 stream seeded by ``seed`` (no dependence on torch's
  or numpy's global RNG, nor on their stream versions: the same seed gives the same signs on
  any machine and device);
* ``H_{2**p}`` is the normalized Sylvester Walsh-Hadamard matrix (symmetric, orthogonal);
* ``C_m`` is the orthonormal DCT-II matrix of size ``m`` (``C_1 = [1]``), which spreads the
  odd factor of dimensions such as 768 = 256 * 3 or 11008 = 256 * 43 over the whole vector,
  unlike a block Hadamard, and is orthogonal by construction.

Index convention: ``x`` of length ``d`` is read as a ``(2**p, m)`` row-major matrix ``X``;
``R x = vec(H (S X) C^T)`` with ``S X`` the sign-flipped input. ``R^T y = s * vec(H Y C)``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def splitmix64(seed: int, count: int) -> np.ndarray:
    """``count`` uint64 outputs of the splitmix64 generator started at ``seed``."""
    state = np.uint64(seed & _MASK64)
    golden = np.uint64(0x9E3779B97F4A7C15)
    steps = (np.arange(1, count + 1, dtype=np.uint64) * golden) + state
    z = steps
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def random_signs(seed: int, d: int) -> np.ndarray:
    """+-1 float64 signs from the top bit of the splitmix64 stream."""
    bits = (splitmix64(seed, d) >> np.uint64(63)).astype(np.float64)
    return 1.0 - 2.0 * bits


def split_dimension(d: int) -> tuple[int, int]:
    """``d = 2**p * m`` with m odd; returns (2**p, m)."""
    if d < 1:
        raise ValueError(f"rotation dimension must be positive, got {d}")
    power = d & -d
    return power, d // power


@functools.lru_cache(maxsize=64)
def dct_matrix(m: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (m x m), float64: C C^T = I."""
    n = np.arange(m)
    # Angles reduced exactly in integers before the cosine, for reproducibility.
    arg = ((2 * n[None, :] + 1) * n[:, None]) % (4 * m)
    c = np.cos(np.pi * arg / (2 * m)) * math.sqrt(2.0 / m)
    c[0, :] = math.sqrt(1.0 / m)
    return c


def hadamard_matrix(n: int) -> np.ndarray:
    """Normalized Sylvester Hadamard matrix of order n (a power of two), float64."""
    if n & (n - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {n}")
    i = np.arange(n)
    parity = np.zeros((n, n), dtype=np.int64)
    anded = i[:, None] & i[None, :]
    while anded.any():
        parity ^= anded & 1
        anded = anded >> 1
    return (1 - 2 * parity).astype(np.float64) / math.sqrt(n)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Normalized Walsh-Hadamard transform along the second-to-last axis of ``(..., n, m)``.

    Dense equivalent: ``hadamard_matrix(n) @ x``. O(n log n) butterflies.
    """
    n, m = x.shape[-2], x.shape[-1]
    lead = x.shape[:-2]
    y = x.reshape(-1, n, m)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h, m)
        a, b = y[:, :, 0], y[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return (y.reshape(*lead, n, m)) * (1.0 / math.sqrt(n))


@dataclass(frozen=True)
class RotationSpec:
    """Recipe of a randomized Hadamard rotation: dimension and seed."""

    dim: int
    seed: int

    def to_dict(self) -> dict:
        return {"dim": self.dim, "seed": self.seed}

    @staticmethod
    def from_dict(data: dict) -> "RotationSpec":
        return RotationSpec(int(data["dim"]), int(data["seed"]))


class HadamardRotation:
    """``R = (H kron C) diag(s)`` of size ``dim``; see the module docstring."""

    def __init__(self, spec: RotationSpec):
        self.spec = spec
        self.dim = spec.dim
        self.power, self.odd = split_dimension(spec.dim)
        self.signs = random_signs(spec.seed, spec.dim)
        self.dct = dct_matrix(self.odd)
        self._cache: dict = {}

    def _tensors(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = (
                torch.as_tensor(self.signs, dtype=dtype, device=device),
                torch.as_tensor(self.dct, dtype=dtype, device=device),
            )
        return self._cache[key]

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"rotation of size {self.dim} got an input whose last axis is {x.shape[-1]}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``R x`` on the last axis: ``(..., d) -> (..., d)``."""
        self._check(x)
        signs, dct = self._tensors(x.device, x.dtype)
        y = (x * signs).reshape(*x.shape[:-1], self.power, self.odd)
        y = fwht(y)
        if self.odd > 1:
            y = y @ dct.T
        return y.reshape(x.shape)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """``R^T y`` on the last axis: ``(..., d) -> (..., d)``."""
        self._check(y)
        signs, dct = self._tensors(y.device, y.dtype)
        x = y.reshape(*y.shape[:-1], self.power, self.odd)
        if self.odd > 1:
            x = x @ dct
        x = fwht(x)
        return x.reshape(y.shape) * signs

    def dense(self) -> np.ndarray:
        """The dense ``d x d`` matrix R (float64), for tests and debugging."""
        return np.kron(hadamard_matrix(self.power), self.dct) * self.signs[None, :]


@functools.lru_cache(maxsize=256)
def get_rotation(dim: int, seed: int) -> HadamardRotation:
    return HadamardRotation(RotationSpec(dim, seed))
