// Device helpers shared by the kernels: type conversion, tensor-core mma, code decoding,
// block-level building blocks (Walsh-Hadamard, DCT, frame DFT) and a grid barrier.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fq_kernels.h"

namespace fq {
namespace detail {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

// D += A B, m16n8k16, fp16 inputs, fp32 accumulation. Fragment layout (PTX ISA):
// A: a0 (row g, k 2q..2q+1), a1 (row g+8, same k), a2 (row g, k 2q+8..), a3 (row g+8, k 2q+8..);
// B: b0 (k 2q..2q+1, col g), b1 (k 2q+8.., col g); D: d0,d1 (row g, cols 2q, 2q+1), d2,d3 (row g+8),
// with g = lane / 4 and q = lane % 4.
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// Code layout seen by one lane (bits in {2, 4, 8}; packed layout v1, fq_export/packing.py).
// Word w of a row holds codes w * kCodesPerWord + j at bit bits * j. The 4 lanes of a quad own
// consecutive slices of kLaneWords words; each k16 step a lane feeds 4 codes of one word: pair
// (j, j + kPairStride) into a0/a1 and (j + 1, j + 1 + kPairStride) into a2/a3, j = 2 * sub.
// The activations are read in the same order, so the product is the plain dot product.
template <int BITS> struct CodeLayout {
    static_assert(BITS == 2 || BITS == 4 || BITS == 8, "tensor-core path supports 2, 4, 8 bits");
    static constexpr int kLaneWords = (BITS == 2) ? 2 : 4;       // 8- or 16-byte loads
    static constexpr int kCodesPerWord = 32 / BITS;
    static constexpr int kPairStride = 16 / BITS;                 // code distance of the two halves
    static constexpr int kStepsPerWord = 8 / BITS;
    static constexpr int kSteps = kLaneWords * kStepsPerWord;     // k16 steps per chunk
    static constexpr int kChunkWords = 4 * kLaneWords;            // words of one row per chunk
    static constexpr uint32_t kMask2 = ((1u << BITS) - 1u) * 0x00010001u;
};

// Half2 (c_j, c_{j + kPairStride}) as exact fp16 integers, j = 2 * sub + odd.
template <int BITS> __device__ __forceinline__ uint32_t decode_pair(uint32_t word, int shift) {
    constexpr uint32_t kMagic = 0x64006400u;  // fp16 1024.0 in both halves: 1024 + c is exact
    uint32_t h = ((word >> shift) & CodeLayout<BITS>::kMask2) | kMagic;
    __half2 v = __hsub2(*reinterpret_cast<__half2*>(&h), __half2half2(__ushort_as_half(0x6400)));
    return *reinterpret_cast<uint32_t*>(&v);
}

// Generic code read (any bits of fq_export.packing, including 3): code `col` of one row.
__device__ __forceinline__ uint32_t read_code(const uint32_t* row, int col, int bits) {
    const int bit = bits * (col & 31);
    const int word = (col >> 5) * bits + (bit >> 5);
    const int shift = bit & 31;
    uint64_t wide = row[word];
    if (shift + bits > 32) wide |= static_cast<uint64_t>(row[word + 1]) << 32;
    return static_cast<uint32_t>(wide >> shift) & ((1u << bits) - 1u);
}

// ---- block-level rotation on a fp32 vector in shared memory -------------------------------

// Unnormalized Walsh-Hadamard transform along the power axis of x[i * odd + col], in passes
// of up to 4 bits held in registers (one barrier per pass).
__device__ inline void block_fwht(float* x, int power, int odd) {
    const int log2n = __ffs(power) - 1;
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
                if (e < pts) v[e] = x[base + e * stride];
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
#pragma unroll
            for (int e = 0; e < 16; ++e)
                if (e < pts) x[base + e * stride] = v[e];
        }
        __syncthreads();
    }
}

