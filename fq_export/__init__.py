"""fq-export: FrameQuant post-training quantization and deployable export."""
from .config import QuantConfig
from .frames import FrameSpec, TightFusionFrame, choose_frame, tff_exists
from .layer import FrameQuantLinear, quantize_linear
from .rotations import HadamardRotation, RotationSpec

__all__ = [
    "FrameQuantLinear", "FrameSpec", "HadamardRotation", "QuantConfig", "RotationSpec",
    "TightFusionFrame", "choose_frame", "quantize_linear", "tff_exists",
]
__version__ = "0.1.0"
