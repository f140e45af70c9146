"""Quantization configuration: one validated, serializable dataclass."""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

from .frames import MAX_REDUNDANCY
from .grid import check_group_size
from .packing import SUPPORTED_BITS

#: method name -> (rotate, use frames, run GPTQ, clip)
METHODS = {
    "rtn": (False, False, False, False),
    "gptq": (False, False, True, False),
    "quip": (True, False, True, False),
    "quip-clip": (True, False, True, True),
    "framequant": (True, True, True, True),
}
SIDES = ("both", "input")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize each linear layer.

    ``method``: ``framequant`` (rotation + tight fusion frame + GPTQ + clipping), ``quip``
    (rotation + GPTQ, ``r = 1``, no clipping), ``quip-clip`` (the same with clipping), ``gptq``
    (weight space) or ``rtn`` (weight space, round to nearest).
    ``redundancy``: frame redundancy ``r`` (framequant only); ``redundancy_side``: ``both``
    (``r`` on input and output, ``r_in * r_out * bits`` code bits per weight) or ``input``
    (``r`` on the input, an ``r = 1`` frame on the output: exactly ``r * bits``).
    ``clip_sigma``: clip each row of ``D`` to ``mean +- clip_sigma * std`` (methods that clip);
    ``None`` disables clipping.
    """

    method: str = "framequant"
    bits: int = 2
    redundancy: float = 1.1
    redundancy_side: str = "both"
    clip_sigma: float | None = 2.0
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    seed: int = 0
    group_size: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(METHODS)}")
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits={self.bits} is not supported; choose one of {SUPPORTED_BITS}")
        if not (1.0 <= self.redundancy <= MAX_REDUNDANCY):
            raise ValueError(f"redundancy must lie in [1, {MAX_REDUNDANCY}], got {self.redundancy}")
        if self.redundancy_side not in SIDES:
            raise ValueError(f"redundancy_side must be one of {SIDES}, got {self.redundancy_side!r}")
        if self.clip_sigma is not None and self.clip_sigma <= 0:
            raise ValueError(f"clip_sigma must be positive or None, got {self.clip_sigma}")
        if not (0 <= self.damp < 1):
            raise ValueError(f"damp must lie in [0, 1), got {self.damp}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        check_group_size(self.group_size)
        if self.group_size is not None and self.act_order:
            raise ValueError("group-wise scales and GPTQ activation order cannot be combined")

    @property
    def rotate(self) -> bool:
        return METHODS[self.method][0]

    @property
    def use_frames(self) -> bool:
        return METHODS[self.method][1]

    @property
    def use_gptq(self) -> bool:
        return METHODS[self.method][2]

    @property
    def effective_clip(self) -> float | None:
        return self.clip_sigma if METHODS[self.method][3] else None

    @property
    def label(self) -> str:
        group = "" if self.group_size is None else f"-g{self.group_size}"
        if self.method != "framequant":
            return self.method + group
        return f"framequant-r{self.redundancy:g}-{self.redundancy_side}{group}"

    def layer_seed(self, layer_name: str, side: str) -> int:
        """Deterministic per-layer, per-side rotation seed (independent of any global RNG)."""
        return (self.seed * 1_000_003 + zlib.crc32(f"{layer_name}/{side}".encode())) & 0x7FFFFFFF

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "QuantConfig":
        fields = {f.name for f in dataclasses.fields(QuantConfig)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown QuantConfig fields: {sorted(unknown)}")
        return QuantConfig(**data)
