// The decode layer: rows <= kDecodeRows, one launch without grid barriers.
//
// Every block computes the (small) prologue of all tokens itself into shared memory while its
// slice of the codes streams global -> shared with cp.async; its warps then multiply that slice
// (split-K inside the block, a fixed summation order) and write z. The last block to finish
// (an atomic counter) runs the epilogue. One launch, no grid-wide wait, no activation traffic.
// The layer's tables stay in global memory (read through L1): staging them in shared memory as
// well was slower.
#include <algorithm>

#include "device/async_copy.cuh"
#include "device/codes.cuh"
#include "device/grid_sync.cuh"
#include "device/launch.cuh"
#include "layer/layer_rows.cuh"
#include "ops/packed_tile.cuh"

namespace fq {
namespace {

using namespace layer;

constexpr int kDecodeThreads = 512;
constexpr int kDecodeWarps = kDecodeThreads / 32;

// Shared floats of the decode kernel with `tiles` 16-row tiles per block:
// [codes | c | prologue or split-K partials], the epilogue reusing it all.
__host__ __device__ inline int decode_code_floats(const FrameLinearParams& p, int tiles) {
    return round4(tiles * 16 * p.matmul.words_per_row);
}
__host__ __device__ inline int decode_c_floats(const FrameLinearParams& p, int rows) {
    return round4((rows * p.matmul.in_features + 1) / 2);
}
__host__ __device__ inline int decode_floats(const FrameLinearParams& p, int rows, int tiles) {
    const int front =
        decode_code_floats(p, tiles) + decode_c_floats(p, rows) + imax(prologue_floats(p), kDecodeWarps * 128);
    return imax(front, epilogue_floats(p));
}

template <int BITS, typename T>
__global__ void __launch_bounds__(kDecodeThreads, 1)
    decode_frame_linear_kernel(FrameLinearParams p, const T* __restrict__ x, T* y, int rows, float* zbuf,
                               int tiles_per_block, unsigned int* counter) {
    extern __shared__ __align__(16) float smem[];
    __shared__ float xsum[kDecodeRows];
    __shared__ float xpart[kDecodeWarps][kDecodeRows];
    using L = CodeLayout<BITS>;
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features, wpr = p.matmul.words_per_row;
    const int ntiles = (K_out + 15) / 16;
    const int t0 = blockIdx.x * tiles_per_block, nt_b = min(ntiles, t0 + tiles_per_block) - t0;
    const int row_begin = t0 * 16, row_end = min(K_out, (t0 + nt_b) * 16);
    uint32_t* scodes = reinterpret_cast<uint32_t*>(smem);
    __half* c = reinterpret_cast<__half*>(smem + decode_code_floats(p, tiles_per_block));
    float* work = smem + decode_code_floats(p, tiles_per_block) + decode_c_floats(p, rows);
    FQ_STAMP(0);

    // 1. This block's codes (contiguous rows) towards shared memory, in flight during step 2.
    {
        const uint32_t* src = p.matmul.codes + static_cast<int64_t>(row_begin) * wpr;
        const int n = (row_end - row_begin) * wpr, n16 = n / 4;  // 16-row tiles start 16-byte aligned
        for (int i = threadIdx.x; i < n16; i += blockDim.x) cp_async16(scodes + 4 * i, src + 4 * i);
        for (int i = 4 * n16 + threadIdx.x; i < n; i += blockDim.x) scodes[i] = __ldg(src + i);
    }
    cp_async_commit();
    FQ_STAMP(1);

    // 2. c = T_in^T R_in^T x for every token (each block alike).
    const PrologueSmem sa(p, work);
    if (p.has_frame_in) load_dft(p.frame_in.dft, sa.dft, p.frame_in.kp);
    FQ_STAMP(2);
    for (int tok = 0; tok < rows; ++tok)
        prologue_row(p, x + static_cast<int64_t>(tok) * p.in_dim(), c + tok * K_in, sa);
    cp_async_wait_all();
    __syncthreads();
    FQ_STAMP(6);

    // 3. Activation sums (for the zero points), once per token rather than in every tile.
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    {
        float part[kDecodeRows];
#pragma unroll
        for (int t = 0; t < kDecodeRows; ++t) part[t] = 0.f;
        for (int i = threadIdx.x; i < K_in / 2; i += blockDim.x) {
#pragma unroll
            for (int t = 0; t < kDecodeRows; ++t) {
                if (t < rows) {
                    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(c + t * K_in + 2 * i));
                    part[t] += v.x + v.y;
                }
            }
        }
#pragma unroll
        for (int t = 0; t < kDecodeRows; ++t) {
            float v = part[t];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) xpart[warp][t] = v;
        }
    }

