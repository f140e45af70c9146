"""The TensorRT engine builder, importable under its earlier name; it lives in ``plugins_trt.runtime.engine``."""
from plugins_trt.runtime.engine import (  # noqa: F401
    DEFAULT_LIBRARY_NAMES,
    ROOT,
    EngineBuildError,
    build_command,
    build_engine,
    find_plugin_library,
    tensorrt_available,
    trtexec_command,
)
