// One side of the layer (y = R T z: the side's frame synthesis T, then its rotation R) over many
// rows or columns of fp16 values, as the dense build (dense/effective_weight.cu) runs it: what the
// side-rows kernel (dense/side_rows.cu) and the side-columns kernel (dense/side_cols.cu) share, and
// their launchers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>

#include "device/convert.cuh"
#include "device/frame_transform.cuh"
#include "device/rotation.cuh"
#include "fq_kernels.h"

namespace fq {
namespace dense {
using namespace detail;

// The side's steps and sizes: its frame (synthesis) and rotation, z rows of k_len values in, y rows
// of d values out.
struct SideRows {
    bool has_frame = false, has_rotation = false;
    FrameParams f;
    RotationParams r;
    int k_len = 0;  // values of a z row: K with a frame, else d
    int d = 0;      // values of a y row
};

// A layer's output slots as a side (the input side is passed in them too: see below).
inline SideRows side_of(const FrameLinearParams& p) {
    SideRows s;
    s.has_frame = p.has_frame_out, s.has_rotation = p.has_rotation_out;
    s.f = p.frame_out, s.r = p.rotation_out;
    s.k_len = p.matmul.out_features, s.d = p.out_dim();
    return s;
}

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }
// Bytes of a block's tables (DFT^T with rows dft_pitch apart; the rotation's sign bits).
__host__ __device__ inline int side_dft_bytes(const SideRows& s) { return s.has_frame ? 4 * dft_floats(s.f.kp) : 0; }
__host__ __device__ inline int side_sign_bytes(const SideRows& s) {
    return s.has_rotation ? 16 * ((s.d + 127) / 128) : 0;
}
__host__ __device__ inline int side_table_bytes(const SideRows& s) { return side_dft_bytes(s) + side_sign_bytes(s); }

// What the side-rows and side-columns kernels take of a side: a rotation over the whole side with
// an odd factor of at most max_odd, DFT widths of at most 128.
// max_odd: the largest odd factor the caller handles (the side-rows kernel 64, the side-columns
// kernel 3).
inline bool side_on_tensor_cores(const SideRows& s, int max_odd = 1) {
    return !((s.has_rotation && (s.r.odd > max_odd || s.r.power * s.r.odd != s.d)) ||
             (s.has_frame && (s.f.kp > 128 || s.f.d() != s.d)));
}
inline bool misaligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) != 0; }

// ---- device helpers of both kernels --------------------------------------------------------

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p, bool trans) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a)
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a)
                     : "memory");
}

__device__ __forceinline__ void st_half2(__half* p, float lo, float hi) {
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(lo, hi);
}

// (H_16 / 4)[row][col], [row][col + 1] as a half2 (+-1/4; H symmetric, entry (-1)^popc(row & col)).
__device__ __forceinline__ uint32_t h16_pair(int row, int col) {
    return pack_half2((__popc(row & col) & 1) ? -0.25f : 0.25f, (__popc(row & (col + 1)) & 1) ? -0.25f : 0.25f);
}

