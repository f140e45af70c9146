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

// One 16 x 8 output tile of A B: acc = sum over k-steps s < ksteps of mma16816 with A fragments
// a[s] and B from a shared-memory table whose row n (halves `pitch` apart) holds output column n
// along k; `nt` picks output columns 8 nt .. 8 nt + 7.
template <int KS>
__device__ __forceinline__ void mma_tile(float acc[4], const uint32_t (&a)[KS][4], const __half* table, int pitch, int nt,
                                         int ksteps) {
    const int lane = threadIdx.x & 31;
    const __half* brow = table + (nt * 8 + (lane >> 2)) * pitch + 2 * (lane & 3);
    acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
#pragma unroll
    for (int s = 0; s < KS; ++s) {
        if (s < ksteps) {
            const uint32_t b0 = *reinterpret_cast<const uint32_t*>(brow + 16 * s);
            const uint32_t b1 = *reinterpret_cast<const uint32_t*>(brow + 16 * s + 8);
            mma16816(acc, a[s], b0, b1);
        }
    }
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

// ---- profiling builds (-DFQ_TRACE): %globaltimer stamps of thread 0, read with read_trace() --

#ifdef FQ_TRACE
static __device__ unsigned long long g_trace[64];  // one per translation unit
// Slots < 32: block 0 only; slots >= 32: any block (the decode kernel's last block).
#define FQ_STAMP(slot)                                                                      \
    do {                                                                                    \
        if (threadIdx.x == 0 && ((slot) >= 32 || blockIdx.x == 0)) {                        \
            unsigned long long t_;                                                          \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                          \
            ::fq::detail::g_trace[(slot)] = t_;                                             \
        }                                                                                   \
    } while (0)
#else
#define FQ_STAMP(slot) \
    do {               \
    } while (0)
#endif

// ---- shared-memory row vectors and latency-batched global loads ---------------------------

// Rows held in shared memory (fp32) skip one float every 16: the radix-16 Walsh-Hadamard passes
// then hit 32 distinct banks (a plain layout puts the 16 points of a coset 16 floats apart).
__host__ __device__ __forceinline__ constexpr int sp(int i) { return i + (i >> 4); }
// Floats of a padded row, rounded to 16 bytes so that what follows it in shared memory is aligned.
__host__ __device__ __forceinline__ constexpr int padded_floats(int n) { return (n + (n >> 4) + 4) & ~3; }
__host__ __device__ __forceinline__ constexpr int round4(int n) { return (n + 3) & ~3; }
__host__ __device__ __forceinline__ constexpr int round16(int n) { return (n + 15) & ~15; }

// Global loads issued kBatch at a time before any use: at few rows the kernels are latency-bound,
// and a loop that waits on each load in turn costs one memory round trip per iteration.
constexpr int kBatch = 8;

template <bool Coherent, typename V> __device__ __forceinline__ V gload(const V* p) {
    if constexpr (Coherent) return __ldcg(p);  // written earlier in the same launch: through L2
    else return __ldg(p);
}

// Table reads (signs, DCT, frame gathers, bias): read-only global memory, through the
// read-only data path (plain loads measured 1.6x slower in the many-row rotation kernel on the
// H100: 596 against 363 us for 12608 rows of 4096).
template <typename V> __device__ __forceinline__ V tload(const V* p) { return __ldg(p); }
// A table that may have been staged in shared memory (kShared: plain loads) or not (tload).
template <bool kShared, typename V> __device__ __forceinline__ V table_at(const V* p, int i) {
    if constexpr (kShared) return p[i];
    else return tload(p + i);
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
// in flight at once (one load round trip per word, in turn, kept a 4096-wide side-rows block
// waiting about 7 % of its time, H100 ncu); no barrier.
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

// ---- block-level rotation on a fp32 vector in shared memory (padded with sp) ---------------

// Walsh-Hadamard butterflies on all N points of v (N a power of two known at compile time).
template <int N>
__device__ __forceinline__ void fwht_registers(float (&v)[N]) {
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
        // mapping above measured slower in this direction on the H100.
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
            if constexpr (kShared) scale_row_bits(x, dim, reinterpret_cast<const uint32_t*>(p.signs), 1.f);
            else scale_row(x, dim, p.signs, 1.f);
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
            if constexpr (kShared) scale_row_bits(x, dim, reinterpret_cast<const uint32_t*>(p.signs), norm);
            else scale_row(x, dim, p.signs, norm);
        }
    }
    __syncthreads();
}

