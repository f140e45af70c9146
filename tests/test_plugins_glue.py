"""The FQFrameLinear TensorRT plugin driven through TensorRT's calling sequence on a GPU.

Needs a CUDA GPU, nvcc and TensorRT's headers (FQ_TRT_INCLUDE=/path/to/TensorRT/include; the
runtime is not needed): plugins_trt/tools/plugin_glue_check.py builds the plugin sources with a
driver that creates, serializes, clones and enqueues the plugin as TensorRT does, and compares
every path with the float64 reference. Skipped elsewhere (CI has no GPU).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

TRT_INCLUDE = os.environ.get("FQ_TRT_INCLUDE", "")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc"),
    pytest.mark.skipif(not (Path(TRT_INCLUDE) / "NvInferRuntime.h").exists(),
                       reason="set FQ_TRT_INCLUDE to TensorRT's include folder"),
]


def test_frame_linear_plugin_paths_through_the_tensorrt_sequence(tmp_path):
    from plugins_trt.tools import plugin_glue_check

    assert plugin_glue_check.main(["run", "--trt-include", TRT_INCLUDE, "--workdir", str(tmp_path)]) == 0
