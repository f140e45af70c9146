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

// The block's rows of the layer: tiles [t0, t0 + tiles) of 16 rows, rows [row_begin, row_end).
struct DecodeSlice {
    int t0, tiles, row_begin, row_end;
};

// Phase 1: the slice's codes (contiguous rows) start towards shared memory, one cp.async group,
// in flight during the prologue. 16-row tiles start 16-byte aligned.
__device__ __forceinline__ void stage_codes(const PackedMatMulParams& m, const DecodeSlice& b, uint32_t* scodes) {
    const int wpr = m.words_per_row;
    const uint32_t* src = m.codes + static_cast<int64_t>(b.row_begin) * wpr;
    const int n = (b.row_end - b.row_begin) * wpr, n16 = n / 4;
    for (int i = threadIdx.x; i < n16; i += blockDim.x) cp_async16(scodes + 4 * i, src + 4 * i);
    for (int i = 4 * n16 + threadIdx.x; i < n; i += blockDim.x) scodes[i] = __ldg(src + i);
    cp_async_commit();
}

// Phase 3: each warp's part of every token's activation sum (for the zero points), once per
// token rather than in every tile. No sync.
__device__ __forceinline__ void activation_sums(const __half* c, int rows, int K_in, float (*xpart)[kDecodeRows]) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
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

// Phase 4: split-K over the block's warps: warp w takes tile w / S, chunk range w % S, and leaves
// its 16 x 8 accumulator fragment in red[w * 128 ..]. No sync.
template <int BITS>
__device__ __forceinline__ void splitk_tiles(const PackedMatMulParams& m, const DecodeSlice& b, const __half* c,
                                             int rows, int S, const uint32_t* scodes, float* red) {
    using L = CodeLayout<BITS>;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nchunks = (m.words_per_row + L::kChunkWords - 1) / L::kChunkWords, per = (nchunks + S - 1) / S;
    const int lt = warp / S, split = warp % S;
    if (lt >= b.tiles) return;
    float acc[1][4], xs[1];
    const int row0 = (b.t0 + lt) * 16, c0 = min(nchunks, split * per), c1 = min(nchunks, c0 + per);
    // xs_tile = 1 (no such tile with NT = 1): the sums come from phase 3.
    warp_packed_tile<BITS, 1, 1, true>(m, row0, RowAct{c, rows, m.in_features, m.in_features}, 0, c0, c1, acc, xs, 1,
                                       scodes, b.row_begin);
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp * 128 + i * 32 + lane] = acc[0][i];
}

// Phase 4, after a sync: z[tok, row] = scale * (sum_s partial_s - zero * xsum[tok]), in split
// order. D layout: row g + 8 (i >> 1), token 2 q + (i & 1), lane 4 g + q.
__device__ __forceinline__ void write_z(const PackedMatMulParams& m, const DecodeSlice& b, int rows, int S,
                                        const float* red, const float* xsum, float* zbuf) {
    const int K_out = m.out_features, brows = b.tiles * 16;
    for (int e = threadIdx.x; e < rows * brows; e += blockDim.x) {
        const int tok = e / brows, r = e % brows, row = b.row_begin + r;
        if (row >= K_out) continue;
        const int tile = r >> 4, rr = r & 15;
        const int idx = ((rr >> 3) * 2 + (tok & 1)) * 32 + (rr & 7) * 4 + (tok >> 1);
        float sum = 0.f;
        for (int s_ = 0; s_ < S; ++s_) sum += red[(tile * S + s_) * 128 + idx];
        zbuf[static_cast<int64_t>(tok) * K_out + row] =
            __half2float(m.scale[row]) * (sum - __half2float(m.zero[row]) * xsum[tok]);
    }
}

template <int BITS, typename T>
__global__ void __launch_bounds__(kDecodeThreads, 1)
    decode_frame_linear_kernel(FrameLinearParams p, const T* __restrict__ x, T* y, int rows, float* zbuf,
                               int tiles_per_block, unsigned int* counter) {
    extern __shared__ __align__(16) float smem[];
    __shared__ float xsum[kDecodeRows];
    __shared__ float xpart[kDecodeWarps][kDecodeRows];
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features;
    const int ntiles = (K_out + 15) / 16;
    DecodeSlice b;
    b.t0 = blockIdx.x * tiles_per_block;
    b.tiles = min(ntiles, b.t0 + tiles_per_block) - b.t0;
    b.row_begin = b.t0 * 16;
    b.row_end = min(K_out, (b.t0 + b.tiles) * 16);
    uint32_t* scodes = reinterpret_cast<uint32_t*>(smem);
    __half* c = reinterpret_cast<__half*>(smem + decode_code_floats(p, tiles_per_block));
    float* work = smem + decode_code_floats(p, tiles_per_block) + decode_c_floats(p, rows);
    FQ_STAMP(0);

    stage_codes(p.matmul, b, scodes);  // 1.
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

    activation_sums(c, rows, K_in, xpart);  // 3.
    const int S = imax(1, kDecodeWarps / b.tiles);
    float* red = work;                                         // the prologue's space is free now
    splitk_tiles<BITS>(p.matmul, b, c, rows, S, scodes, red);  // 4.
    FQ_STAMP(7);
    __syncthreads();
    if (threadIdx.x < rows) {
        float v = 0.f;
        for (int w = 0; w < kDecodeWarps; ++w) v += xpart[w][threadIdx.x];
        xsum[threadIdx.x] = v;
    }
    __syncthreads();
    write_z(p.matmul, b, rows, S, red, xsum, zbuf);

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
