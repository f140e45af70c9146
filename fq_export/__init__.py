"""fq-export: FrameQuant post-training quantization and deployable export.

Library use: ``fq_export.quantize(model, fq_export.FrameQuantConfig(...), batches)`` (:mod:`fq_export.api`).
"""
from .api import FrameQuantConfig, quantize
from .config import QuantConfig
from .frames import FrameSpec, TightFusionFrame, choose_frame, tff_exists
from .layer import FrameQuantLinear, quantize_linear
from .rotations import HadamardRotation, RotationSpec

__all__ = [
    "FrameQuantConfig", "FrameQuantLinear", "FrameSpec", "HadamardRotation", "QuantConfig", "RotationSpec",
    "TightFusionFrame", "choose_frame", "quantize", "quantize_linear", "tff_exists",
]
__version__ = "0.1.0"
