// The tight fusion frame's analysis and synthesis of one padded shared-memory row: gathers on CUDA
// cores, the per-block DFT on tensor cores, the DFT tables in shared memory.
#pragma once

#include "device/async_copy.cuh"
#include "device/convert.cuh"
#include "device/mma.cuh"
#include "device/rows.cuh"
#include "fq_kernels.h"

namespace fq {
namespace detail {

// Rows of the DFT table in shared memory are dft_pitch(kp) halves apart: kp / 2 + 4 words, which
// is 4 (mod 8), so the 8 rows that one B-fragment load of a warp touches (row g, word q) hit
// 32 distinct banks (kp / 2 words apart, a multiple of 8, they shared 4 to 8 lanes per bank).
__host__ __device__ __forceinline__ constexpr int dft_pitch(int kp) { return kp + 8; }
__host__ __device__ __forceinline__ constexpr int dft_floats(int kp) { return kp * dft_pitch(kp) / 2; }

// Copy the kp x kp DFT table (or its transpose) into shared memory with rows dft_pitch(kp)
// apart (16-byte loads, all in flight before the stores). Ends with a barrier.
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
// A warp's m16n8 accumulator tile into the rows run0 (lanes' g) and run0 + 8 of out (rows two_k
// apart, at most rho_c), columns col and col + 1 (lanes' q); nothing past the frame's columns.
template <typename OutT>
__device__ __forceinline__ void store_run_tile(const float (&acc)[4], OutT* out, int run0, int col, int two_k,
                                               int rho_c) {
    if (col >= two_k) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = run0 + 8 * h;
        if (r < rho_c) {
            out[r * two_k + col] = from_float<OutT>(acc[2 * h]);
            out[r * two_k + col + 1] = from_float<OutT>(acc[2 * h + 1]);
        }
    }
}

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
            store_run_tile(acc, c, run0 + g, nt * 8 + 2 * q, two_k, p.rho_c);
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
            store_run_tile(acc, runs, run0 + g, nt * 8 + 2 * q, two_k, p.rho_c);
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

// load_dft's copy of the DFT table (rows dft_pitch(kp) apart), by cp.async; the caller commits and
// waits. No barrier.
__device__ inline void load_dft_async(const __half* table, __half* smem, int kp) {
    const int per_row = kp / 8, pitch = dft_pitch(kp) / 8, n = kp * per_row;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        cp_async16(reinterpret_cast<uint4*>(smem) + (i / per_row) * pitch + i % per_row,
                   reinterpret_cast<const uint4*>(table) + i);
}

}  // namespace detail
}  // namespace fq
