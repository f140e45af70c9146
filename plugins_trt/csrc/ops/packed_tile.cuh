// Warp-level packed-code tensor-core tile, shared by the packed matmul and fused layer kernels.
#pragma once

#include "device/codes.cuh"
#include "device/convert.cuh"
#include "device/mma.cuh"
#include "fq_kernels.h"

namespace fq {
namespace detail {

// Accumulates, for the 16 rows row0.. of D_hat and the 8 * NT tokens tok0.., the products of
// the raw codes with the activations over chunks [c_begin, c_end) into acc (mma D layout), and
// the activation sums of token tok0 + 8 nt + g into xs[nt] (only nt == xs_tile when xs_tile >= 0).
// `act(tok, k)` returns the half2 (x[tok, k], x[tok, k + 1]), zero outside the matrix.
// U chunks are loaded (codes and activations) before any is multiplied, so that a warp with few
// chunks waits for memory ceil(chunks / U) times rather than once per chunk.
// kSharedCodes: the codes of rows srow0.. were copied to shared memory at `scodes` (same row
// stride, words_per_row) and are read from there.
template <bool kShared, typename V> __device__ __forceinline__ V code_load(const uint32_t* ptr) {
    if constexpr (kShared)
        return *reinterpret_cast<const V*>(ptr);
    else
        return __ldg(reinterpret_cast<const V*>(ptr));
}

template <int BITS, int NT, int U = 1, bool kSharedCodes = false, typename Act>
__device__ __forceinline__ void warp_packed_tile_accumulate(const PackedMatMulParams& p, int row0, const Act& act,
                                                            int tok0, int c_begin, int c_end, float acc[NT][4],
                                                            float xs[NT], int xs_tile, const uint32_t* scodes = nullptr,
                                                            int srow0 = 0) {
    using L = CodeLayout<BITS>;
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int r0 = row0 + g, r1 = row0 + g + 8;
    const bool v0 = r0 < p.out_features, v1 = r1 < p.out_features;
    const uint32_t* base = kSharedCodes ? scodes : p.codes;
    const int first = kSharedCodes ? srow0 : 0;
    const uint32_t* p0 = base + static_cast<int64_t>(v0 ? r0 - first : 0) * p.words_per_row;
    const uint32_t* p1 = base + static_cast<int64_t>(v1 ? r1 - first : 0) * p.words_per_row;
    for (int cb = c_begin; cb < c_end; cb += U) {
        uint32_t wa[U][L::kLaneWords], wb[U][L::kLaneWords];
        uint32_t ua[U][L::kSteps][NT], ub[U][L::kSteps][NT];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = cb + u;
            const int w0 = c * L::kChunkWords + q * L::kLaneWords;
            const bool in = c < c_end && w0 < p.words_per_row;
            if constexpr (L::kLaneWords == 2) {
                const uint2 a = (in && v0) ? code_load<kSharedCodes, uint2>(p0 + w0) : make_uint2(0, 0);
                const uint2 b = (in && v1) ? code_load<kSharedCodes, uint2>(p1 + w0) : make_uint2(0, 0);
                wa[u][0] = a.x;
                wa[u][1] = a.y;
                wb[u][0] = b.x;
                wb[u][1] = b.y;
            } else {
                const uint4 a = (in && v0) ? code_load<kSharedCodes, uint4>(p0 + w0) : make_uint4(0, 0, 0, 0);
                const uint4 b = (in && v1) ? code_load<kSharedCodes, uint4>(p1 + w0) : make_uint4(0, 0, 0, 0);
                wa[u][0] = a.x;
                wa[u][1] = a.y;
                wa[u][2] = a.z;
                wa[u][3] = a.w;
                wb[u][0] = b.x;
                wb[u][1] = b.y;
                wb[u][2] = b.z;
                wb[u][3] = b.w;
            }
#pragma unroll
            for (int s = 0; s < L::kSteps; ++s) {
                const int lw = s / L::kStepsPerWord, sub = s % L::kStepsPerWord;
                const int k = (w0 + lw) * L::kCodesPerWord + 2 * sub;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int tok = tok0 + nt * 8 + g;
                    ua[u][s][nt] = c < c_end ? act(tok, k) : 0u;
                    ub[u][s][nt] = c < c_end ? act(tok, k + L::kPairStride) : 0u;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (U > 1 && cb + u >= c_end) break;
#pragma unroll
            for (int s = 0; s < L::kSteps; ++s) {
                const int lw = s / L::kStepsPerWord, sub = s % L::kStepsPerWord;
                const int sh = 2 * BITS * sub;
                uint32_t a[4];
                a[0] = decode_pair<BITS>(wa[u][lw], sh);
                a[1] = decode_pair<BITS>(wb[u][lw], sh);
                a[2] = decode_pair<BITS>(wa[u][lw], sh + BITS);
                a[3] = decode_pair<BITS>(wb[u][lw], sh + BITS);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const uint32_t u0 = ua[u][s][nt], u1 = ub[u][s][nt];
                    if (xs_tile < 0 || xs_tile == nt) {
                        const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&u0));
                        const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&u1));
                        xs[nt] += (f0.x + f0.y) + (f1.x + f1.y);
                    }
                    mma16816(acc[nt], a, prmt(u0, u1, 0x5410), prmt(u0, u1, 0x7632));
                }
            }
        }
    }
}

template <int BITS, int NT, int U = 1, bool kSharedCodes = false, typename Act>
__device__ __forceinline__ void warp_packed_tile(const PackedMatMulParams& p, int row0, const Act& act, int tok0,
                                                 int c_begin, int c_end, float acc[NT][4], float xs[NT], int xs_tile,
                                                 const uint32_t* scodes = nullptr, int srow0 = 0) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        xs[nt] = 0.f;
        acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    }
    warp_packed_tile_accumulate<BITS, NT, U, kSharedCodes>(p, row0, act, tok0, c_begin, c_end, acc, xs, xs_tile, scodes,
                                                           srow0);
}

// Activations of warp_packed_tile from fp16 rows in shared memory: c[tok * ld + k], zero for
// tok >= rows or k >= cols.
struct RowAct {
    const __half* c;
    int rows, ld, cols;
    __device__ __forceinline__ uint32_t operator()(int tok, int k) const {
        if (tok >= rows || k >= cols) return 0u;
        return *reinterpret_cast<const uint32_t*>(c + tok * ld + k);
    }
};

// acc -= zero[row] * xs[token], with xs summed over the quad and moved to the D layout.
// `zero`: a copy of p.zero's rows first.. (e.g. in shared memory) to read instead.
template <int NT>
__device__ __forceinline__ void apply_zero(const PackedMatMulParams& p, int row0, float acc[NT][4], float xs[NT],
                                           const __half* zero = nullptr, int first = 0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int r0 = row0 + g, r1 = row0 + g + 8;
    const float z0 = r0 < p.out_features ? __half2float(zero ? zero[r0 - first] : p.zero[r0]) : 0.f;
    const float z1 = r1 < p.out_features ? __half2float(zero ? zero[r1 - first] : p.zero[r1]) : 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        float s = xs[nt];
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        const float s0 = __shfl_sync(0xffffffffu, s, (2 * q) * 4);
        const float s1 = __shfl_sync(0xffffffffu, s, (2 * q + 1) * 4);
        acc[nt][0] -= z0 * s0;
        acc[nt][1] -= z0 * s1;
        acc[nt][2] -= z1 * s0;
        acc[nt][3] -= z1 * s1;
    }
}

}  // namespace detail
}  // namespace fq