    // 4. Split-K over the block's warps: warp w takes tile w / S, chunk range w % S.
    const int S = imax(1, kDecodeWarps / nt_b);
    const int nchunks = (wpr + L::kChunkWords - 1) / L::kChunkWords, per = (nchunks + S - 1) / S;
    const int lt = warp / S, split = warp % S;
    float* red = work;  // the prologue's space is free now
    if (lt < nt_b) {
        float acc[1][4], xs[1];
        const int row0 = (t0 + lt) * 16, c0 = min(nchunks, split * per), c1 = min(nchunks, c0 + per);
        // xs_tile = 1 (no such tile with NT = 1): the sums come from step 3.
        warp_packed_tile<BITS, 1, 1, true>(p.matmul, row0, RowAct{c, rows, K_in, K_in}, 0, c0, c1, acc, xs, 1, scodes,
                                           row_begin);
#pragma unroll
        for (int i = 0; i < 4; ++i) red[warp * 128 + i * 32 + lane] = acc[0][i];
    }
    FQ_STAMP(7);
    __syncthreads();
    if (threadIdx.x < rows) {
        float v = 0.f;
        for (int w = 0; w < kDecodeWarps; ++w) v += xpart[w][threadIdx.x];
        xsum[threadIdx.x] = v;
    }
    __syncthreads();
    // z[tok, row] = scale * (sum_s partial_s - zero * xsum[tok]), in split order; D layout:
    // row g + 8 (i >> 1), token 2 q + (i & 1), lane 4 g + q.
    const int brows = nt_b * 16;
    for (int e = threadIdx.x; e < rows * brows; e += blockDim.x) {
        const int tok = e / brows, r = e % brows, row = row_begin + r;
        if (row >= K_out) continue;
        const int tile = r >> 4, rr = r & 15;
        const int idx = ((rr >> 3) * 2 + (tok & 1)) * 32 + (rr & 7) * 4 + (tok >> 1);
        float sum = 0.f;
        for (int s_ = 0; s_ < S; ++s_) sum += red[(tile * S + s_) * 128 + idx];
        zbuf[static_cast<int64_t>(tok) * K_out + row] =
            __half2float(p.matmul.scale[row]) * (sum - __half2float(p.matmul.zero[row]) * xsum[tok]);
    }

    // 5. The last block to arrive runs the epilogue.
    FQ_STAMP(8);
    if (!last_block_arrives(counter)) return;
    FQ_STAMP(32);
    const EpilogueSmem sc(p, smem);
    if (p.has_frame_out) load_dft(p.frame_out.dft_t, sc.dft_t, p.frame_out.kp);
    FQ_STAMP(33);
    for (int tok = 0; tok < rows; ++tok) {
        const float* z = zbuf + static_cast<int64_t>(tok) * K_out;
        epilogue_row(p, [z](int i) { return __ldcg(z + i); }, y + static_cast<int64_t>(tok) * p.out_dim(), sc);
    }
}

// cudaErrorNotSupported when the layer does not fit the decode kernel (shared memory), or, with
// one_wave, when it would take more blocks than SMs (each later wave repeats the prologue).
template <int BITS, typename T>
cudaError_t launch_decode_bits(const FrameLinearParams& p, const T* x, T* y, int rows, void* workspace,
                               unsigned int* counter, bool one_wave, cudaStream_t stream) {
    auto kernel = decode_frame_linear_kernel<BITS, T>;
    const DeviceLimits dev = device_limits();
    const int sms = dev.sms, optin = dev.smem_optin;
    cudaFuncAttributes attr{};
    cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
    if (err != cudaSuccess) return err;
    const size_t limit = static_cast<size_t>(optin) - attr.sharedSizeBytes;
    const int ntiles = (p.matmul.out_features + 15) / 16;
    const int want = (ntiles + sms - 1) / sms;  // one block per SM where shared memory allows
    int tiles = want;
    while (tiles > 0 && sizeof(float) * decode_floats(p, rows, tiles) > limit) --tiles;
    if (tiles == 0 || (one_wave && tiles < want)) return cudaErrorNotSupported;
    const size_t smem = sizeof(float) * decode_floats(p, rows, tiles);
    err = allow_smem(kernel, smem);
    if (err != cudaSuccess) return err;
    const int grid = (ntiles + tiles - 1) / tiles;
    kernel<<<grid, kDecodeThreads, smem, stream>>>(p, x, y, rows, static_cast<float*>(workspace), tiles, counter);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode_typed(const FrameLinearParams& p, const T* x, T* y, int rows, void* ws, unsigned int* bar,
                                bool one_wave, cudaStream_t stream) {
    switch (p.matmul.bits) {
        case 2: return launch_decode_bits<2, T>(p, x, y, rows, ws, bar, one_wave, stream);
        case 4: return launch_decode_bits<4, T>(p, x, y, rows, ws, bar, one_wave, stream);
        case 8: return launch_decode_bits<8, T>(p, x, y, rows, ws, bar, one_wave, stream);
        default: return cudaErrorNotSupported;
    }
}

}  // namespace

namespace layer {
cudaError_t decode_any(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype, void* workspace,
                       unsigned int* counter, bool one_wave, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kDecodeRows) return cudaErrorInvalidValue;
    return with_act_type(dtype, x, y, [&](auto* xt, auto* yt) {
        return launch_decode_typed(p, xt, yt, static_cast<int>(rows), workspace, counter, one_wave, stream);
    });
}
}  // namespace layer

cudaError_t launch_frame_linear_decode(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                       void* workspace, unsigned int* counter, cudaStream_t stream) {
    return layer::decode_any(p, x, y, rows, dtype, workspace, counter, false, stream);
}

#ifdef FQ_TRACE
cudaError_t read_trace(unsigned long long* host, int n) {
    return cudaMemcpyFromSymbol(host, detail::g_trace, sizeof(unsigned long long) * (n < 64 ? n : 64));
}
#endif

}  // namespace fq
