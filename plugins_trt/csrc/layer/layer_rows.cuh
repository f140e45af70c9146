// The per-row steps of the layer that the many-row, cooperative and decode kernels share: the
// prologue c = T_in^T R_in^T x and the epilogue y = R_out T_out z + bias of one row, each run by one
// thread block in shared memory.
#pragma once

#include <cuda_fp16.h>
#include <cstdint>

#include "device/frame_transform.cuh"
#include "device/rotation.cuh"
#include "device/rows.cuh"
#include "device/trace.cuh"
#include "fq_kernels.h"

namespace fq {
namespace layer {
using namespace detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSplits = 8;  // split-K parts of the fused layer's matmul (workspace z_s)

__host__ __device__ inline int imax(int a, int b) { return a > b ? a : b; }

// Shared floats of the prologue: u (padded row), tmp (rotation with an odd factor), DFT table.
__host__ __device__ inline int prologue_floats(const FrameLinearParams& p) {
    const int d = p.in_dim();
    const int tmp = (p.has_rotation_in && p.rotation_in.odd > 1) ? round4(d) : 0;
    return padded_floats(imax(d, p.matmul.in_features)) + tmp + (p.has_frame_in ? dft_floats(p.frame_in.kp) : 0);
}
// Shared floats of the epilogue: runs (frame synthesis, reused as rotation tmp), v, DFT^T table.
__host__ __device__ inline int epilogue_floats(const FrameLinearParams& p) {
    const int d = p.out_dim();
    return round4(imax(p.matmul.out_features, d)) + padded_floats(d) +
           (p.has_frame_out ? dft_floats(p.frame_out.kp) : 0);
}

struct PrologueSmem {
    float* u;
    float* tmp;
    __half* dft;
    const __half* odd_mma = nullptr;  // set by the many-row kernel (block_rotate)
    bool spread = true;               // DftItems; the many-row kernel clears it
    __device__ PrologueSmem(const FrameLinearParams& p, float* base) {
        const int d = imax(p.in_dim(), p.matmul.in_features);
        u = base;
        tmp = u + padded_floats(d);
        dft = reinterpret_cast<__half*>(tmp + ((p.has_rotation_in && p.rotation_in.odd > 1) ? round4(p.in_dim()) : 0));
    }
};

struct EpilogueSmem {
    float* runs;
    float* v;
    __half* dft_t;
    const __half* odd_mma = nullptr;  // set by the many-row kernel (block_rotate)
    bool spread = true;               // DftItems; the many-row kernel clears it
    __device__ EpilogueSmem(const FrameLinearParams& p, float* base) {
        runs = base;
        v = runs + round4(imax(p.matmul.out_features, p.out_dim()));
        dft_t = reinterpret_cast<__half*>(v + padded_floats(p.out_dim()));
    }
};

// c_row = T_in^T R_in^T x_row (CT: the type of c). The DFT table is already in s.dft.
template <typename T, typename CT>
__device__ void prologue_row(const FrameLinearParams& p, const T* x_row, CT* c_row, const PrologueSmem& s) {
    __syncthreads();  // the previous row is done with s.u
    load_row(x_row, p.in_dim(), s.u);
    FQ_STAMP(3);
    if (p.has_rotation_in)
        block_rotate(p.rotation_in, s.u, s.tmp, true, false, s.odd_mma);
    else
        __syncthreads();
    FQ_STAMP(4);
    if (p.has_frame_in)
        block_frame_analysis<CT>(p.frame_in, s.u, c_row, s.dft, s.spread);
    else
        store_row(c_row, p.matmul.in_features, s.u);
    FQ_STAMP(5);
}

// y_row = R_out T_out z + bias, z[i] = zload(i). The DFT^T table is already in s.dft_t.
// kShared: the synthesis tables, sign bits and DCT of p are in shared memory (bias is not).
template <bool kShared = false, int KS = kMaxKSteps, typename ZLoad, typename T>
__device__ void epilogue_row(const FrameLinearParams& p, ZLoad zload, T* y_row, const EpilogueSmem& s) {
    __syncthreads();  // the previous row is done with s.v and s.runs
    const int d = p.out_dim();
    // Staged tables with both steps: the rotation's signs and scale go with the synthesis.
    const bool fold = kShared && p.has_frame_out && p.has_rotation_out;
    SignFold signs;
    if (fold)
        signs = {reinterpret_cast<const uint32_t*>(p.rotation_out.signs), rotation_fold_scale(p.rotation_out, false)};
    if (p.has_frame_out) {
        block_frame_synthesis<kShared, KS>(p.frame_out, zload, s.runs, s.v, s.dft_t, s.spread, signs);
        FQ_STAMP(34);
    } else {
        for (int base = threadIdx.x; base < d; base += kBatch * blockDim.x) {
            float r[kBatch];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) r[b] = base + b * blockDim.x < d ? zload(base + b * blockDim.x) : 0.f;
#pragma unroll
            for (int b = 0; b < kBatch; ++b)
                if (base + b * blockDim.x < d) s.v[sp(base + b * blockDim.x)] = r[b];
        }
        __syncthreads();
    }
    if (p.has_rotation_out) block_rotate<kShared>(p.rotation_out, s.v, s.runs, false, false, s.odd_mma, fold);
    FQ_STAMP(35);
    store_row(y_row, d, s.v, 1.f, p.bias);
    FQ_STAMP(36);
}

// The decode kernel for rows <= kDecodeRows (frame_linear_decode.cu); `one_wave`: refuse
// (cudaErrorNotSupported) rather than run more blocks than SMs, since each later wave repeats the
// prologue.
cudaError_t decode_any(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype, void* workspace,
                       unsigned int* counter, bool one_wave, cudaStream_t stream);

}  // namespace layer
}  // namespace fq