// In-place R x (forward) or R^T x on a shared-memory vector; tmp holds dim floats when odd > 1.
// Ends with a barrier.
__device__ inline void block_rotate(const RotationParams& p, float* x, float* tmp, bool transpose) {
    const int dim = p.dim, odd = p.odd;
    const float norm = rsqrtf(static_cast<float>(p.power));
    if (!transpose) {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) x[i] *= p.signs[i];
        __syncthreads();
        block_fwht(x, p.power, odd);
        if (odd > 1) {
            // Y[i, l] = sum_n X[i, n] C[l, n]
            for (int e = threadIdx.x; e < dim; e += blockDim.x) {
                const int i = e / odd, l = e % odd;
                const float* row = x + i * odd;
                const float* c = p.dct + l * odd;
                float acc = 0.f;
                for (int n = 0; n < odd; ++n) acc = fmaf(row[n], __ldg(c + n), acc);
                tmp[e] = acc;
            }
            __syncthreads();
            for (int e = threadIdx.x; e < dim; e += blockDim.x) x[e] = tmp[e] * norm;
        } else {
            for (int e = threadIdx.x; e < dim; e += blockDim.x) x[e] *= norm;
        }
    } else {
        if (odd > 1) {
            // X[i, n] = sum_l Y[i, l] C[l, n]
            for (int e = threadIdx.x; e < dim; e += blockDim.x) {
                const int i = e / odd, n = e % odd;
                const float* row = x + i * odd;
                float acc = 0.f;
                for (int l = 0; l < odd; ++l) acc = fmaf(row[l], __ldg(p.dct + l * odd + n), acc);
                tmp[e] = acc;
            }
            __syncthreads();
            for (int e = threadIdx.x; e < dim; e += blockDim.x) x[e] = tmp[e];
            __syncthreads();
        }
        block_fwht(x, p.power, odd);
        for (int i = threadIdx.x; i < dim; i += blockDim.x) x[i] *= p.signs[i] * norm;
    }
    __syncthreads();
}

// ---- frame analysis / synthesis with the per-block DFT on tensor cores ---------------------

// Copy the kp x kp DFT table (or its transpose) into shared memory. Ends with a barrier.
__device__ inline void load_dft(const __half* table, __half* smem, int kp) {
    const uint32_t* src = reinterpret_cast<const uint32_t*>(table);
    uint32_t* dst = reinterpret_cast<uint32_t*>(smem);
    for (int i = threadIdx.x; i < kp * kp / 2; i += blockDim.x) dst[i] = __ldg(src + i);
    __syncthreads();
}

constexpr int kMaxKSteps = 8;  // kp <= 128, i.e. k <= 64 (fq::kMaxFrameBlock)

// Analysis of one vector u (fp32, length d, shared or global) into c (length K): each warp
// takes 16 frame blocks at a time; bins are gathered into the A fragment, the DFT table
// (shared memory, row-major M) is B, and block i's outputs are c[i * 2k + l].
template <typename OutT>
__device__ inline void block_frame_analysis(const FrameParams& p, const float* u, OutT* c, const __half* dft) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int g = lane >> 2, q = lane & 3, ksteps = p.kp / 16, two_k = 2 * p.k;
    for (int run0 = warp * 16; run0 < p.rho_c; run0 += nwarps * 16) {
        uint32_t a[kMaxKSteps][4];
#pragma unroll
        for (int s = 0; s < kMaxKSteps; ++s) {
            if (s < ksteps) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int run = run0 + g + 8 * (r & 1);
                    const int t = 8 * s + q + 4 * (r >> 1);
                    float re = 0.f, im = 0.f;
                    if (run < p.rho_c && t < p.k) {
                        const int b = run * p.k + t;
                        const int j = __ldg(p.gather_index + b);
                        const float w = __ldg(p.gather_weight + b);
                        re = u[2 * j] * w;
                        im = u[2 * j + 1] * w;
                    }
                    a[s][r] = pack_half2(re, im);
                }
            }
        }
        for (int nt = 0; nt < p.kp / 8; ++nt) {
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
            const __half* brow = dft + (nt * 8 + g) * p.kp + 2 * q;
#pragma unroll
            for (int s = 0; s < kMaxKSteps; ++s) {
                if (s < ksteps) {
                    const uint32_t b0 = *reinterpret_cast<const uint32_t*>(brow + 16 * s);
                    const uint32_t b1 = *reinterpret_cast<const uint32_t*>(brow + 16 * s + 8);
                    mma16816(acc, a[s], b0, b1);
                }
            }
            const int col = nt * 8 + 2 * q;
            if (col < two_k) {
                const int r0 = run0 + g, r1 = run0 + g + 8;
                if (r0 < p.rho_c) {
                    c[r0 * two_k + col] = from_float<OutT>(acc[0]);
                    c[r0 * two_k + col + 1] = from_float<OutT>(acc[1]);
                }
                if (r1 < p.rho_c) {
                    c[r1 * two_k + col] = from_float<OutT>(acc[2]);
                    c[r1 * two_k + col + 1] = from_float<OutT>(acc[3]);
                }
            }
        }
    }
}

