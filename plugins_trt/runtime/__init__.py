"""What runs the kernels in production.

* ``engine``: builds a TensorRT engine from a plugin-form ONNX file with the plugin library
  (``fq-export ... --out X.plan``); also importable as ``plugins_trt.engine``.
* ``extension``: the PyTorch extension built from the kernel sources (``load_extension``), the
  layer paths it exports (``layer_paths``) and the tables it makes from the recipes.
* ``layers``: ``KernelLinear`` (a ``FrameQuantLinear`` run by the kernels) and ``use_kernels``,
  which puts it in place of every ``FrameQuantLinear`` of a model.

``plugins_trt.harness`` re-exports the last two with the single ops and their references, for the
tests and benchmarks.
"""
