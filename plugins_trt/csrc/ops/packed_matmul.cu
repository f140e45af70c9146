// Packed b-bit matmul z = x @ D_hat^T, D_hat = scale * (codes - zero) row-wise.
//
// Tensor-core kernels (bits 2, 4, 8) use the "swap AB" form: rows of D_hat are the mma's M
// dimension (16 per warp tile), tokens its N dimension (8 per tile), so one token still fills a
// tile. Codes are decoded to exact fp16 integers with the 1024-magic trick, the product
// sum_k x_k c_k is accumulated in fp32 and the zero point enters once per row and token:
// z = scale * (sum_k x_k c_k - zero * sum_k x_k).
#include "device/codes.cuh"
#include "device/convert.cuh"
#include "ops/packed_tile.cuh"
#include "packed_layout.h"

namespace fq {
namespace {

using detail::CodeLayout;

// x rows from global memory as half2 pairs (fp32 inputs are rounded to fp16).
template <typename T> struct GlobalAct {
    const T* x;
    int rows, cols;
    __device__ __forceinline__ uint32_t operator()(int tok, int k) const {
        if (tok >= rows || k >= cols) return 0u;
        if constexpr (sizeof(T) == 2) {
            return __ldg(reinterpret_cast<const unsigned int*>(x + static_cast<int64_t>(tok) * cols + k));
        } else {
            const float2 v = __ldg(reinterpret_cast<const float2*>(x + static_cast<int64_t>(tok) * cols + k));
            return detail::pack_half2(v.x, v.y);
        }
    }
};

constexpr int kSmallWarps = 8;

// Few tokens (memory-bound): one block per 16 rows of D_hat, its 8 warps split the columns.
template <int BITS, int NT, typename T>
__global__ void __launch_bounds__(kSmallWarps * 32)
    packed_small_kernel(PackedMatMulParams p, const T* x, T* z, int rows) {
    __shared__ float red[kSmallWarps][NT * 4 * 32];
    using L = CodeLayout<BITS>;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = blockIdx.x * 16;
    const int nchunks = (p.words_per_row + L::kChunkWords - 1) / L::kChunkWords;
    const int per_warp = (nchunks + kSmallWarps - 1) / kSmallWarps;
    const int c_begin = min(nchunks, warp * per_warp), c_end = min(nchunks, c_begin + per_warp);
    float acc[NT][4], xs[NT];
    detail::warp_packed_tile<BITS, NT>(p, row0, GlobalAct<T>{x, rows, p.in_features}, 0, c_begin, c_end, acc, xs, -1);
    detail::apply_zero<NT>(p, row0, acc, xs);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) red[warp][(nt * 4 + i) * 32 + lane] = acc[nt][i];
    __syncthreads();
    for (int e = threadIdx.x; e < NT * 4 * 32; e += blockDim.x) {
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < kSmallWarps; ++w) sum += red[w][e];
        const int l = e & 31, i = (e >> 5) & 3, nt = e >> 7;
        const int row = row0 + (l >> 2) + 8 * (i >> 1);
        const int tok = nt * 8 + 2 * (l & 3) + (i & 1);
        if (row < p.out_features && tok < rows)
            z[static_cast<int64_t>(tok) * p.out_features + row] =
                detail::from_float<T>(__half2float(p.scale[row]) * sum);
    }
}

// Many tokens: block tile 128 rows x 64 tokens, 8 warps of 16 rows x 64 tokens each; the
// activation tile of each chunk is staged in shared memory (swizzled against bank conflicts),
// the codes go global -> registers one chunk ahead.
constexpr int kLargeTokens = 64;
constexpr int kLargeWarps = 8;

template <int BITS> struct LargeTile {
    using L = CodeLayout<BITS>;
    static constexpr int kChunkCodes = L::kChunkWords * L::kCodesPerWord;
    static constexpr int kRowWords = kChunkCodes / 2 + 2;  // half2 words per token, padded
    static constexpr int kLoads = kLargeTokens * (kChunkCodes / 2) / (kLargeWarps * 32);
};

__device__ __forceinline__ int swizzle(int w) { return w ^ ((w >> 5) & 1); }

template <int BITS> struct SharedAct {
    const uint32_t* tile;
    __device__ __forceinline__ uint32_t operator()(int tok, int k) const {
        return tile[tok * LargeTile<BITS>::kRowWords + swizzle((k % LargeTile<BITS>::kChunkCodes) >> 1)];
    }
};

