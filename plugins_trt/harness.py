"""PyTorch harness of the plugins_trt CUDA kernels: one documented function per op.

The extension is JIT-built (``torch.utils.cpp_extension.load``, ninja) from the very sources the
TensorRT plugins compile: ``plugins_trt/csrc/*.cu``, ``csrc/recipe.cpp`` and the thin binding
``torch_ext/binding.cpp``. Tables (signs, DCT, frame gathers, DFT) come from the C++ recipe, not
from fq_export, so a test against fq_export's PyTorch reference also checks the recipe.

Every fast function has a plain reference beside it (``*_ref``) built on fq_export's own
PyTorch implementation of the same op.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
from torch import nn

from fq_export import packing
from fq_export.frames import get_frame
from fq_export.layer import FrameQuantLinear
from fq_export.rotations import get_rotation

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
KERNEL_SOURCES = sorted(str(p) for p in CSRC.glob("*.cu"))


@functools.lru_cache(maxsize=1)
def load_extension(verbose: bool = False):
    """Build (once per source change) and import the extension; needs a CUDA toolkit and GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("the plugins_trt kernels need a CUDA GPU; none is visible to torch")
    from torch.utils.cpp_extension import load

    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    # FQ_TRACE=1: a profiling build whose kernels record %globaltimer stamps (ext.read_trace()).
    trace = ["-DFQ_TRACE"] if os.environ.get("FQ_TRACE") == "1" else []
    return load(
        name="fq_plugins_ext_trace" if trace else "fq_plugins_ext",
        sources=[str(ROOT / "torch_ext" / "binding.cpp"), str(CSRC / "recipe.cpp"), str(CSRC / "gemm_cublas.cpp"),
                 *KERNEL_SOURCES],
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O3", *trace],
        extra_ldflags=["-lcublas", "-lcublasLt"],
        extra_cuda_cflags=["-O3", "--use_fast_math", "-lineinfo", *trace],
        verbose=verbose,
    )


# ---- tables from the C++ recipe -----------------------------------------------------------

