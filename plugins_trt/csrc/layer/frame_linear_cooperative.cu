// The cooperative layer: the three steps in one launch of co-resident blocks, for up to
// kFusedMaxRows rows.
//
//   phase 0  every block prefetches its share of the codes into L2;
//   phase A  block t < rows runs the prologue of token t into c (fp16, workspace);
//   -- grid barrier --
//   phase B  split-K packed GEMV over all warps of the grid: warp items (16-row tile, chunk range
//            s), each writes its scaled partial sums to z_s (fp32, workspace);
//   -- grid barrier --
//   phase C  block t < rows runs the epilogue of token t on z = sum_s z_s (a fixed order, so
//            repeated launches give identical results).
//
// At a few rows every step is latency-bound, so the row functions start their global loads in
// batches (device/rows.cuh) and phase B spreads the matmul over every SM.
#include <algorithm>

#include "device/codes.cuh"
#include "device/grid_sync.cuh"
#include "device/launch.cuh"
#include "layer/layer_rows.cuh"
#include "ops/packed_tile.cuh"

namespace fq {
namespace {

using namespace layer;

struct CoherentAct {  // frame coefficients written earlier in the same launch: read through L2
    const __half* c;
    int rows, cols;
    __device__ __forceinline__ uint32_t operator()(int tok, int k) const {
        if (tok >= rows || k >= cols) return 0u;
        return __ldcg(reinterpret_cast<const unsigned int*>(c + static_cast<int64_t>(tok) * cols + k));
    }
};

__device__ __forceinline__ void prefetch_l2(const void* ptr) { asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr)); }

// Phase 0: the codes towards L2, spread over every thread of the grid (the matmul needs them
// only after the first barrier).
__device__ __forceinline__ void prefetch_codes_l2(const PackedMatMulParams& m) {
    const int gtid = blockIdx.x * blockDim.x + threadIdx.x, gthreads = gridDim.x * blockDim.x;
    const char* codes = reinterpret_cast<const char*>(m.codes);
    const int64_t bytes = static_cast<int64_t>(m.out_features) * m.words_per_row * 4;
    for (int64_t off = static_cast<int64_t>(gtid) * 128; off < bytes; off += static_cast<int64_t>(gthreads) * 128)
        prefetch_l2(codes + off);
}

// Phase B: z_s = scale * (codes - zero) c over chunk range s, the (tile, s) items spread over all
// warps of the grid; z_s is zbuf + s * rows * K_out.
template <int BITS, int NT>
__device__ __forceinline__ void splitk_partials(const PackedMatMulParams& m, const __half* cbuf, int rows, int splits,
                                                int per, float* zbuf) {
    using L = CodeLayout<BITS>;
    const int K_out = m.out_features;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int nchunks = (m.words_per_row + L::kChunkWords - 1) / L::kChunkWords;
    const int ntiles = (K_out + 15) / 16;
    const int total_warps = gridDim.x * kWarps;
    const CoherentAct act{cbuf, rows, m.in_features};
    for (int item = blockIdx.x * kWarps + warp; item < ntiles * splits; item += total_warps) {
        const int tile = item / splits, split = item % splits;
        const int row0 = tile * 16, c0 = split * per, c1 = min(nchunks, c0 + per);
        float* zs = zbuf + static_cast<int64_t>(split) * rows * K_out;
        float acc[NT][4], xs[NT];
        // One chunk loaded at a time: batching several (U > 1) was slower here.
        warp_packed_tile<BITS, NT>(m, row0, act, 0, c0, c1, acc, xs, -1);
        apply_zero<NT>(m, row0, acc, xs);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = row0 + g + 8 * (i >> 1);
            if (row >= K_out) continue;
            const float scale = __half2float(m.scale[row]);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int tok = nt * 8 + 2 * q + (i & 1);
                if (tok < rows) zs[static_cast<int64_t>(tok) * K_out + row] = scale * acc[nt][i];
            }
        }
    }
}

// Phase C's first step: zsum = sum_s z_s for one token, in split order (repeatable results), every
// load of a thread's batch in flight at once. Syncs before and after.
__device__ __forceinline__ void sum_partials(const float* z, int64_t split_stride, int splits, int K_out, float* zsum) {
    __syncthreads();  // the previous token's epilogue is done with zsum
    for (int base = threadIdx.x; base < K_out; base += kBatch * blockDim.x) {
        float part[kMaxSplits][kBatch];
#pragma unroll
        for (int sp_ = 0; sp_ < kMaxSplits; ++sp_)
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                part[sp_][b] = (sp_ < splits && i < K_out) ? __ldcg(z + sp_ * split_stride + i) : 0.f;
            }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            float v = 0.f;
#pragma unroll
            for (int sp_ = 0; sp_ < kMaxSplits; ++sp_) v += part[sp_][b];
            if (base + b * blockDim.x < K_out) zsum[base + b * blockDim.x] = v;
        }
    }
    __syncthreads();
}

