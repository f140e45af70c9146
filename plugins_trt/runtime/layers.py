"""A FrameQuant layer run by the plugins_trt kernels (``KernelLinear``) and ``use_kernels``, which
puts it in place of every ``FrameQuantLinear`` of a model; the automatic choice of layer path that
the FQFrameLinear TensorRT plugin makes too (``auto_path``).

The layer paths and their names come from the extension (``fq::kLayerPathNames`` of
csrc/fq_kernels.h): ``paths()``, also ``PATHS``. docs/kernels.md says which path runs when.
"""
from __future__ import annotations

import torch
from torch import nn

from fq_export.layer import FrameQuantLinear
from plugins_trt.runtime.extension import frame_tables, layer_paths, load_extension, matmul_tables, rotation_tables

WEIGHT_MODES = ("packed", "dense")
DENSE_WEIGHTS = "dense-weights"  # the name of the dense-at-load mode among the layer paths


def paths() -> dict[str, int]:
    """The layer paths ``KernelLinear`` and the binding's ``frame_linear`` take, name -> value:
    ``fq::kLayerPathNames`` (csrc/fq_kernels.h) without the dense-at-load mode. Also ``PATHS``."""
    return {name: value for name, value in layer_paths().items() if name != DENSE_WEIGHTS}


def __getattr__(name):  # PATHS: built from the binding on first use (the extension needs a GPU)
    if name == "PATHS":
        return paths()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dense_min_rows(in_features: int, out_features: int, k_out: int) -> int:
    """Rows from which the automatic choice takes the dense form over the gemm path
    (``fq::dense_min_rows`` of fq_kernels.h, the rule the FQFrameLinear plugin uses too)."""
    return int(load_extension().dense_min_rows(in_features, out_features, k_out))


def auto_path(rows: int, fp16: bool, in_features: int, out_features: int, k_out: int) -> str:
    """The path ``KernelLinear`` takes when none is asked for: ``fq::auto_layer_path`` of fq_kernels.h,
    the function the FQFrameLinear plugin calls too: the single-launch layer for one token (the gemv
    kernel where the layer has no odd rotation factor, else the spread decode kernel for layers wider
    than 4096, else the decode kernel), three launches from 2 rows and for fp32, for fp16 the gemm
    path from 64 rows and the dense form from ``dense_min_rows`` (docs/kernels.md)."""
    value = load_extension().auto_path(rows, fp16, in_features, out_features, k_out)
    return next(name for name, number in paths().items() if number == value)