@functools.lru_cache(maxsize=256)
def rotation_tables(dim: int, seed: int, device: str):
    """``([signs f32, dct f32], [dim, power, odd])`` on ``device``."""
    ext = load_extension()
    signs, dct = ext.rotation_tables(dim, seed)
    power = dim & -dim
    return [signs.float().to(device), dct.float().contiguous().to(device)], [dim, power, dim // power]


@functools.lru_cache(maxsize=256)
def frame_tables(k: int, rho: int, d: int, device: str):
    """``([gather_index, gather_weight, synth_bin, synth_weight, dft, dft_t], [k, rho_c, d_c, kp])``.

    The realified DFT ``M`` (``2k x 2k``) is zero-padded to ``kp = ceil(2k / 16) * 16`` and
    stored in fp16 (the kernels run it on tensor cores with fp32 accumulation).
    """
    ext = load_extension()
    gi, gw, sb, sw, dft = ext.frame_tables(k, rho, d)
    kp = -(-2 * k // 16) * 16
    padded = torch.zeros(kp, kp, dtype=torch.float64)
    padded[: 2 * k, : 2 * k] = dft
    tables = [gi, gw.float(), sb.contiguous(), sw.float().contiguous(), padded.half(), padded.T.contiguous().half()]
    return [t.contiguous().to(device) for t in tables], [k, rho // 2, d // 2, kp]


def _matmul_tables(packed_codes, scale, zero, bits, in_features, out_features):
    return ([packed_codes.to(torch.int32).contiguous(), scale.to(torch.float16).contiguous(),
             zero.to(torch.float16).contiguous()], [bits, in_features, out_features])


# ---- the three plugin-form ops ------------------------------------------------------------

def hadamard_rotation(x: torch.Tensor, dim: int, seed: int, transpose: bool = False) -> torch.Tensor:
    """``FQHadamardRotation``: ``y = R x`` (or ``R^T x``) on the last axis, ``(..., dim)``.

    ``R = (H_{2^p} kron C_m) diag(s)`` of ``fq_export.rotations`` (``dim = 2^p m``, ``m`` odd);
    dense equivalent ``y = x @ R.T`` (``x @ R`` for the transpose). fp16 or fp32 in and out,
    fp32 arithmetic inside.
    """
    tables, ints = rotation_tables(dim, seed, str(x.device))
    return load_extension().rotation(x.contiguous(), tables, ints, transpose)


def hadamard_rotation_ref(x: torch.Tensor, dim: int, seed: int, transpose: bool = False) -> torch.Tensor:
    rotation = get_rotation(dim, seed)
    return rotation.transpose(x) if transpose else rotation.forward(x)


def frame_transform(x: torch.Tensor, k: int, rho: int, d: int, transpose: bool) -> torch.Tensor:
    """``FQFrameTransform``: synthesis ``v = T z`` (``transpose=False``: ``(..., K) -> (..., d)``)
    or analysis ``c = T^T u`` (``transpose=True``: ``(..., d) -> (..., K)``), ``K = k rho``.

    Dense equivalent: ``v = z @ T.T`` / ``c = u @ T`` with ``T = get_frame(k, rho, d).dense()``.
    Gathers in fp32, the per-block DFT on tensor cores (fp16 operands, fp32 accumulation).
    """
    tables, ints = frame_tables(k, rho, d, str(x.device))
    return load_extension().frame(x.contiguous(), tables, ints, transpose)


def frame_transform_ref(x: torch.Tensor, k: int, rho: int, d: int, transpose: bool) -> torch.Tensor:
    frame = get_frame(k, rho, d)
    return frame.analysis(x) if transpose else frame.synthesis(x)


def packed_matmul(x, packed_codes, scale, zero, bits: int, in_features: int, out_features: int,
                  gemm: bool = False) -> torch.Tensor:
    """``FQPackedMatMul``: ``z = x @ D_hat^T``, ``D_hat = scale * (codes - zero)`` row-wise.

    ``x (..., in_features)``; ``packed_codes (out_features, words)`` int32 in the layout of
    ``fq_export.packing``; ``scale``, ``zero`` ``(out_features,)`` fp16. Output
    ``(..., out_features)`` in the dtype of ``x`` (activations enter the tensor cores as fp16;
    the accumulation is fp32). ``gemm``: ``D_hat`` decoded to fp16 and one cuBLAS GEMM on
    K-padded copies (fp16 ``x`` only), what the TensorRT plugin runs from 64 rows.
    """
    tables, ints = _matmul_tables(packed_codes, scale, zero, bits, in_features, out_features)
    return load_extension().packed_matmul(x.contiguous(), tables, ints, gemm)


def packed_matmul_ref(x, packed_codes, scale, zero, bits: int, in_features: int, out_features: int):
    codes = packing.unpack_codes(packed_codes, bits, in_features).to(torch.float32)
    d_hat = scale.float().unsqueeze(1) * (codes - zero.float().unsqueeze(1))
    return (x.float() @ d_hat.T).to(x.dtype)


def dequantize(packed_codes, scale, zero, bits: int, in_features: int, out_features: int) -> torch.Tensor:
    """Dense fp16 ``D_hat`` ``(out_features, in_features)`` decoded on the GPU."""
    tables, ints = _matmul_tables(packed_codes, scale, zero, bits, in_features, out_features)
    return load_extension().dequantize(tables, ints)


# ---- a whole FrameQuant layer -------------------------------------------------------------

WEIGHT_MODES = ("packed", "dense")
PATHS = {"fused": 1, "kernels": 2, "gemm": 3, "decode": 4, "cooperative": 5, "split": 6, "dense": 7, "gemv": 8}
_PATH_NAMES = {number: name for name, number in PATHS.items()}


def dense_min_rows(in_features: int, out_features: int, k_out: int) -> int:
    """Rows from which the automatic choice takes the dense form over the gemm path
    (``fq::dense_min_rows`` of fq_kernels.h, the rule the FQFrameLinear plugin uses too)."""
    return int(load_extension().dense_min_rows(in_features, out_features, k_out))


def auto_path(rows: int, fp16: bool, in_features: int, out_features: int, k_out: int) -> str:
    """The path ``KernelLinear`` takes when none is asked for: ``fq::auto_layer_path`` of fq_kernels.h,
    the function the FQFrameLinear plugin calls too (H100 timings of benchmarks/kernels.py): the
    single-launch layer for one token (the gemv kernel where the layer has no odd rotation factor, else
    the spread decode kernel for layers wider than 4096, else the decode kernel), three launches from 2 rows and for fp32, for fp16 the gemm path from 64 rows and the
    dense form from ``dense_min_rows``."""
    return _PATH_NAMES[load_extension().auto_path(rows, fp16, in_features, out_features, k_out)]


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
        self.weights = weights
        self._dense_weight = None  # the dense mode's buffer (W^T and the fp16 bias), built once
        if path is None and fused is not None:
            path = "fused" if fused else "kernels"
        if path is not None and path not in PATHS:
            raise ValueError(f"unknown kernel path {path!r}; expected one of {sorted(PATHS)}")
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
                ext.frame_linear(x, tables, ints, PATHS["dense"], barrier, gemm_choice=choice)

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

            mt, mi = _matmul_tables(layer.packed_codes.to(device), layer.scale.to(device), layer.zero.to(device),
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
            self.last_path = "dense-weights"
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
        y = ext.frame_linear(x.to(dtype).contiguous(), tables, ints, PATHS[path], self._barrier,
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


def effective_weight(layer: FrameQuantLinear, device="cuda", by_rows: bool = False) -> torch.Tensor:
    """``W = P_out D_hat P_in^T`` (``out x in``, fp16) as the dense path builds it on the GPU;
    ``by_rows`` forces the row-at-a-time build that the slab kernels replace where they can."""
    tables, ints = KernelLinear(layer).tables(torch.device(device))
    return load_extension().effective_weight(tables, ints, by_rows).T


def frame_linear(x: torch.Tensor, layer: FrameQuantLinear, fused: bool | None = None,
                 path: str | None = None) -> torch.Tensor:
    """One quantized layer through the kernels; see ``KernelLinear``."""
    return KernelLinear(layer, fused, path)(x)


def frame_linear_ref(x: torch.Tensor, layer: FrameQuantLinear) -> torch.Tensor:
    return layer(x)


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


def random_frame_layer(in_features: int, out_features: int, bits: int = 2, redundancy: float = 1.1, seed: int = 0,
                       bias: bool = True) -> FrameQuantLinear:
    """A FrameQuant layer with random codes (both sides rotated and framed), for tests and benchmarks."""
    import math

    from fq_export.basis import SideRecipe
    from fq_export.frames import choose_frame
    from fq_export.rotations import RotationSpec

    gen = torch.Generator().manual_seed(seed)
    in_r = SideRecipe(in_features, RotationSpec(in_features, seed + 1), choose_frame(in_features, redundancy))
    out_r = SideRecipe(out_features, RotationSpec(out_features, seed + 2), choose_frame(out_features, redundancy))
    codes = torch.randint(0, 2**bits, (out_r.size, in_r.size), generator=gen)
    scale = ((torch.rand(out_r.size, generator=gen) * 0.05 + 0.01) / math.sqrt(in_r.size)).half()
    zero = (torch.rand(out_r.size, generator=gen) * (2**bits - 1)).half()
    b = torch.randn(out_features, generator=gen) * 0.1 if bias else None
    return FrameQuantLinear(in_r, out_r, bits, packing.pack_codes(codes, bits), scale, zero, b)