// H_16 / 4 as mma fragments: rows g, g + 8 by columns 2q, 2q + 8 (as A; H being symmetric, the
// same registers serve as B).
__device__ __forceinline__ void h16_fragments(uint32_t (&h)[4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    h[0] = h16_pair(g, 2 * q), h[1] = h16_pair(g + 8, 2 * q);
    h[2] = h16_pair(g, 2 * q + 8), h[3] = h16_pair(g + 8, 2 * q + 8);
}

// ---- the side-rows kernel (dense/side_rows.cu) -----------------------------------------------

constexpr PackedMatMulParams kNoDecode{0, 0, 0, 0, nullptr, nullptr, nullptr};  // codes null: z is read

// The side-rows kernel where the side and buffers allow it: z rows ldz halves apart (16-byte
// aligned, ldz >= the row rounded up to 8), y rows ldy apart (16-byte aligned), d a multiple of 8,
// an odd factor of at most 64 (the mix's tensor-core table) over a power axis of 16 or more, DFT
// widths of at most 128, one warp's buffers in shared memory. With dec, z is not read: the rows
// are D_hat's, decoded from dec's codes in the kernel (2, 4 or 8 bits, K = in_features, rows =
// out_features). zi > 1: z's rows interleaved in groups of zi (side_rows_kernel; z holds
// round_up(rows, zi) rows). Returns cudaErrorNotSupported (nothing launched) otherwise.
bool side_rows_takes(const SideRows& s, const PackedMatMulParams& decode = kNoDecode);
cudaError_t launch_side_rows(const SideRows& s, const __half* z, int64_t ldz, __half* y, int64_t ldy, int64_t rows,
                             cudaStream_t stream, const PackedMatMulParams* dec = nullptr, int zi = 1);

// ---- the side-columns kernel (dense/side_cols.cu) --------------------------------------------

constexpr int kSlab = 8;  // columns of a slab: one 16-byte piece per row

// Where a side-columns kernel reads its slabs and writes its output rows, in halves: slab i's row
// r at x + i x_slab + r x_row, output row k's points 8 g .. 8 g + 7 at y + k y_row + g y_group.
// Row-major x (rows ldx apart): {8, ldx}; row-major y: {ldy, 8}. Between the two passes of the
// build, F is blocked: each group of 8 of its columns is K rows of 16 bytes, {8 K, 8} as the
// second pass's x and {8, 8 K} as the first pass's y, so that the second pass's slab is one
// contiguous piece (coalesced copies) and the first pass stores 128 contiguous bytes per 8 lanes.
// y_point != 0: y is written transposed instead, point p of the slab's 8 columns (one row of v)
// as 16 bytes at y + 8 slab + p y_point (the first pass writing G = F^T for the side-rows kernel,
// in place of F and a transpose; a partial last slab writes its zero columns too); with
// y_inter > 1, G's rows interleaved in groups of y_inter (side_rows_kernel's zi): at
// y + (p / y_inter) y_inter y_point + 8 (slab y_inter + p % y_inter), so that the y_inter
// points of a group are one contiguous piece of 16 y_inter bytes.
struct SlabStrides {
    int64_t x_slab, x_row, y_row, y_group;
    int64_t y_point = 0;
    int y_inter = 1;
};

// Whether a side-columns kernel can run: a rotation over the whole side whose odd factor is 1 or
// up to kColsMaxOdd, DFT widths of at most 128, d a multiple of 32 up to 65536,
// cols a multiple of 8 unless decoding (decode: D_hat's rows), strides multiples of 8 halves,
// x and y 16-byte aligned, and its buffers fit in shared memory.
bool side_cols_fit(const SideRows& s, const PackedMatMulParams* decode, int cols, const __half* x, const __half* y,
                   const SlabStrides& st);
// The side-columns kernel over x (K x cols, as `st` lays it out) into y (cols x d) where
// side_cols_fit; returns cudaErrorNotSupported (nothing launched) otherwise.
cudaError_t launch_side_cols(const SideRows& s, const __half* x, int cols, __half* y, const SlabStrides& st,
                             cudaStream_t stream);
// The side over D_hat's rows decoded from the codes (2, 4 or 8 bits), as the columns of D_hat^T:
// y (out_features x d) = rows of D_hat transformed. cudaErrorNotSupported as launch_side_cols.
cudaError_t launch_decode_side_cols(const SideRows& s, const PackedMatMulParams& m, __half* y, const SlabStrides& st,
                                    cudaStream_t stream);

// The synthesis table entries of coordinates j = base + stride u (u < U), each pair of taps'
// bins and weights, all loads in flight before any use; zeros from limit on.
template <int U>
__device__ __forceinline__ void load_synth_entries(const FrameParams& f, int base, int stride, int limit, int (&b0)[U],
                                                   int (&b1)[U], float (&w0)[U], float (&w1)[U]) {
    const int dc = f.d_c;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int j = base + stride * u;
        const bool ok = j < limit;
        b0[u] = ok ? __ldg(f.synth_bin + j) : 0;
        b1[u] = ok ? __ldg(f.synth_bin + dc + j) : 0;
        w0[u] = ok ? __ldg(f.synth_weight + j) : 0.f;
        w1[u] = ok ? __ldg(f.synth_weight + dc + j) : 0.f;
    }
}

}  // namespace dense
}  // namespace fq
