"""One side of a quantized layer: ``P = R T`` (rotation, then frame), or a part of it.

``P`` is ``dim x size`` with ``P P^T = I``. Either factor may be absent (identity): weight-space
methods use neither, QuIP-style methods only ``R``, FrameQuant both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .frames import FrameSpec, TightFusionFrame, choose_frame, get_frame
from .rotations import HadamardRotation, RotationSpec, get_rotation


@dataclass(frozen=True)
class SideRecipe:
    """What rebuilds ``P`` exactly: the rotation and frame recipes (each optional)."""

    dim: int
    rotation: RotationSpec | None = None
    frame: FrameSpec | None = None

    @property
    def size(self) -> int:
        return self.frame.num_vectors if self.frame else self.dim

    @property
    def redundancy(self) -> float:
        return self.size / self.dim

    def to_dict(self) -> dict:
        return {
            "dim": self.dim,
            "rotation": self.rotation.to_dict() if self.rotation else None,
            "frame": self.frame.to_dict() if self.frame else None,
        }

    @staticmethod
    def from_dict(data: dict) -> "SideRecipe":
        recipe = SideRecipe(
            int(data["dim"]),
            RotationSpec.from_dict(data["rotation"]) if data.get("rotation") else None,
            FrameSpec.from_dict(data["frame"]) if data.get("frame") else None,
        )
        for part in (recipe.rotation, recipe.frame):
            part_dim = getattr(part, "dim", getattr(part, "d", recipe.dim)) if part else recipe.dim
            if part_dim != recipe.dim:
                raise ValueError(f"side recipe of dimension {recipe.dim} holds a part of dimension {part_dim}")
        return recipe

    @staticmethod
    def make(dim: int, rotate: bool, redundancy: float | None, seed: int) -> "SideRecipe":
        return SideRecipe(
            dim,
            RotationSpec(dim, seed) if rotate else None,
            choose_frame(dim, redundancy) if redundancy is not None else None,
        )


class SideBasis:
    """Applies ``P^T`` (steps 1-2 on the input side) and ``P`` (steps 4-5 on the output side)."""

    def __init__(self, recipe: SideRecipe):
        self.recipe = recipe
        self.rotation: HadamardRotation | None = (
            get_rotation(recipe.rotation.dim, recipe.rotation.seed) if recipe.rotation else None
        )
        self.frame: TightFusionFrame | None = get_frame(*_frame_key(recipe.frame)) if recipe.frame else None

    @property
    def dim(self) -> int:
        return self.recipe.dim

    @property
    def size(self) -> int:
        return self.recipe.size

    def to_frame(self, x: torch.Tensor) -> torch.Tensor:
        """``P^T x = T^T R^T x``: ``(..., dim) -> (..., size)``."""
        if self.rotation is not None:
            x = self.rotation.transpose(x)
        if self.frame is not None:
            x = self.frame.analysis(x)
        return x

    def from_frame(self, z: torch.Tensor) -> torch.Tensor:
        """``P z = R T z``: ``(..., size) -> (..., dim)``."""
        if self.frame is not None:
            z = self.frame.synthesis(z)
        if self.rotation is not None:
            z = self.rotation.forward(z)
        return z

    def dense_tensor(self, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense ``P`` (``dim x size``) as a tensor built on ``device`` in ``dtype``: the frame's
        cached table moved there, the rotation applied there (on a GPU, milliseconds). ``dense`` stays
        the float64 numpy build that tests hold it against."""
        if self.frame is not None:
            t = torch.as_tensor(self.frame.dense_cached(), device=device).to(dtype)
        else:
            t = torch.eye(self.dim, device=device, dtype=dtype)
        if self.rotation is not None:
            t = self.rotation.forward(t.T.contiguous()).T
        return t

    def dense(self) -> np.ndarray:
        """Dense ``P`` (``dim x size``, float64)."""
        t = self.frame.dense_cached() if self.frame is not None else np.eye(self.dim)
        if self.rotation is not None:
            # R T column by column with the fast transform: (R T)^T = rotate rows of T^T.
            t = self.rotation.forward(torch.from_numpy(np.ascontiguousarray(t.T))).numpy().T
        return t


def _frame_key(spec: FrameSpec) -> tuple[int, int, int]:
    return spec.k, spec.rho, spec.d