// The scale that block_rotate leaves to the caller with signs_outside: 1 / sqrt(power), except
// for a forward rotation with an odd factor (whose mixing applies it).
__device__ inline float rotation_fold_scale(const RotationParams& p, bool transpose) {
    return (transpose || p.odd == 1) ? rsqrtf(static_cast<float>(p.power)) : 1.f;
}

// ---- frame analysis / synthesis with the per-block DFT on tensor cores ---------------------

// Rows of the DFT table in shared memory are dft_pitch(kp) halves apart: kp / 2 + 4 words, which
// is 4 (mod 8), so the 8 rows that one B-fragment load of a warp touches (row g, word q) hit
// 32 distinct banks (kp / 2 words apart, a multiple of 8, they shared 4 to 8 lanes per bank).
__host__ __device__ __forceinline__ constexpr int dft_pitch(int kp) { return kp + 8; }
__host__ __device__ __forceinline__ constexpr int dft_floats(int kp) { return kp * dft_pitch(kp) / 2; }

// Copy the kp x kp DFT table (or its transpose) into shared memory with rows dft_pitch(kp)
// apart (16-byte loads, all issued before the stores). Ends with a barrier.
__device__ inline void load_dft(const __half* table, __half* smem, int kp) {
    const uint4* src = reinterpret_cast<const uint4*>(table);  // kp % 16 == 0: whole uint4s
    uint4* dst = reinterpret_cast<uint4*>(smem);
    const int per_row = kp / 8, pitch = dft_pitch(kp) / 8, n = kp * per_row;
    for (int base = threadIdx.x; base < n; base += kBatch * blockDim.x) {
        uint4 r[kBatch];
#pragma unroll
        for (int b = 0; b < kBatch; ++b)
            if (base + b * blockDim.x < n) r[b] = __ldg(src + base + b * blockDim.x);
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int i = base + b * blockDim.x;
            if (i < n) dst[(i / per_row) * pitch + i % per_row] = r[b];
        }
    }
    __syncthreads();
}

// Warp work items of the per-block DFTs: (group of 16 frame blocks, part of the kp / 8 output
// column tiles). `spread`: layers with few blocks split the columns too, so that every warp has
// work (shorter, at the price of each part gathering its A fragments again: the one-row kernels,
// where a row's latency is the time; the many-row kernels, where instructions are, do not);
// `max_parts` caps the split (each part gathers its A fragments again).
struct DftItems {
    int parts, items, ntiles;
    __device__ DftItems(int rho_c, int kp, int nwarps, bool spread, int max_parts = 1 << 30) {
        const int groups = (rho_c + 15) / 16;
        ntiles = kp / 8;
        parts = spread ? max(1, min(min(ntiles, max_parts), nwarps / groups)) : 1;
        items = groups * parts;
    }
    __device__ int run0(int item) const { return (item / parts) * 16; }
    __device__ int nt_begin(int item) const { return (item % parts) * ntiles / parts; }
    __device__ int nt_end(int item) const { return (item % parts + 1) * ntiles / parts; }
};

constexpr int kMaxKSteps = 8;  // kp <= 128, i.e. k <= 64 (fq::kMaxFrameBlock)
// KS (analysis, synthesis): the k-steps their registers are sized for, kp <= 16 KS.

// Analysis of one vector u (fp32, padded shared row of length d) into c (length K, global):
// each warp takes 16 frame blocks at a time; bins are gathered into the A fragment, the DFT
// table (shared memory, row-major M) is B, and block i's outputs are c[i * 2k + l].
// kShared: the gather tables of p point to shared memory.
template <typename OutT, bool kShared = false, int KS = kMaxKSteps>
__device__ inline void block_frame_analysis(const FrameParams& p, const float* u, OutT* c, const __half* dft,
                                            bool spread = true, SignFold fold = {}, int max_parts = 1 << 30) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int g = lane >> 2, q = lane & 3, ksteps = p.kp / 16, two_k = 2 * p.k, pitch = dft_pitch(p.kp);
    const DftItems work(p.rho_c, p.kp, nwarps, spread, max_parts);
    for (int item = warp; item < work.items; item += nwarps) {
        const int run0 = work.run0(item);
        // Bin (s, r) of this lane: frame coordinate j (-1: none) and its weight.
        auto bin = [&](int s, int r, int& j, float& w) {
            const int run = run0 + g + 8 * (r & 1);
            const int t = 8 * s + q + 4 * (r >> 1);
            const bool ok = s < ksteps && run < p.rho_c && t < p.k;
            j = ok ? table_at<kShared>(p.gather_index, run * p.k + t) : -1;
            w = ok ? table_at<kShared>(p.gather_weight, run * p.k + t) : 0.f;
        };
        auto gathered = [&](int j, float w) {
            float re = 0.f, im = 0.f;
            if (j >= 0) {
                re = u[sp(2 * j)] * w;
                im = u[sp(2 * j) + 1] * w;
                fold.apply(j, re, im);
            }
            return pack_half2(re, im);
        };
        uint32_t a[KS][4];
        if constexpr (kShared) {  // shared tables: no latency to batch, and fewer live registers
#pragma unroll
            for (int s = 0; s < KS; ++s) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    int j;
                    float w;
                    bin(s, r, j, w);
                    a[s][r] = gathered(j, w);
                }
            }
        } else {  // every table load in flight before the first use
            int gj[KS][4];
            float gw[KS][4];
#pragma unroll
            for (int s = 0; s < KS; ++s)
#pragma unroll
                for (int r = 0; r < 4; ++r) bin(s, r, gj[s][r], gw[s][r]);
#pragma unroll
            for (int s = 0; s < KS; ++s)
#pragma unroll
                for (int r = 0; r < 4; ++r) a[s][r] = gathered(gj[s][r], gw[s][r]);
        }
