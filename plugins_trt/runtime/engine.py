"""Build a TensorRT engine from a plugin-form ONNX file (Python ``tensorrt`` API).

Steps: load the plugin library into TensorRT's plugin registry (``loadLibrary``: the library
exports ``getCreators``/``setLoggerFinder``), parse the ONNX file (the parser maps the
``FQFrameLinear`` nodes of the default ``plugin-layer`` form, or the ``FQHadamardRotation`` /
``FQFrameTransform`` / ``FQPackedMatMul`` nodes of the ``plugin`` form, to our creators by op type,
``plugin_version`` and ``plugin_namespace``), add an optimization profile for the dynamic axes,
build with fp16 allowed, serialize to a uniquely named temporary beside the plan and rename it into place.

Runs wherever ``import tensorrt`` works; :func:`trtexec_command` gives the equivalent command line.
Also importable as ``plugins_trt.engine``.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from fq_export.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]  # plugins_trt/
DEFAULT_LIBRARY_NAMES = ("libfq_trt_plugins.so",)


class EngineBuildError(RuntimeError):
    pass


def find_plugin_library(explicit: str | os.PathLike | None = None) -> Path | None:
    """The plugin library: ``explicit``, ``$FQ_TRT_PLUGIN_LIB``, or a CMake build under the repo."""
    for candidate in (explicit, os.environ.get("FQ_TRT_PLUGIN_LIB")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise EngineBuildError(f"plugin library {path} does not exist")
            return path
    for build in (ROOT.parent / "build" / "plugins", ROOT / "build"):
        for name in DEFAULT_LIBRARY_NAMES:
            if (build / name).is_file():
                return build / name
    return None


def build_command() -> str:
    return ("cmake -S plugins_trt -B build/plugins -DTENSORRT_ROOT=/path/to/TensorRT && "
            "cmake --build build/plugins -j")


def trtexec_command(onnx_path, plan_path, library, shapes: dict[str, tuple[tuple[int, ...], ...]]) -> str:
    """The ``trtexec`` line that builds the same engine (``shapes``: input -> (min, opt, max))."""
    def fmt(idx):
        return ",".join(f"{name}:{'x'.join(map(str, dims[idx]))}" for name, dims in shapes.items())

    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}",
             f"--dynamicPlugins={library or 'build/plugins/libfq_trt_plugins.so'}", "--fp16"]
    if shapes:
        parts += [f"--minShapes={fmt(0)}", f"--optShapes={fmt(1)}", f"--maxShapes={fmt(2)}"]
    return " ".join(shlex.quote(p) for p in parts)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or a stub package whose import fails
        return False
    return True


def build_engine(onnx_path, plan_path, library, shapes: dict[str, tuple[tuple[int, ...], ...]],
                 fp16: bool = True, workspace_bytes: int = 4 << 30) -> Path:
    """Parse ``onnx_path`` with the plugins of ``library`` and write the serialized engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    registry = builder.get_plugin_registry()
    handle = registry.load_library(str(library))
    if handle is None:
        raise EngineBuildError(f"TensorRT could not load the plugin library {library}")
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in shapes:
            raise EngineBuildError(f"no shape range given for engine input {tensor.name!r}")
        lo, opt, hi = shapes[tensor.name]
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine (see the log above)")
    plan_path = Path(plan_path)
    atomic_write(plan_path, lambda tmp: Path(tmp).write_bytes(serialized))
    return plan_path
