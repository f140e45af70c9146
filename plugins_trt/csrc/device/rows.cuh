// Rows held in shared memory (fp32, padded against bank conflicts) and the loads that fill and
// empty them: global loads in batches, table reads through the read-only path, sign bits.
#pragma once

#include <cuda_fp16.h>
#include <cstdint>

#include "device/convert.cuh"

namespace fq {
namespace detail {

// Rows held in shared memory (fp32) skip one float every 16: the radix-16 Walsh-Hadamard passes
// then hit 32 distinct banks (a plain layout puts the 16 points of a coset 16 floats apart).
__host__ __device__ __forceinline__ constexpr int sp(int i) { return i + (i >> 4); }
// Floats of a padded row, rounded to 16 bytes so that what follows it in shared memory is aligned.
__host__ __device__ __forceinline__ constexpr int padded_floats(int n) { return (n + (n >> 4) + 4) & ~3; }
__host__ __device__ __forceinline__ constexpr int round4(int n) { return (n + 3) & ~3; }
__host__ __device__ __forceinline__ constexpr int round16(int n) { return (n + 15) & ~15; }

// Global loads started kBatch at a time before any use: at few rows the kernels are latency-bound,
// and a loop that waits on each load in turn costs one memory round trip per iteration.
constexpr int kBatch = 8;

template <bool Coherent, typename V> __device__ __forceinline__ V gload(const V* p) {
    if constexpr (Coherent)
        return __ldcg(p);  // written earlier in the same launch: through L2
    else
        return __ldg(p);
}

// Table reads (signs, DCT, frame gathers, bias): read-only global memory, through the
// read-only data path (plain loads made the many-row rotation kernel 1.6x slower).
template <typename V> __device__ __forceinline__ V tload(const V* p) { return __ldg(p); }
// A table that may have been staged in shared memory (kShared: plain loads) or not (tload).
template <bool kShared, typename V> __device__ __forceinline__ V table_at(const V* p, int i) {
    if constexpr (kShared)
        return p[i];
    else
        return tload(p + i);
}

// dst[sp(i)] = (float) src[i] * (mul ? mul[i] : 1), i < n; no barrier.
template <bool Coherent = false, typename T>
__device__ inline void load_row(const T* src, int n, float* dst, const float* mul = nullptr) {
    constexpr int V = 16 / sizeof(T);  // elements per 16-byte load
    if (n % V == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
        const int nv = n / V;
        for (int base = threadIdx.x; base < nv; base += kBatch * blockDim.x) {
            uint4 r[kBatch];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                if (i < nv) r[b] = gload<Coherent>(reinterpret_cast<const uint4*>(src) + i);
            }
            float m[kBatch][V];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
#pragma unroll
                for (int e = 0; e < V; ++e) m[b][e] = (mul && i < nv) ? tload(mul + i * V + e) : 1.f;
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                if (i < nv) {
                    const T* v = reinterpret_cast<const T*>(&r[b]);
#pragma unroll
                    for (int e = 0; e < V; ++e) dst[sp(i * V + e)] = to_float(v[e]) * m[b][e];
                }
            }
        }
    } else {
        for (int base = threadIdx.x; base < n; base += kBatch * blockDim.x) {
            float r[kBatch];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                r[b] = i < n ? to_float(gload<Coherent>(src + i)) * (mul ? tload(mul + i) : 1.f) : 0.f;
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                if (i < n) dst[sp(i)] = r[b];
            }
        }
    }
}

// dst[i] = src[sp(i)] * scale + (add ? add[i] : 0), i < n; no barrier.
template <typename T>
__device__ inline void store_row(T* dst, int n, const float* src, float scale = 1.f, const float* add = nullptr) {
    constexpr int V = 16 / sizeof(T);
    if (n % V == 0 && (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
        const int nv = n / V;
        for (int base = threadIdx.x; base < nv; base += kBatch * blockDim.x) {
            float a[kBatch][V];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
#pragma unroll
                for (int e = 0; e < V; ++e) a[b][e] = (add && i < nv) ? tload(add + i * V + e) : 0.f;
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                if (i < nv) {
                    uint4 r;
                    T* v = reinterpret_cast<T*>(&r);
#pragma unroll
                    for (int e = 0; e < V; ++e) v[e] = from_float<T>(src[sp(i * V + e)] * scale + a[b][e]);
                    reinterpret_cast<uint4*>(dst)[i] = r;
                }
            }
        }
    } else {
        for (int base = threadIdx.x; base < n; base += kBatch * blockDim.x) {
            float a[kBatch];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                a[b] = (add && i < n) ? tload(add + i) : 0.f;
            }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                const int i = base + b * blockDim.x;
                if (i < n) dst[i] = from_float<T>(src[sp(i)] * scale + a[b]);
            }
        }
    }
}

// x[sp(i)] *= mul[i] * scale, i < n; no barrier.
__device__ inline void scale_row(float* x, int n, const float* mul, float scale) {
    for (int base = threadIdx.x; base < n; base += kBatch * blockDim.x) {
        float m[kBatch];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int i = base + b * blockDim.x;
            m[b] = i < n ? tload(mul + i) * scale : 0.f;
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int i = base + b * blockDim.x;
            if (i < n) x[sp(i)] *= m[b];
        }
    }
}

// Sign bits of a +-1 table into shared memory: bit i % 32 of word i / 32 is set where
// signs[i] < 0 (n / 8 bytes instead of 4 n). The block's warps together, kBatch words per warp
// in flight at once (one load round trip per word, in turn, leaves a block waiting on the table
// before its first row); no barrier.
__device__ inline void stage_sign_bits(uint32_t* bits, const float* signs, int n) {
    const int lane = threadIdx.x & 31, nwarps = blockDim.x >> 5, words = (n + 31) / 32;
    for (int w0 = threadIdx.x >> 5; w0 < words; w0 += kBatch * nwarps) {
        bool neg[kBatch];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int i = (w0 + b * nwarps) * 32 + lane;
            neg[b] = i < n && tload(signs + i) < 0.f;
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const unsigned m = __ballot_sync(0xffffffffu, neg[b]);
            if (lane == 0 && w0 + b * nwarps < words) bits[w0 + b * nwarps] = m;
        }
    }
}

// x[sp(i)] *= scale, negated where sign bit i is set (stage_sign_bits); no barrier.
__device__ inline void scale_row_bits(float* x, int n, const uint32_t* bits, float scale) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[sp(i)] * scale;
        x[sp(i)] = ((bits[i >> 5] >> (i & 31)) & 1u) ? -v : v;
    }
}

// A rotation's diag(signs) and scale applied where a frame step reads (analysis) or writes
// (synthesis) complex coordinate j, real coordinates 2j and 2j + 1, instead of in a pass of its
// own (block_rotate's signs_outside). bits: sign bits (stage_sign_bits) in shared memory; none
// (nullptr): nothing to apply.
struct SignFold {
    const uint32_t* bits = nullptr;
    float scale = 1.f;
    __device__ __forceinline__ void apply(int j, float& re, float& im) const {
        if (!bits) return;
        const uint32_t word = bits[j >> 4], shift = (2 * j) & 31;
        re = __int_as_float(__float_as_int(re * scale) ^ (((word >> shift) & 1u) << 31));
        im = __int_as_float(__float_as_int(im * scale) ^ (((word >> (shift + 1)) & 1u) << 31));
    }
};

}  // namespace detail
}  // namespace fq