#pragma unroll 2
        for (int nt = work.nt_begin(item); nt < work.nt_end(item); ++nt) {
            float acc[4];
            mma_tile(acc, a, dft, pitch, nt, ksteps);
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
// v (fp32 padded shared row, d floats). `zload(i)` returns z[i] as float. kShared: the synthesis
// tables of p point to shared memory. Ends with a barrier.
template <bool kShared = false, int KS = kMaxKSteps, typename ZLoad>
__device__ inline void block_frame_synthesis(const FrameParams& p, ZLoad zload, float* runs, float* v,
                                             const __half* dft_t, bool spread = true, SignFold fold = {},
                                             int max_parts = 1 << 30) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int g = lane >> 2, q = lane & 3, ksteps = p.kp / 16, two_k = 2 * p.k, pitch = dft_pitch(p.kp);
    const DftItems work(p.rho_c, p.kp, nwarps, spread, max_parts);
    for (int item = warp; item < work.items; item += nwarps) {
        const int run0 = work.run0(item);
        float z[KS][4][2];
#pragma unroll
        for (int s = 0; s < KS; ++s) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int run = run0 + g + 8 * (r & 1);
                const int l = 16 * s + 2 * q + 8 * (r >> 1);  // real index inside the block
                const bool ok = s < ksteps && run < p.rho_c && l < two_k;
                z[s][r][0] = ok ? zload(run * two_k + l) : 0.f;
                z[s][r][1] = ok ? zload(run * two_k + l + 1) : 0.f;
            }
        }
        uint32_t a[KS][4];
#pragma unroll
        for (int s = 0; s < KS; ++s)
#pragma unroll
            for (int r = 0; r < 4; ++r) a[s][r] = pack_half2(z[s][r][0], z[s][r][1]);
#pragma unroll 2
        for (int nt = work.nt_begin(item); nt < work.nt_end(item); ++nt) {
            float acc[4];
            mma_tile(acc, a, dft_t, pitch, nt, ksteps);
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
    for (int base = threadIdx.x; base < p.d_c; base += kBatch * blockDim.x) {
        int b0[kBatch], b1[kBatch];
        float w0[kBatch], w1[kBatch];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int j = base + b * blockDim.x;
            const bool ok = j < p.d_c;
            b0[b] = ok ? table_at<kShared>(p.synth_bin, j) : 0;
            b1[b] = ok ? table_at<kShared>(p.synth_bin, p.d_c + j) : 0;
            w0[b] = ok ? table_at<kShared>(p.synth_weight, j) : 0.f;
            w1[b] = ok ? table_at<kShared>(p.synth_weight, p.d_c + j) : 0.f;
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
            const int j = base + b * blockDim.x;
            if (j < p.d_c) {
                float re = w0[b] * runs[2 * b0[b]] + w1[b] * runs[2 * b1[b]];
                float im = w0[b] * runs[2 * b0[b] + 1] + w1[b] * runs[2 * b1[b] + 1];
                fold.apply(j, re, im);
                v[sp(2 * j)] = re;
                v[sp(2 * j) + 1] = im;
            }
        }
    }
    __syncthreads();
}