template <int BITS, typename T>
__global__ void __launch_bounds__(kLargeWarps * 32)
    packed_large_kernel(PackedMatMulParams p, const T* x, T* z, int rows) {
    using Tile = LargeTile<BITS>;
    using L = CodeLayout<BITS>;
    __shared__ uint32_t tile[kLargeTokens * Tile::kRowWords];
    __shared__ float xsum[kLargeTokens];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = blockIdx.x * (16 * kLargeWarps) + warp * 16;
    const int tok0 = blockIdx.y * kLargeTokens;
    const int nchunks = (p.words_per_row + L::kChunkWords - 1) / L::kChunkWords;
    const GlobalAct<T> gact{x, rows, p.in_features};
    constexpr int kHalfWords = Tile::kChunkCodes / 2;
    uint32_t staged[Tile::kLoads];
    auto fetch = [&](int c) {
#pragma unroll
        for (int i = 0; i < Tile::kLoads; ++i) {
            const int e = threadIdx.x + i * kLargeWarps * 32;
            const int tok = e / kHalfWords, w = e % kHalfWords;
            staged[i] = gact(tok0 + tok, c * Tile::kChunkCodes + 2 * w);
        }
    };
    float acc[8][4], xs[8];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        xs[nt] = 0.f;
        acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    }
    fetch(0);
    for (int c = 0; c < nchunks; ++c) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < Tile::kLoads; ++i) {
            const int e = threadIdx.x + i * kLargeWarps * 32;
            const int tok = e / kHalfWords, w = e % kHalfWords;
            tile[tok * Tile::kRowWords + swizzle(w)] = staged[i];
        }
        __syncthreads();
        if (c + 1 < nchunks) fetch(c + 1);
        detail::warp_packed_tile_accumulate<BITS, 8>(p, row0, SharedAct<BITS>{tile}, 0, c, c + 1, acc, xs, warp);
    }
    // Warp w summed the activations of tokens 8w..8w+7 only (a quarter in each lane of a quad).
    float mine = 0.f;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
        if (nt == warp) mine = xs[nt];
    mine += __shfl_xor_sync(0xffffffffu, mine, 1);
    mine += __shfl_xor_sync(0xffffffffu, mine, 2);
    if ((lane & 3) == 0) xsum[warp * 8 + (lane >> 2)] = mine;
    __syncthreads();
    const int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = row0 + g + 8 * (i >> 1);
            const int t = nt * 8 + 2 * q + (i & 1);
            if (row < p.out_features && tok0 + t < rows) {
                const float v = __half2float(p.scale[row]) * (acc[nt][i] - __half2float(p.zero[row]) * xsum[t]);
                z[static_cast<int64_t>(tok0 + t) * p.out_features + row] = detail::from_float<T>(v);
            }
        }
    }
}

// Any bit width (3 included): one thread per (row, token), CUDA cores, fp32.
template <typename T> __global__ void packed_scalar_kernel(PackedMatMulParams p, const T* x, T* z, int rows) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    const int tok = blockIdx.y;
    if (row >= p.out_features || tok >= rows) return;
    const uint32_t* codes = p.codes + static_cast<int64_t>(row) * p.words_per_row;
    const T* xr = x + static_cast<int64_t>(tok) * p.in_features;
    float dot = 0.f, sum = 0.f;
    for (int k = 0; k < p.in_features; ++k) {
        const float v = detail::to_float(xr[k]);
        dot = fmaf(v, static_cast<float>(packed::read_code(codes, k, p.bits)), dot);
        sum += v;
    }
    const float out = __half2float(p.scale[row]) * (dot - __half2float(p.zero[row]) * sum);
    z[static_cast<int64_t>(tok) * p.out_features + row] = detail::from_float<T>(out);
}

__global__ void dequantize_kernel(PackedMatMulParams p, __half* out, int64_t ld) {
    const int row = blockIdx.y;
    const uint32_t* codes = p.codes + static_cast<int64_t>(row) * p.words_per_row;
    const float scale = __half2float(p.scale[row]), zero = __half2float(p.zero[row]);
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < p.in_features; k += gridDim.x * blockDim.x)
        out[static_cast<int64_t>(row) * ld + k] =
            __float2half_rn(scale * (static_cast<float>(packed::read_code(codes, k, p.bits)) - zero));
}

