// Walsh-Hadamard transforms: butterflies in registers, and the block-wide transform along the
// power axis of a padded shared-memory row (device/rows.cuh) in radix-16 passes.
#pragma once

#include "device/rows.cuh"

namespace fq {
namespace detail {

// Walsh-Hadamard butterflies on all N points of v (N a power of two known at compile time).
template <int N> __device__ __forceinline__ void fwht_registers(float (&v)[N]) {
#pragma unroll
    for (int h = 1; h < N; h <<= 1) {
#pragma unroll
        for (int e = 0; e < N; ++e) {
            if (!(e & h)) {
                const float a = v[e], b = v[e + h];
                v[e] = a + b;
                v[e + h] = a - b;
            }
        }
    }
}

// Radix-16 Walsh-Hadamard butterflies on v[0..pts) (pts a power of two up to 16), in registers.
__device__ __forceinline__ void fwht_registers(float (&v)[16], int pts) {
#pragma unroll
    for (int h = 1; h < 16; h <<= 1) {
        if (h < pts) {
#pragma unroll
            for (int e = 0; e < 16; ++e) {
                if (e < pts && !(e & h)) {
                    const float a = v[e], b = v[e + h];
                    v[e] = a + b;
                    v[e + h] = a - b;
                }
            }
        }
    }
}

// One radix-16 coset of a power-of-two row: points p[e * step], e < 16.
__device__ __forceinline__ void fwht_coset16(float* p, int step) {
    float v[16];
#pragma unroll
    for (int e = 0; e < 16; ++e) v[e] = p[e * step];
    fwht_registers(v, 16);
#pragma unroll
    for (int e = 0; e < 16; ++e) p[e * step] = v[e];
}

// Unnormalized Walsh-Hadamard transform along the power axis of x[sp(i * odd + col)], in passes
// of up to 4 bits held in registers (one barrier per pass).
__device__ inline void block_fwht(float* x, int power, int odd) {
    const int log2n = __ffs(power) - 1;
    if (odd == 1) {
        // No odd axis: coset c of pass `lo` has the points base + e 2^lo, whose padded offsets are
        // sp(base) + e * step: step 1 in the first pass (base is a multiple of the pass' points,
        // which stay inside one 16-float group), 17 * 2^(lo - 4) after it (whole groups apart).
        // No division by `odd`, one address per coset instead of one per point.
        for (int lo = 0; lo < log2n; lo += 4) {
            const int r = min(4, log2n - lo), pts = 1 << r, cosets = power >> r;
            const int step = lo == 0 ? 1 : 17 << (lo - 4);
            for (int c = threadIdx.x; c < cosets; c += blockDim.x) {
                const int low = c & ((1 << lo) - 1), high = c >> lo;
                float* p = x + sp((high << (lo + r)) | low);
                if (pts == 16) {
                    fwht_coset16(p, step);
                } else {
                    float v[16];
#pragma unroll
                    for (int e = 0; e < 16; ++e)
                        if (e < pts) v[e] = p[e * step];
                    fwht_registers(v, pts);
#pragma unroll
                    for (int e = 0; e < 16; ++e)
                        if (e < pts) p[e * step] = v[e];
                }
            }
            __syncthreads();
        }
        return;
    }
    const int total = power * odd;
    for (int lo = 0; lo < log2n; lo += 4) {
        const int r = min(4, log2n - lo), pts = 1 << r;
        const int cosets = total >> r;
        for (int c = threadIdx.x; c < cosets; c += blockDim.x) {
            const int col = c % odd, rest = c / odd;
            const int low = rest & ((1 << lo) - 1), high = rest >> lo;
            const int base = (((high << (lo + r)) | low) * odd) + col;
            const int stride = (1 << lo) * odd;
            float v[16];
#pragma unroll
            for (int e = 0; e < 16; ++e)
                if (e < pts) v[e] = x[sp(base + e * stride)];
            fwht_registers(v, pts);
#pragma unroll
            for (int e = 0; e < 16; ++e)
                if (e < pts) x[sp(base + e * stride)] = v[e];
        }
        __syncthreads();
    }
}

}  // namespace detail
}  // namespace fq