class KernelLinear(nn.Module):
    """A ``FrameQuantLinear`` run by the kernels.

    ``path``: ``"fused"`` (one launch, at most ``fused_max_rows`` rows: for one row the ``"gemv"``
    kernel (codes split evenly over the SMs, the epilogue by the last block) where the layer takes it
    (no odd rotation factor), else the ``"split"`` kernel (spread decode: every step spread over the
    SMs) on layers wider than 4096, else the ``"decode"`` kernel where the layer fits it, else the
    ``"cooperative"`` kernel; all four can also be asked for by name, gemv for one row, split and
    decode up to ``decode_max_rows`` rows), ``"kernels"``
    (three launches: prologue, packed matmul, epilogue), ``"gemm"`` (prologue, D_hat decoded to
    fp16, cuBLAS, epilogue; fp16 only), ``"dense"`` (the effective weight ``P_out D_hat P_in^T``
    built in a workspace by transforming the weight's rows, then one cuBLASLt GEMM with the bias;
    fp16 only) or ``None``: the choice of ``auto_path`` (the FQFrameLinear plugin's).
    ``fused=True/False`` is shorthand for ``path="fused"/"kernels"``.

    ``weights``: ``"packed"`` (the paths above read the packed codes at every call: least memory)
    or ``"dense"`` (dense at load: ``P_out D_hat P_in^T`` built in fp16 by the dense form's build
    on the first call and kept, then every call is one cuBLASLt GEMM with the bias, fp16; the
    FQFrameLinear plugin's ``FQ_TRT_WEIGHTS=dense``). The checkpoint and engine stay packed.

    Shapes and dense equivalent as ``FrameQuantLinear``: ``y = x @ (P_out D_hat P_in^T).T + b``.
    """

    def __init__(self, layer: FrameQuantLinear, fused: bool | None = None, path: str | None = None,
                 act_dtype: torch.dtype | None = None, weights: str = "packed"):
        super().__init__()
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, not {weights!r}")
        if getattr(layer, "group_size", None) is not None:
            raise ValueError(f"the CUDA kernels take one scale and zero per row; this layer has groups of "
                             f"{layer.group_size} (run it in PyTorch or export the standard or packed ONNX form)")
        self.weights = weights
        self._dense_weight = None  # the dense mode's buffer (W^T and the fp16 bias), built once
        if path is None and fused is not None:
            path = "fused" if fused else "kernels"
        if path is not None and path not in paths():
            raise ValueError(f"unknown kernel path {path!r}; expected one of {sorted(paths())}")
        self.layer, self.path = layer, path
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._barrier = None
        self._tables = None
        self.last_path: str | None = None  # the path the last call took
        # Activations into the kernels: fp16 or fp32 (None: the input's, fp16 for other types);
        # the output comes back in the input's dtype.
        if act_dtype not in (None, torch.float16, torch.float32):
            raise ValueError(f"act_dtype must be torch.float16 or torch.float32, not {act_dtype}")
        self.act_dtype = act_dtype
        # The dense path's GEMM: entry of cuBLASLt's heuristic list for it (0: its first pick);
        # choose_dense_gemm sets it by timing, as TensorRT times the FQFrameLinear plugin's tactics.
        self.gemm_choice = 0

    def dense_gemm_choices(self, x: torch.Tensor) -> int:
        """Length of cuBLASLt's heuristic list for the dense path's GEMM on ``x`` (fp16, CUDA)."""
        tables, ints = self.tables(x.device)
        return int(load_extension().dense_gemm_choices(x.half().contiguous(), tables, ints))

    def choose_dense_gemm(self, x: torch.Tensor, calls: int = 10, repeats: int = 5) -> list[float]:
        """Times the dense path with every entry of cuBLASLt's heuristic list on ``x`` and keeps the
        fastest in ``gemm_choice``, as TensorRT's builder times a plugin's tactics (GPU time only:
        ``gpu_time_us`` over ``calls`` calls and ``repeats`` replays). Returns the microseconds per
        call of each entry."""
        ext = load_extension()
        x = x.half().contiguous()
        tables, ints = self.tables(x.device)
        barrier = torch.zeros(1, dtype=torch.int32, device=x.device)
        times = []
        for choice in range(self.dense_gemm_choices(x)):
            def call(_, choice=choice):
                ext.frame_linear(x, tables, ints, paths()["dense"], barrier, gemm_choice=choice)

            call(0)
            torch.cuda.synchronize(x.device)
            times.append(gpu_time_us(call, calls, repeats)[0])
        if not times:
            raise RuntimeError("cuBLASLt offers no GEMM for the dense path of this layer")
        self.gemm_choice = min(range(len(times)), key=times.__getitem__)
        return times

    def tables(self, device):
        if self._tables is None or self._tables[0] != str(device):
            layer, dev = self.layer, str(device)
            ins, outs = layer.in_recipe, layer.out_recipe
            t: list = []
            i: list = [int(ins.rotation is not None), int(ins.frame is not None), int(outs.frame is not None),
                       int(outs.rotation is not None)]
            empty = torch.empty(0, device=device)

            def rot(spec):
                if spec is None:
                    return [empty, empty], [0, 0, 0]
                return rotation_tables(spec.dim, spec.seed, dev)

            def frm(spec):
                if spec is None:
                    return [empty] * 6, [0, 0, 0, 0]
                return frame_tables(spec.k, spec.rho, spec.d, dev)

            mt, mi = matmul_tables(layer.packed_codes.to(device), layer.scale.to(device), layer.zero.to(device),
                                    layer.bits, ins.size, outs.size)
            for tab, ints in (rot(ins.rotation), frm(ins.frame), (mt, mi), frm(outs.frame), rot(outs.rotation)):
                t += tab
                i += ints
            t.append(layer.bias.float().to(device).contiguous() if layer.bias is not None else empty)
            self._tables = (dev, t, i)
        return self._tables[1], self._tables[2]

    def dense_weight(self, device) -> torch.Tensor:
        """The dense mode's weight buffer, built on first use (``fq::build_dense_weight``)."""
        if self._dense_weight is None or self._dense_weight.device != torch.device(device):
            tables, ints = self.tables(device)
            self._dense_weight = load_extension().build_dense_weight(tables, ints)
        return self._dense_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext = load_extension()
        tables, ints = self.tables(x.device)
        if self.weights == "dense":
            self.last_path = DENSE_WEIGHTS
            y = ext.dense_weight_linear(x.half().contiguous(), self.dense_weight(x.device), tables, ints,
                                        self.gemm_choice)
            return y.to(x.dtype)
        rows = x.numel() // x.shape[-1]
        dtype = x.dtype if x.dtype in (torch.float16, torch.float32) else torch.float16
        if self.act_dtype is not None:
            dtype = self.act_dtype
        path = self.path
        if path is None:
            path = auto_path(rows, dtype == torch.float16, self.in_features, self.out_features,
                             self.layer.frame_shape[0])
        if self._barrier is None or self._barrier.device != x.device:
            self._barrier = torch.zeros(1, dtype=torch.int32, device=x.device)
        self.last_path = path
        y = ext.frame_linear(x.to(dtype).contiguous(), tables, ints, paths()[path], self._barrier,
                             gemm_choice=self.gemm_choice)
        return y.to(x.dtype)


def gpu_time_us(call, calls: int, reps: int, warm: int = 1) -> tuple[float, str]:
    """Median microseconds per call of ``call(i)``, i = 0 .. calls - 1, over ``reps`` runs timed with
    CUDA events: the calls captured once in a CUDA graph and replayed (GPU time only; ``warm``
    calls first on a side stream, as capture needs), else, where capture fails, called eagerly.
    Returns the time and how it was taken: ``"graph"`` or ``"eager (<error>)"``."""
    import statistics

    def eager():
        for i in range(calls):
            call(i)

    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for i in range(warm):
                call(i)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager()
        graph.replay()
        torch.cuda.synchronize()
        run, how = graph.replay, "graph"
    except Exception as err:  # noqa: BLE001 - report and fall back to eager timing
        torch.cuda.synchronize()
        run, how = eager, f"eager ({type(err).__name__})"
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return statistics.median(times), how


def use_kernels(model: nn.Module, fused: bool | None = None, path: str | None = None,
                act_dtype: torch.dtype | None = None, weights: str = "packed") -> int:
    """Replace every ``FrameQuantLinear`` of ``model`` (in place) by a ``KernelLinear``; returns the count."""
    count = 0
    for name, module in list(model.named_children()):
        if isinstance(module, FrameQuantLinear):
            setattr(model, name, KernelLinear(module, fused, path, act_dtype, weights))
            count += 1
        else:
            count += use_kernels(module, fused, path, act_dtype, weights)
    return count


