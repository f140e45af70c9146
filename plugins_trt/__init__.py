"""CUDA kernels and TensorRT plugins of the FrameQuant ops (see README.md)."""