template <int BITS, int NT, typename T>
__global__ void __launch_bounds__(kThreads)
    fused_frame_linear_kernel(FrameLinearParams p, const T* __restrict__ x, T* y, int rows, __half* cbuf, float* zbuf,
                              int splits, int per, unsigned int* barrier) {
    extern __shared__ float smem[];
    const PrologueSmem sa(p, smem);
    const EpilogueSmem sc(p, smem + round4(imax(prologue_floats(p), p.matmul.out_features)));
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features;

    prefetch_codes_l2(p.matmul);  // phase 0

    // Phase A: c = T_in^T R_in^T x, one block per token; the same blocks load the epilogue's table.
    if (blockIdx.x < rows) {
        if (p.has_frame_in) load_dft(p.frame_in.dft, sa.dft, p.frame_in.kp);
        if (p.has_frame_out) load_dft(p.frame_out.dft_t, sc.dft_t, p.frame_out.kp);
    }
    for (int tok = blockIdx.x; tok < rows; tok += gridDim.x)
        prologue_row(p, x + static_cast<int64_t>(tok) * p.in_dim(), cbuf + static_cast<int64_t>(tok) * K_in, sa);
    grid_barrier(barrier);

    splitk_partials<BITS, NT>(p.matmul, cbuf, rows, splits, per, zbuf);  // phase B
    grid_barrier(barrier);

    // Phase C: y = R_out T_out z + bias, one block per token.
    const int64_t split_stride = static_cast<int64_t>(rows) * K_out;
    float* zsum = smem;  // the prologue's space, free after phase A
    for (int tok = blockIdx.x; tok < rows; tok += gridDim.x) {
        sum_partials(zbuf + static_cast<int64_t>(tok) * K_out, split_stride, splits, K_out, zsum);
        epilogue_row(p, [zsum](int i) { return zsum[i]; }, y + static_cast<int64_t>(tok) * p.out_dim(), sc);
    }
}

template <int BITS, int NT, typename T>
cudaError_t launch_fused(const FrameLinearParams& p, const T* x, T* y, int rows, void* workspace, unsigned int* barrier,
                         cudaStream_t stream) {
    auto kernel = fused_frame_linear_kernel<BITS, NT, T>;
    const size_t smem =
        sizeof(float) * (round4(std::max(prologue_floats(p), p.matmul.out_features)) + epilogue_floats(p));
    cudaError_t err = allow_smem(kernel, smem);
    if (err != cudaSuccess) return err;
    const int sms = device_limits().sms;
    int per_sm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
    if (err != cudaSuccess) return err;
    if (per_sm < 1) return cudaErrorInvalidConfiguration;
    // Co-resident blocks only (grid barriers); two per SM at most, which keeps the barriers short.
    const int grid = std::max(1, std::min(per_sm, 2) * sms);
    // Phase B: split each tile's chunks so that the (tile, split) items cover all warps.
    using L2 = CodeLayout<BITS>;
    const int nchunks = (p.matmul.words_per_row + L2::kChunkWords - 1) / L2::kChunkWords;
    const int ntiles = (p.matmul.out_features + 15) / 16;
    const int want = std::max(1, std::min({nchunks, kMaxSplits, grid * kWarps / ntiles}));
    int per = (nchunks + want - 1) / want;
    int splits = (nchunks + per - 1) / per;
    __half* cbuf = static_cast<__half*>(workspace);
    const size_t c_bytes = align256(sizeof(__half) * rows * p.matmul.in_features);
    float* zbuf = reinterpret_cast<float*>(static_cast<char*>(workspace) + c_bytes);
    FrameLinearParams params = p;
    void* args[] = {&params, &x, &y, &rows, &cbuf, &zbuf, &splits, &per, &barrier};
    return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(grid), dim3(kThreads), args, smem, stream);
}

template <typename T>
cudaError_t launch_fused_typed(const FrameLinearParams& p, const T* x, T* y, int rows, void* ws, unsigned int* bar,
                               cudaStream_t stream) {
    const bool two = rows > 8;
    switch (p.matmul.bits) {
        case 2:
            return two ? launch_fused<2, 2, T>(p, x, y, rows, ws, bar, stream)
                       : launch_fused<2, 1, T>(p, x, y, rows, ws, bar, stream);
        case 4:
            return two ? launch_fused<4, 2, T>(p, x, y, rows, ws, bar, stream)
                       : launch_fused<4, 1, T>(p, x, y, rows, ws, bar, stream);
        case 8:
            return two ? launch_fused<8, 2, T>(p, x, y, rows, ws, bar, stream)
                       : launch_fused<8, 1, T>(p, x, y, rows, ws, bar, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

cudaError_t launch_frame_linear_cooperative(const FrameLinearParams& p, const void* x, void* y, int64_t rows,
                                            DType dtype, void* workspace, unsigned int* barrier, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kFusedMaxRows) return cudaErrorInvalidValue;
    return with_act_type(dtype, x, y, [&](auto* xt, auto* yt) {
        return launch_fused_typed(p, xt, yt, static_cast<int>(rows), workspace, barrier, stream);
    });
}

}  // namespace fq