// ---- asynchronous global -> shared copies (sm_80+) -----------------------------------------

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem) {
    const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Programmatic dependent launch (sm_90): a kernel launched with programmatic stream
// serialization may start before the kernel ahead of it ends; grid_dependency_wait() returns once
// that kernel has finished and its writes are visible (at once without such a launch), and
// allow_dependents() lets the next such kernel start. No-ops before sm_90.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's most recent cp.async groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
// n 4-byte words global -> shared by cp.async, the block's threads together (16-byte pieces where
// both addresses allow); no commit, no wait.
__device__ inline void stage_words(void* dst, const void* src, int n) {
    const bool wide = ((reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(__cvta_generic_to_shared(dst))) & 15) == 0;
    const int n16 = wide ? n / 4 : 0;
    for (int i = threadIdx.x; i < n16; i += blockDim.x)
        cp_async16(static_cast<uint32_t*>(dst) + 4 * i, static_cast<const uint32_t*>(src) + 4 * i);
    for (int i = 4 * n16 + threadIdx.x; i < n; i += blockDim.x)
        cp_async4(static_cast<uint32_t*>(dst) + i, static_cast<const uint32_t*>(src) + i);
}

// load_dft's copy of the DFT table (rows dft_pitch(kp) apart), by cp.async; the caller commits and
// waits. No barrier.
__device__ inline void load_dft_async(const __half* table, __half* smem, int kp) {
    const int per_row = kp / 8, pitch = dft_pitch(kp) / 8, n = kp * per_row;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        cp_async16(reinterpret_cast<uint4*>(smem) + (i / per_row) * pitch + i % per_row,
                   reinterpret_cast<const uint4*>(table) + i);
}

// Waits for every cp.async this thread issued (a barrier must follow before others read them).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ---- host side: launch configuration -------------------------------------------------------

// f(x, y) with x and y cast to the activation type of dtype (the layer launchers' dispatch).
template <typename F> cudaError_t with_act_type(DType dtype, const void* x, void* y, F f) {
    if (dtype == DType::kFloat16) return f(static_cast<const __half*>(x), static_cast<__half*>(y));
    return f(static_cast<const float*>(x), static_cast<float*>(y));
}

// The current device's SM count and shared-memory limits in bytes (per block with opt-in, per SM):
// what every launcher sizes its grid and blocks by.
struct DeviceLimits {
    int sms = 0, smem_optin = 0, smem_per_sm = 0, cc_major = 0;
};
inline DeviceLimits device_limits() {
    DeviceLimits d;
    int device = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, device);
    return d;
}

// Allows `smem` bytes of dynamic shared memory for `kernel`.
template <typename K> cudaError_t allow_smem(K kernel, size_t smem) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

// Blocks for a grid-stride row kernel: as many as are resident on the device at once, at most rows.
template <typename K> int row_grid(K kernel, int threads, size_t smem, int64_t rows) {
    const int sms = device_limits().sms;
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess || per_sm < 1)
        per_sm = 1;
    const int64_t resident = static_cast<int64_t>(per_sm) * sms;
    return static_cast<int>(rows < 1 ? 1 : (rows < resident ? rows : resident));
}

// ---- grid barrier for cooperative launches -------------------------------------------------

// Blocks 0 .. n-1 arrive here; those with `wait` stay until all n arrived. The counter starts at 0
// (or 0x80000000) and each crossing adds exactly 2^31 (block 0 adds 2^31 - (n - 1), the others
// 1), so its top bit flips once all blocks arrived and the counter is ready for the next crossing
// or launch. `nap`: waiters poll with a short sleep (the spread decode kernel was measured so; the
// cooperative kernel's barrier, measured before, polls without one).
__device__ inline void grid_barrier(unsigned int* counter, unsigned int n, bool wait, bool nap) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int inc = (blockIdx.x == 0) ? (0x80000000u - (n - 1)) : 1u;
        __threadfence();
        const unsigned int old = atomicAdd(counter, inc);
        if (wait) {
            while (((old ^ *reinterpret_cast<volatile unsigned int*>(counter)) & 0x80000000u) == 0)
                if (nap) __nanosleep(32);
            __threadfence();
        }
    }
    __syncthreads();
}
__device__ inline void grid_barrier(unsigned int* counter) { grid_barrier(counter, gridDim.x, true, false); }

// Every block calls this once when its results are written; true (in every thread) for the last
// block of the grid to do so, which may then read all of them. The counter's low 31 bits count
// arrivals and return to zero; its top bit (grid_barrier's phase, the cooperative kernel shares
// the word) is left as it was. (The barrier orders the block's stores before thread 0's fence,
// which is cumulative.)
__device__ inline bool last_block_arrives(unsigned int* counter) {
    __shared__ bool is_last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned int old = atomicAdd(counter, 1u);
        is_last = ((old + 1u) & 0x7fffffffu) == gridDim.x;
        if (is_last) {
            atomicSub(counter, gridDim.x);
            __threadfence();
        }
    }
    __syncthreads();
    return is_last;
}

}  // namespace detail
}  // namespace fq
