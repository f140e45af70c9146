"""How fast can any one-row FrameQuant layer be on this GPU? The floor under the M = 1 goal.

The goal of ``benchmarks/kernels.py`` at M = 1 is a 4096x4096 layer 3x faster than cuBLAS fp16.
This script times, in the same way (CUDA graphs, medians; warm: one buffer reused, cold: rotating
copies of at least twice the L2), kernels that do strictly less than any such layer must do:

* ``empty``: a kernel that does nothing (the cost of a node of the graph);
* ``stream``: every block reads its share of the layer's packed codes (the bytes a 2-bit layer cannot
  avoid moving) with 16-byte loads and keeps one word of it;
* ``stream + handoff``: the same, then each block writes its partial sums of z to global memory and
  the last block to arrive (an atomic counter) reads all of z and writes y: the least a single-launch
  layer needs, since every output depends on every code through the output rotation and the codes
  must be spread over all SMs to be read at full bandwidth;
* ``stream + empty``: the two-launch alternative (partial sums in one launch, z -> y in another),
  at least a stream and a graph node;

each in the best of a few grid shapes, against the layer itself (``harness.KernelLinear``, the
one-row path ``fused``) and cuBLAS fp16 on the dense weight. The goal is cuBLAS / 3: a floor above it
means that no single-launch layer reading these codes can reach it on this GPU.

    python benchmarks/m1_floor.py --json benchmarks/results/h200/m1_floor_h200.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels import copies_for, time_fn  # noqa: E402
from plugins_trt import harness  # noqa: E402

CUDA_SRC = r"""
#include <cuda_fp16.h>
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>

__global__ void empty_kernel() {}

// Block b reads 16-byte pieces [b per, (b + 1) per) of the codes and keeps their XOR (sink[b]).
// With handoff: it then writes its share of z (zlen floats) and the last block to arrive reads all
// of z and writes the ylen outputs.
template <bool kHandoff>
__global__ void stream_kernel(const uint4* __restrict__ codes, long long n16, unsigned* sink, float* z, int zlen,
                              unsigned* counter, __half* y, int ylen) {
    __shared__ unsigned red[32];
    __shared__ bool last;
    const long long per = (n16 + gridDim.x - 1) / gridDim.x;
    const long long begin = blockIdx.x * per, end = min(n16, begin + per);
    uint4 acc = make_uint4(0u, 0u, 0u, 0u);
    long long i = begin + threadIdx.x;
    for (; i + 3 * (long long)blockDim.x < end; i += 4 * (long long)blockDim.x) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = __ldg(codes + i + u * blockDim.x);
#pragma unroll
        for (int u = 0; u < 4; ++u) { acc.x ^= v[u].x; acc.y ^= v[u].y; acc.z ^= v[u].z; acc.w ^= v[u].w; }
    }
    for (; i < end; i += blockDim.x) {
        const uint4 v = __ldg(codes + i);
        acc.x ^= v.x; acc.y ^= v.y; acc.z ^= v.z; acc.w ^= v.w;
    }
    unsigned word = acc.x ^ acc.y ^ acc.z ^ acc.w;
    for (int o = 16; o > 0; o >>= 1) word ^= __shfl_xor_sync(0xffffffffu, word, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = word;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned all = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) all ^= red[w];
        sink[blockIdx.x] = all;
    }
    if constexpr (kHandoff) {
        const int zper = (zlen + gridDim.x - 1) / gridDim.x;
        for (int j = blockIdx.x * zper + threadIdx.x; j < min(zlen, (int)(blockIdx.x + 1) * zper); j += blockDim.x)
            z[j] = (float)(red[threadIdx.x & 31] & 255u);
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
        extern __shared__ float zs[];
        // 16-byte loads, all in flight at once where z is a multiple of 4 floats.
        if (zlen % 4 == 0) {
            const float4* z4 = reinterpret_cast<const float4*>(z);
            float4* zs4 = reinterpret_cast<float4*>(zs);
            for (int j = threadIdx.x; j < zlen / 4; j += 4 * blockDim.x) {
                float4 v[4];
#pragma unroll
                for (int u = 0; u < 4; ++u)
                    if (j + u * (int)blockDim.x < zlen / 4) v[u] = __ldcg(z4 + j + u * blockDim.x);
#pragma unroll
                for (int u = 0; u < 4; ++u)
                    if (j + u * (int)blockDim.x < zlen / 4) zs4[j + u * blockDim.x] = v[u];
            }
        } else {
            for (int j = threadIdx.x; j < zlen; j += blockDim.x) zs[j] = __ldcg(z + j);
        }
        __syncthreads();
        for (int j = threadIdx.x; j < ylen; j += blockDim.x) y[j] = __float2half(zs[j % zlen] + zs[(j * 7) % zlen]);
        if (threadIdx.x == 0) *counter = 0u;
    }
}