// Synthesis of one vector: runs = per-block inverse DFT of z (A = z, B = M^T from shared memory)
// into `runs` (fp32 shared, K floats), barrier, then v_c[j] = sum_s w[s, j] runs[bin[s, j]] into
// v (fp32, d floats, shared). `zload(i)` returns z[i] as float. Ends with a barrier.
template <typename ZLoad>
__device__ inline void block_frame_synthesis(const FrameParams& p, ZLoad zload, float* runs, float* v,
                                             const __half* dft_t) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int g = lane >> 2, q = lane & 3, ksteps = p.kp / 16, two_k = 2 * p.k;
    for (int run0 = warp * 16; run0 < p.rho_c; run0 += nwarps * 16) {
        uint32_t a[kMaxKSteps][4];
#pragma unroll
        for (int s = 0; s < kMaxKSteps; ++s) {
            if (s < ksteps) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int run = run0 + g + 8 * (r & 1);
                    const int l = 16 * s + 2 * q + 8 * (r >> 1);  // real index inside the block
                    float z0 = 0.f, z1 = 0.f;
                    if (run < p.rho_c && l < two_k) {
                        z0 = zload(run * two_k + l);
                        z1 = zload(run * two_k + l + 1);
                    }
                    a[s][r] = pack_half2(z0, z1);
                }
            }
        }
        for (int nt = 0; nt < p.kp / 8; ++nt) {
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
            const __half* brow = dft_t + (nt * 8 + g) * p.kp + 2 * q;
#pragma unroll
            for (int s = 0; s < kMaxKSteps; ++s) {
                if (s < ksteps) {
                    const uint32_t b0 = *reinterpret_cast<const uint32_t*>(brow + 16 * s);
                    const uint32_t b1 = *reinterpret_cast<const uint32_t*>(brow + 16 * s + 8);
                    mma16816(acc, a[s], b0, b1);
                }
            }
            const int col = nt * 8 + 2 * q;
            if (col < two_k) {
                const int r0 = run0 + g, r1 = run0 + g + 8;
                if (r0 < p.rho_c) {
                    runs[r0 * two_k + col] = acc[0];
                    runs[r0 * two_k + col + 1] = acc[1];
                }
                if (r1 < p.rho_c) {
                    runs[r1 * two_k + col] = acc[2];
                    runs[r1 * two_k + col + 1] = acc[3];
                }
            }
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < p.d_c; j += blockDim.x) {
        const int b0 = __ldg(p.synth_bin + j), b1 = __ldg(p.synth_bin + p.d_c + j);
        const float w0 = __ldg(p.synth_weight + j), w1 = __ldg(p.synth_weight + p.d_c + j);
        v[2 * j] = w0 * runs[2 * b0] + w1 * runs[2 * b1];
        v[2 * j + 1] = w0 * runs[2 * b0 + 1] + w1 * runs[2 * b1 + 1];
    }
    __syncthreads();
}

// ---- grid barrier for cooperative launches -------------------------------------------------

// All blocks of the grid wait here. The counter starts at 0 (or 0x80000000) and each crossing
// adds exactly 2^31 (block 0 adds 2^31 - (n - 1), the others 1), so its top bit flips once
// all blocks arrived and the counter is ready for the next crossing or launch.
__device__ inline void grid_barrier(unsigned int* counter) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int n = gridDim.x;
        const unsigned int inc = (blockIdx.x == 0) ? (0x80000000u - (n - 1)) : 1u;
        __threadfence();
        const unsigned int old = atomicAdd(counter, inc);
        while (((old ^ *reinterpret_cast<volatile unsigned int*>(counter)) & 0x80000000u) == 0) {
        }
        __threadfence();
    }
    __syncthreads();
}

}  // namespace detail
}  // namespace fq
