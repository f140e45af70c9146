"""CI compile check: every plugins_trt kernel source compiles with nvcc for sm_80 and sm_90.

No GPU needed; skipped where nvcc is absent. One nvcc call per source builds both targets.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "plugins_trt" / "csrc"
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
SOURCES = sorted(CSRC.rglob("*.cu"))


def _compile(source: Path, out_dir: Path) -> subprocess.CompletedProcess:
    obj = out_dir / (str(source.relative_to(CSRC)).replace("/", "_").removesuffix(".cu") + ".o")
    cmd = [NVCC, "-std=c++17", "-O1", "-I", str(CSRC), "-c", str(source), "-o", str(obj),
           "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90", "-Werror=all-warnings", "-Xptxas", "-O1"]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_kernels_compile_for_sm80_and_sm90(tmp_path):
    assert SOURCES, f"no .cu files under {CSRC}"
    workers = max(1, min(len(SOURCES), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda s: (s, _compile(s, tmp_path)), SOURCES))
    failures = [f"{s.relative_to(CSRC)}:\n{r.stderr}" for s, r in results if r.returncode != 0]
    assert not failures, "\n".join(failures)


def test_kernel_sources_are_free_of_tensorrt_and_torch():
    for source in [*SOURCES, *CSRC.rglob("*.cuh"), *CSRC.rglob("*.h"), *CSRC.rglob("*.cpp")]:
        text = source.read_text()
        for banned in ("NvInfer", "torch/", "ATen", "nvinfer1"):
            assert banned not in text, f"{source.relative_to(CSRC)} mentions {banned}"


TRT = CSRC.parent / "trt"
TRT_INCLUDE = Path(os.environ.get("FQ_TRT_INCLUDE", CSRC.parents[1] / ".trt_headers" / "include"))
CUDA_INCLUDE = next((d for d in ([Path(NVCC).resolve().parents[1] / "include"] if NVCC else []) + [Path("/usr/local/cuda/include")]
                     if (d / "cuda_runtime.h").exists()), None)
CXX = shutil.which("g++") or shutil.which("c++")


def test_each_plugin_has_its_folder():
    for name in ("hadamard_rotation", "frame_transform", "packed_matmul", "frame_linear"):
        folder = TRT / name
        assert (folder / f"{name}.cpp").is_file() and (folder / "README.md").is_file(), name


@pytest.mark.skipif(CXX is None or not (TRT_INCLUDE / "NvInferRuntime.h").exists()
                    or CUDA_INCLUDE is None,
                    reason="needs g++, TensorRT's headers (FQ_TRT_INCLUDE or .trt_headers/include) and CUDA's")
def test_plugin_glue_compiles_against_tensorrt_headers():
    # Without cuBLAS (its headers need not be present): the plugins' own code, syntax and types.
    sources = sorted(TRT.rglob("*.cpp")) + [CSRC.parent / "tools" / "plugin_glue_check.cpp"]
    for source in sources:
        result = subprocess.run([CXX, "-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-Werror",
                                 "-Wno-deprecated-declarations", f"-I{TRT_INCLUDE}", f"-I{CUDA_INCLUDE}",
                                 f"-I{CSRC}", str(source)], capture_output=True, text=True)
        assert result.returncode == 0, f"{source.relative_to(CSRC.parent)}:\n{result.stderr}"


CMAKE = shutil.which("cmake")
VERSION_HEADERS = {
    "trt9": "#define NV_TENSORRT_MAJOR 9 //!< major\n",
    "trt10": "#define NV_TENSORRT_MAJOR 10 //!< major\n",
    "trt11": "#define TRT_MAJOR_ENTERPRISE 11\n#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< major\n"
             "#define NV_TENSORRT_LWS_MAJOR 0\n",
}


@pytest.mark.skipif(CMAKE is None or NVCC is None, reason="cmake or nvcc not found")
@pytest.mark.parametrize("case", ["missing", "trt9", "trt10", "trt11"])
def test_cmake_finds_tensorrt_or_says_what_to_pass(tmp_path, case):
    root = tmp_path / "TensorRT"
    if case != "missing":
        (root / "include").mkdir(parents=True)
        (root / "include" / "NvInfer.h").write_text("// stand-in\n")
        (root / "include" / "NvInferVersion.h").write_text(VERSION_HEADERS[case])
    env = dict(os.environ, CUDACXX=NVCC)
    env.pop("TENSORRT_ROOT", None)
    result = subprocess.run([CMAKE, "-S", str(CSRC.parent), "-B", str(tmp_path / "build"), f"-DTENSORRT_ROOT={root}"],
                            capture_output=True, text=True, env=env)
    output = result.stdout + result.stderr
    if case == "missing":
        assert result.returncode != 0 and "NvInfer.h) not found" in output and "TENSORRT_ROOT" in output
    elif case == "trt9":
        assert result.returncode != 0 and "TensorRT 9 found" in output and "10 or newer" in output
    else:
        assert f"TensorRT {case[3:]} headers: {root / 'include'}" in output, output