void empty(int grid, int threads) {
    empty_kernel<<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>();
}

void stream(torch::Tensor codes, torch::Tensor sink, torch::Tensor z, torch::Tensor counter, torch::Tensor y,
            int grid, int threads, bool handoff) {
    const long long n16 = codes.numel() * codes.element_size() / 16;
    auto s = at::cuda::getCurrentCUDAStream();
    auto c = reinterpret_cast<const uint4*>(codes.data_ptr());
    auto snk = reinterpret_cast<unsigned*>(sink.data_ptr());
    auto cnt = reinterpret_cast<unsigned*>(counter.data_ptr());
    auto yy = reinterpret_cast<__half*>(y.data_ptr());
    const int zlen = (int)z.numel(), ylen = (int)y.numel();
    if (handoff) {
        const size_t smem = sizeof(float) * zlen;
        cudaFuncSetAttribute(stream_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        stream_kernel<true><<<grid, threads, smem, s>>>(c, n16, snk, z.data_ptr<float>(), zlen, cnt, yy, ylen);
    } else {
        stream_kernel<false><<<grid, threads, 0, s>>>(c, n16, snk, nullptr, 0, nullptr, nullptr, 0);
    }
    TORCH_CHECK(cudaGetLastError() == cudaSuccess, "floor kernel launch failed");
}
"""
CPP_SRC = r"""
void empty(int grid, int threads);
void stream(torch::Tensor codes, torch::Tensor sink, torch::Tensor z, torch::Tensor counter, torch::Tensor y,
            int grid, int threads, bool handoff);
"""


def load_floor_kernels():
    from torch.utils.cpp_extension import load_inline

    return load_inline("fq_m1_floor", CPP_SRC, cuda_sources=CUDA_SRC, functions=["empty", "stream"],
                       extra_cuda_cflags=["-O3"], verbose=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--shape", default="4096x4096", help="INxOUT of the layer (default 4096x4096)")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--redundancy", type=float, default=1.1)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/m1_floor.py needs a CUDA GPU")
    n, m = (int(v) for v in args.shape.split("x"))
    ext = load_floor_kernels()
    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, props.L2_cache_size
    layer = harness.random_frame_layer(n, m, bits=args.bits, redundancy=args.redundancy, seed=n * 7 + m).cuda()
    k_out, _ = layer.frame_shape
    codes = layer.packed_codes.contiguous()
    code_bytes = codes.numel() * codes.element_size()
    inputs = [torch.randn(1, n, device="cuda", dtype=torch.float16) for _ in range(4)]
    weight = torch.randn(m, n, device="cuda", dtype=torch.float16) / n**0.5
    n_codes = copies_for(code_bytes, l2)
    code_copies = [codes.clone() for _ in range(n_codes)]
    sink = torch.zeros(4 * sms, dtype=torch.int32, device="cuda")
    z = torch.zeros(2 * k_out, dtype=torch.float32, device="cuda")  # the gemv kernel's two slots of z
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")
    y = torch.empty(m, dtype=torch.float16, device="cuda")
    grids = [(sms, 1024), (sms, 768), (2 * sms, 512), (4 * sms, 256)]

    rows: list[dict] = []

    def record(name, warm, cold, note=""):
        rows.append({"kernel": name, "warm_us": warm, "cold_us": cold, "note": note})

    best = {}
    for grid, threads in grids:
        warm, _ = time_fn(lambda x: ext.empty(grid, threads), inputs)
        best.setdefault("empty", []).append((warm, None, f"{grid}x{threads}"))
        for handoff in (False, True):
            key = "stream + handoff" if handoff else "stream"
            warm, _ = time_fn(lambda x: ext.stream(codes, sink, z, counter, y, grid, threads, handoff), inputs)
            cold, _ = time_fn(lambda x, c: ext.stream(c, sink, z, counter, y, grid, threads, handoff), inputs,
                              calls=len(code_copies), weights=code_copies)
            best.setdefault(key, []).append((warm, cold, f"{grid}x{threads}"))
    for key in ("empty", "stream", "stream + handoff"):
        warm = min(best[key], key=lambda t: t[0])
        cold = min((t for t in best[key] if t[1] is not None), key=lambda t: t[1], default=(None, None, ""))
        note = f"best grid x threads: warm {warm[2]}" + (f", cold {cold[2]}" if cold[1] is not None else "")
        record(key, warm[0], cold[1], note)

    # A layer in two launches (the codes' partial sums in one, z -> y in the next) pays at least a
    # stream and a graph node.
    empty, stream = rows[0], rows[1]
    record("stream + empty (two launches)", stream["warm_us"] + empty["warm_us"],
           stream["cold_us"] + empty["warm_us"], "sum of the rows above")
    kl = harness.KernelLinear(layer, path="fused")
    kls = [harness.KernelLinear(copy.deepcopy(layer), path="fused") for _ in range(n_codes)]
    warm, _ = time_fn(kl, inputs)
    cold, _ = time_fn(lambda x, k: k(x), inputs, calls=len(kls), weights=kls)
    record("the layer (path fused)", warm, cold)
    dense = [weight.clone() for _ in range(copies_for(weight.numel() * 2, l2))]
    warm, _ = time_fn(lambda x: torch.matmul(x, weight.T), inputs)
    cold, _ = time_fn(lambda x, w: torch.matmul(x, w.T), inputs, calls=len(dense), weights=dense)
    record("cuBLAS fp16 (dense weight)", warm, cold)
    cublas = rows[-1]
    goal = {"warm_us": cublas["warm_us"] / 3, "cold_us": cublas["cold_us"] / 3}

    print(f"device {props.name}, {sms} SMs, L2 {l2 >> 20} MiB; {n}x{m} layer, {args.bits}-bit, r {args.redundancy}: "
          f"{code_bytes / 1e6:.2f} MB of codes, z {2 * k_out} floats; cold: {n_codes} copies of the codes")
    print(f"{'kernel':30s} {'warm us':>8s} {'x goal':>7s} {'cold us':>8s} {'x goal':>7s}  note")
    for r in rows:
        if r["cold_us"] is None:
            cold = f"{'-':>8s} {'-':>7s}"
        else:
            cold = f"{r['cold_us']:8.2f} {r['cold_us'] / goal['cold_us']:7.2f}"
        print(f"{r['kernel']:30s} {r['warm_us']:8.2f} {r['warm_us'] / goal['warm_us']:7.2f} {cold}  {r['note']}")
    print(f"{'goal: cuBLAS / 3':30s} {goal['warm_us']:8.2f} {1:7.2f} {goal['cold_us']:8.2f} {1:7.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "device": props.name, "sms": sms, "l2_bytes": l2, "shape": [n, m], "bits": args.bits,
        "redundancy": args.redundancy, "code_bytes": code_bytes, "z_floats": 2 * k_out, "cold_copies": n_codes,
        "goal": goal, "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
