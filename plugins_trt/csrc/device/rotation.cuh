// The randomized Hadamard rotation R = (H_power kron C_odd) diag(signs) of a padded shared-memory
// row: the odd factor's DCT mix (CUDA cores, or tensor cores for odd factors 16..64) and the whole
// rotation as block-wide steps.
#pragma once

#include "device/convert.cuh"
#include "device/mma.cuh"
#include "device/rows.cuh"
#include "device/walsh_hadamard.cuh"
#include "fq_kernels.h"

namespace fq {
namespace detail {

// The odd factor of a rotation on x[sp(i * odd + n)], i < power (a padded shared vector):
// forward Y[i, l] = sum_n X[i, n] C[l, n], transpose X[i, n] = sum_l Y[i, l] C[l, n], times
// `scale`. tmp holds power * odd floats. The caller's barrier precedes it; ends with a barrier.
// kSharedTable: dct was staged in shared memory (read with plain loads).
template <bool kSharedTable = false>
__device__ inline void block_odd_mix(float* x, float* tmp, int power, int odd, const float* dct, bool transpose,
                                     float scale) {
    auto table = [dct](int i) { return kSharedTable ? dct[i] : tload(dct + i); };
    const int dim = power * odd;
    if (!transpose) {
        // Consecutive threads take consecutive i for one l, so a warp reads one table entry at a
        // time (a broadcast; 43 entries apart for 11008 otherwise).
        for (int e = threadIdx.x; e < dim; e += blockDim.x) {
            const int l = e / power, i = e % power;
            float acc = 0.f;
#pragma unroll 8  // loads of 8 terms in flight at once (odd is 43 for 11008)
            for (int n = 0; n < odd; ++n) acc = fmaf(x[sp(i * odd + n)], table(l * odd + n), acc);
            tmp[i * odd + l] = acc;
        }
    } else {
        // Here consecutive threads take consecutive n, so the table reads are coalesced; the
        // mapping above was the slower one in this direction.
        for (int e = threadIdx.x; e < dim; e += blockDim.x) {
            const int i = e / odd, n = e % odd;
            float acc = 0.f;
#pragma unroll 8
            for (int l = 0; l < odd; ++l) acc = fmaf(x[sp(i * odd + l)], table(l * odd + n), acc);
            tmp[e] = acc;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < dim; e += blockDim.x) x[sp(e)] = tmp[e] * scale;
    __syncthreads();
}

// The odd factor on tensor cores (the many-row kernels, 16 <= odd <= 64, e.g. 43 for 11008):
// out[i, col] = sum_k x[i, k] B[col][k] with fp16 operands and fp32 sums, B from
// stage_odd_mma_table: forward B[l][n] = C[l][n], transpose B[n][l] = C[l][n], zero beyond odd.
// Where a row of x is 43 values wide, the CUDA-core loop above makes two shared-memory loads per
// multiply-add (11008-wide rows: 473k of them per row).
constexpr int kOddMmaMin = 16, kOddMmaMax = 64;
__host__ __device__ __forceinline__ constexpr int odd_mma_pad(int odd) { return round16(odd); }
// Rows pad / 2 + 4 words apart (4 mod 8): a warp's B-fragment loads hit distinct banks.
__host__ __device__ __forceinline__ constexpr int odd_mma_pitch(int odd) { return odd_mma_pad(odd) + 8; }
__host__ __device__ __forceinline__ constexpr int odd_mma_floats(int odd) {
    return odd_mma_pad(odd) * odd_mma_pitch(odd) / 2;
}
__host__ __device__ __forceinline__ constexpr bool odd_on_mma(int power, int odd) {
    return odd >= kOddMmaMin && odd <= kOddMmaMax && power % 16 == 0;
}

// B of block_odd_mix_mma from the row-major DCT C (global memory), fp16 in shared memory.
// The block's threads together; no barrier.
__device__ inline void stage_odd_mma_table(__half* b, const float* dct, int odd, bool transpose) {
    const int pitch = odd_mma_pitch(odd), n = odd_mma_pad(odd) * pitch;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const int col = e / pitch, k = e % pitch;
        const float v = (col < odd && k < odd) ? tload(dct + (transpose ? k * odd + col : col * odd + k)) : 0.f;
        b[e] = __float2half_rn(v);
    }
}

// As block_odd_mix, with the table of stage_odd_mma_table. The caller's barrier precedes it;
// ends with a barrier.
__device__ inline void block_odd_mix_mma(float* x, float* tmp, int power, int odd, const __half* b, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int g = lane >> 2, q = lane & 3;
    const int pad = odd_mma_pad(odd), pitch = odd_mma_pitch(odd), ksteps = pad / 16;
    auto xa = [&](int i, int k) { return k < odd ? x[sp(i * odd + k)] : 0.f; };
    for (int mt = warp; mt < power / 16; mt += nwarps) {
        const int i0 = mt * 16 + g, i1 = i0 + 8;
        uint32_t a[kOddMmaMax / 16][4];
#pragma unroll
        for (int s = 0; s < kOddMmaMax / 16; ++s) {
            if (s < ksteps) {
                const int k = 16 * s + 2 * q;
                a[s][0] = pack_half2(xa(i0, k), xa(i0, k + 1));
                a[s][1] = pack_half2(xa(i1, k), xa(i1, k + 1));
                a[s][2] = pack_half2(xa(i0, k + 8), xa(i0, k + 9));
                a[s][3] = pack_half2(xa(i1, k + 8), xa(i1, k + 9));
            }
        }
        for (int nt = 0; nt < pad / 8; ++nt) {
            float acc[4];
            mma_tile(acc, a, b, pitch, nt, ksteps);
            const int col = nt * 8 + 2 * q;
            if (col < odd) {
                tmp[i0 * odd + col] = acc[0];
                tmp[i1 * odd + col] = acc[2];
            }
            if (col + 1 < odd) {
                tmp[i0 * odd + col + 1] = acc[1];
                tmp[i1 * odd + col + 1] = acc[3];
            }
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < power * odd; e += blockDim.x) x[sp(e)] = tmp[e] * scale;
    __syncthreads();
}

// In-place R x (forward) or R^T x on a padded shared-memory vector; tmp holds dim floats when
// odd > 1. `signed_input`: the forward rotation's diag(signs) was already applied (load_row's
// `mul`). kShared: p.signs points to sign bits (stage_sign_bits, stored as words) and p.dct to
// the DCT, both in shared memory. odd_mma: the odd factor's table of stage_odd_mma_table (shared
// memory), to mix on tensor cores. signs_outside: the caller applies diag(signs) and the scale of
// rotation_fold_scale (a SignFold): before the call for the forward rotation, after it for the
// transpose. Starts and ends with a barrier.
template <bool kShared = false>
__device__ inline void block_rotate(const RotationParams& p, float* x, float* tmp, bool transpose,
                                    bool signed_input = false, const __half* odd_mma = nullptr,
                                    bool signs_outside = false) {
    const int dim = p.dim, odd = p.odd;
    const float norm = rsqrtf(static_cast<float>(p.power));
    __syncthreads();
    if (!transpose) {
        if (!signed_input && !signs_outside) {
            if constexpr (kShared)
                scale_row_bits(x, dim, reinterpret_cast<const uint32_t*>(p.signs), 1.f);
            else
                scale_row(x, dim, p.signs, 1.f);
            __syncthreads();
        }
        block_fwht(x, p.power, odd);
        if (odd > 1) {
            if (odd_mma)
                block_odd_mix_mma(x, tmp, p.power, odd, odd_mma, norm);
            else
                block_odd_mix<kShared>(x, tmp, p.power, odd, p.dct, false, norm);
        } else if (!signs_outside) {
            for (int e = threadIdx.x; e < dim; e += blockDim.x) x[sp(e)] *= norm;
        }
    } else {
        if (odd > 1) {
            if (odd_mma)
                block_odd_mix_mma(x, tmp, p.power, odd, odd_mma, 1.f);
            else
                block_odd_mix<kShared>(x, tmp, p.power, odd, p.dct, true, 1.f);
        }
        block_fwht(x, p.power, odd);
        if (!signs_outside) {
            if constexpr (kShared)
                scale_row_bits(x, dim, reinterpret_cast<const uint32_t*>(p.signs), norm);
            else
                scale_row(x, dim, p.signs, norm);
        }
    }
    __syncthreads();
}

// The scale that block_rotate leaves to the caller with signs_outside: 1 / sqrt(power), except
// for a forward rotation with an odd factor (whose mixing applies it).
__device__ inline float rotation_fold_scale(const RotationParams& p, bool transpose) {
    return (transpose || p.odd == 1) ? rsqrtf(static_cast<float>(p.power)) : 1.f;
}

}  // namespace detail
}  // namespace fq