// bits 2, 4, 8: one thread per code word (its codes_per_word consecutive codes), vector stores.
template <int BITS> __global__ void dequantize_words_kernel(PackedMatMulParams p, __half* out, int64_t ld) {
    constexpr int kCodes = packed::codes_per_word(BITS);
    const int row = blockIdx.y;
    const int w = blockIdx.x * blockDim.x + threadIdx.x;
    const int col0 = w * kCodes;
    if (w >= p.words_per_row || col0 >= p.in_features) return;
    const uint32_t word = __ldg(p.codes + static_cast<int64_t>(row) * p.words_per_row + w);
    const float scale = __half2float(p.scale[row]), zero = __half2float(p.zero[row]);
    __align__(16) __half v[kCodes];
#pragma unroll
    for (int j = 0; j < kCodes; ++j)
        v[j] = __float2half_rn(scale * (static_cast<float>(packed::code_of_word(word, j, BITS)) - zero));
    __half* dst = out + static_cast<int64_t>(row) * ld + col0;
    if (col0 + kCodes <= p.in_features && (reinterpret_cast<uintptr_t>(dst) & (2 * kCodes - 1)) == 0) {
        if constexpr (kCodes >= 8) {
#pragma unroll
            for (int j = 0; j < kCodes / 8; ++j)
                reinterpret_cast<uint4*>(dst)[j] = reinterpret_cast<const uint4*>(v)[j];
        } else {
            *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(v);
        }
    } else {
        for (int j = 0; j < kCodes && col0 + j < p.in_features; ++j) dst[j] = v[j];
    }
}

template <int BITS, typename T>
cudaError_t launch_bits(const PackedMatMulParams& p, const T* x, T* z, int rows, cudaStream_t stream) {
    if (rows <= 8) {
        packed_small_kernel<BITS, 1, T><<<(p.out_features + 15) / 16, kSmallWarps * 32, 0, stream>>>(p, x, z, rows);
    } else if (rows <= 16) {
        packed_small_kernel<BITS, 2, T><<<(p.out_features + 15) / 16, kSmallWarps * 32, 0, stream>>>(p, x, z, rows);
    } else {
        const dim3 grid((p.out_features + 16 * kLargeWarps - 1) / (16 * kLargeWarps),
                        (rows + kLargeTokens - 1) / kLargeTokens);
        packed_large_kernel<BITS, T><<<grid, kLargeWarps * 32, 0, stream>>>(p, x, z, rows);
    }
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const PackedMatMulParams& p, const T* x, T* z, int rows, cudaStream_t stream) {
    switch (p.bits) {
        case 2: return launch_bits<2, T>(p, x, z, rows, stream);
        case 4: return launch_bits<4, T>(p, x, z, rows, stream);
        case 8: return launch_bits<8, T>(p, x, z, rows, stream);
        case 3: {
            const dim3 grid((p.out_features + 127) / 128, rows);
            packed_scalar_kernel<T><<<grid, 128, 0, stream>>>(p, x, z, rows);
            return cudaGetLastError();
        }
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

cudaError_t launch_packed_matmul(const PackedMatMulParams& p, const void* x, void* z, int64_t rows, DType dtype,
                                 cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > 65535LL * kLargeTokens || p.in_features % 2) return cudaErrorInvalidValue;
    if (dtype == DType::kFloat16)
        return launch_typed<__half>(p, static_cast<const __half*>(x), static_cast<__half*>(z), static_cast<int>(rows),
                                    stream);
    return launch_typed<float>(p, static_cast<const float*>(x), static_cast<float*>(z), static_cast<int>(rows), stream);
}

cudaError_t launch_dequantize(const PackedMatMulParams& p, __half* out, cudaStream_t stream) {
    return launch_dequantize_ld(p, out, p.in_features, stream);
}

cudaError_t launch_dequantize_ld(const PackedMatMulParams& p, __half* out, int64_t ld, cudaStream_t stream) {
    if (ld < p.in_features || p.out_features > 65535) return cudaErrorInvalidValue;
    if (packed::whole_word_bits(p.bits)) {
        const dim3 grid((p.words_per_row + 127) / 128, p.out_features);
        if (p.bits == 2) dequantize_words_kernel<2><<<grid, 128, 0, stream>>>(p, out, ld);
        if (p.bits == 4) dequantize_words_kernel<4><<<grid, 128, 0, stream>>>(p, out, ld);
        if (p.bits == 8) dequantize_words_kernel<8><<<grid, 128, 0, stream>>>(p, out, ld);
    } else {
        const dim3 grid((p.in_features + 255) / 256, p.out_features);
        dequantize_kernel<<<grid, 256, 0, stream>>>(p, out, ld);
    }
    return cudaGetLastError();
}

namespace {
__global__ void half_from_float_kernel(const float* __restrict__ in, __half* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2half_rn(in[i]);
}
}  // namespace

cudaError_t launch_half_from_float(const float* in, __half* out, int n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    half_from_float_kernel<<<(n + 255) / 256, 256, 0, stream>>>(in, out, n);
    return cudaGetLastError();
}

}  // namespace fq
