// The layer's dense effective weight W = P_out D_hat P_in^T (m x n), built on the GPU from the
// packed codes and the recipe tables, for the dense many-row path (gemm_cublas.cpp).
//
// At many rows the per-row transforms dominate the layer (two transforms of every activation row,
// about the GEMM's time again at 12608 rows), while transforming the weight costs K_out + n
// rows once per call, whatever the row count; after it the layer is one fp16 GEMM with the dense
// layer's shape. The weight lives in the workspace only: nothing dense is stored.
//
//   F = D_hat P_in^T              (K_out x n)     row i: P_in D_hat_i (the input side's synthesis)
//   W^T = (P_out F)^T             (n x m)         column j of F -> row j of W^T (the output side's)
//
// Where a side allows it (no odd factor in its rotation but 3, widths a multiple of 32, its slabs in
// shared memory) each is one launch of the side-columns kernel: the first decodes 8 rows of D_hat
// from the codes at a time, the second reads 8 columns of F at a time and writes 8 rows of W^T.
// Where only the input side allows it, the first writes G = F^T (below) directly, for the
// side-rows pass of the output side. Otherwise (and with WeightBuild::kRows) by rows:
//
//   A = D_hat                     (K_out x K_in)  decoded from the codes (rows 64-aligned)
//   F = A P_in^T                  (K_out x n)     row i: P_in A_i
//   G = F^T                       (n x K_out)     tiled transpose
//   W^T = G P_out^T               (n x m)         row j: P_out G_j
//
// with the side-rows kernel (odd factors up to 64; for F it decodes A's rows itself from 2-, 4-
// or 8-bit codes, so A is not written), else the layer's epilogue kernel.
#include <algorithm>

#include "dense/side.cuh"
#include "fq_kernels.h"

namespace fq {
namespace {

using dense::launch_decode_side_cols;
using dense::launch_side_cols;
using dense::launch_side_rows;
using dense::side_cols_fit;
using dense::side_of;
using dense::side_rows_takes;
using dense::SideRows;
using dense::SlabStrides;

constexpr int kTile = 64, kThreadsX = 32, kThreadsY = 8, kTransposeThreads = kThreadsX * kThreadsY;

// D_hat rows are decoded this many halves apart: 16-byte aligned rows keep the decoder on its
// vector stores (rows K apart, K not a multiple of 8, took it off them, at eight times the time).
// The transposed G takes the same padding, for the side-rows kernel's 16-byte copies.
int64_t padded_ld(int64_t len) { return (len + 63) / 64 * 64; }

// out (cols x rows, rows ld_out apart) = in (rows x cols)^T, fp16, through a 64 x 64 shared tile: each thread moves
// pairs of halves (4-byte loads and stores, 128 bytes per warp and tile row).
__global__ void __launch_bounds__(kTransposeThreads)
    transpose_kernel(const __half* __restrict__ in, __half* out, int rows, int cols, int64_t ld_out) {
    __shared__ __half tile[kTile][kTile + 2];
    const int c0 = blockIdx.x * kTile, r0 = blockIdx.y * kTile, tx = threadIdx.x, ty = threadIdx.y;
    const bool pairs = (cols % 2 == 0) && (rows % 2 == 0);  // 4-byte aligned pairs in both layouts
    for (int j = ty; j < kTile; j += kThreadsY) {
        const int r = r0 + j, c = c0 + 2 * tx;
        if (r >= rows) continue;
        const __half* src = in + static_cast<int64_t>(r) * cols + c;
        if (pairs && c + 1 < cols) {
            const __half2 v = *reinterpret_cast<const __half2*>(src);
            tile[j][2 * tx] = __low2half(v), tile[j][2 * tx + 1] = __high2half(v);
        } else {
            if (c < cols) tile[j][2 * tx] = src[0];
            if (c + 1 < cols) tile[j][2 * tx + 1] = src[1];
        }
    }
    __syncthreads();
    for (int j = ty; j < kTile; j += kThreadsY) {
        const int c = c0 + j, r = r0 + 2 * tx;
        if (c >= cols) continue;
        __half* dst = out + static_cast<int64_t>(c) * ld_out + r;
        if (pairs && r + 1 < rows) {
            *reinterpret_cast<__half2*>(dst) = __halves2half2(tile[2 * tx][j], tile[2 * tx + 1][j]);
        } else {
            if (r < rows) dst[0] = tile[2 * tx][j];
            if (r + 1 < rows) dst[1] = tile[2 * tx + 1][j];
        }
    }
}

cudaError_t launch_transpose(const __half* in, __half* out, int rows, int cols, int64_t ld_out, cudaStream_t stream) {
    const dim3 grid((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile);
    if (grid.y > 65535 || ld_out % 2) return cudaErrorInvalidValue;
    transpose_kernel<<<grid, dim3(kThreadsX, kThreadsY), 0, stream>>>(in, out, rows, cols, ld_out);
    return cudaGetLastError();
}

// One side over rows: the side-rows kernel, else the layer's epilogue kernel (y rows d apart).
cudaError_t transform_rows(const FrameLinearParams& side, const __half* z, int64_t ldz, __half* y, int64_t rows,
                           cudaStream_t stream, int zi = 1) {
    const cudaError_t err = launch_side_rows(side_of(side), z, ldz, y, side.out_dim(), rows, stream, nullptr, zi);
    if (err != cudaErrorNotSupported || zi != 1) return err;
    return launch_layer_epilogue(side, z, ldz, y, rows, DType::kFloat16, stream);
}

// G's rows interleaved in groups of this many where the side-columns pass writes G for the
// side-rows kernel (SlabStrides::y_inter): 8 points' 16-byte pieces of a slab make one 128-byte
// line, and the side-rows kernel reads a row's pieces 128 bytes apart (docs/kernels.md has the
// sweep over 1, 2, 4 and 8).
constexpr int kGInterleave = 8;

// Halves of the two scratch buffers: a holds D_hat, then G; b holds F, then W^T.
size_t buffer_a(const FrameLinearParams& p) {
    const size_t n = p.in_dim(), k_in = p.matmul.in_features, k_out = p.matmul.out_features;
    return std::max(k_out * static_cast<size_t>(padded_ld(k_in)), n * static_cast<size_t>(padded_ld(k_out)));
}
size_t buffer_b(const FrameLinearParams& p) {
    const size_t n = p.in_dim(), m = p.out_dim(), k_out = p.matmul.out_features;
    return std::max(k_out * n, n * m);
}

}  // namespace

size_t effective_weight_workspace_bytes(const FrameLinearParams& p) {
    return align256(sizeof(__half) * buffer_a(p)) + align256(sizeof(__half) * buffer_b(p));
}

cudaError_t launch_effective_weight(const FrameLinearParams& p, void* workspace, __half** w_t, cudaStream_t stream,
                                    WeightBuild build) {
    const int n = p.in_dim(), k_in = p.matmul.in_features, k_out = p.matmul.out_features;
    __half* a = static_cast<__half*>(workspace);
    __half* b = reinterpret_cast<__half*>(static_cast<char*>(workspace) + align256(sizeof(__half) * buffer_a(p)));
    const int64_t ld = padded_ld(k_in), ld_g = padded_ld(k_out);
    // The input side's synthesis runs as an epilogue whose "output side" is the input's recipe.
    FrameLinearParams in_side = p;
    in_side.has_frame_out = p.has_frame_in, in_side.frame_out = p.frame_in;
    in_side.has_rotation_out = p.has_rotation_in, in_side.rotation_out = p.rotation_in;
    in_side.matmul.out_features = k_in;
    in_side.bias = nullptr;
    FrameLinearParams out_side = p;
    out_side.bias = nullptr;
    const SlabStrides blocked{8 * static_cast<int64_t>(k_out), 8, 8, 8 * static_cast<int64_t>(k_out)};
    const SlabStrides row_major{8, n, n, 8};
    // F (k_out x n) is blocked where the second pass takes slabs; row-major (by rows) for the transpose.
    const bool slabs = build == WeightBuild::kAuto;
    const SideRows in_s = side_of(in_side), out_s = side_of(out_side);
    const bool out_slabs = slabs && side_cols_fit(out_s, nullptr, n, b, a, blocked);
    // F: D_hat decoded and transformed slab by slab (straight into G = F^T where the output side
    // takes the rows: no transpose); else decoded whole, then transformed by rows.
    bool f_blocked = out_slabs;
    SlabStrides g_t{8, n, 8, 8};
    g_t.y_point = ld_g;
    g_t.y_inter = side_rows_takes(out_s) ? kGInterleave : 1;
    cudaError_t err =
        slabs ? launch_decode_side_cols(in_s, p.matmul, out_slabs ? b : a, out_slabs ? blocked : g_t, stream)
              : cudaErrorNotSupported;
    if (slabs && !out_slabs && err != cudaErrorNotSupported) {
        if (err != cudaSuccess) return err;
        *w_t = b;
        return transform_rows(out_side, a, ld_g, b, n, stream, g_t.y_inter);
    }
    if (err == cudaErrorNotSupported) {  // F by rows: D_hat decoded in the side-rows kernel, else apart
        f_blocked = false;
        err = launch_side_rows(in_s, nullptr, 0, b, n, k_out, stream, &p.matmul);
        if (err == cudaErrorNotSupported) {
            err = launch_dequantize_ld(p.matmul, a, ld, stream);
            if (err == cudaSuccess) err = transform_rows(in_side, a, ld, b, k_out, stream);
        }
    }
    *w_t = a;
    if (err != cudaSuccess) return err;
    // The output side over F's columns, straight into W^T; else transpose F and run it over rows.
    if (out_slabs) {
        SlabStrides st = f_blocked ? blocked : row_major;
        st.y_row = p.out_dim(), st.y_group = 8;  // W^T, row-major
        err = launch_side_cols(out_s, b, n, a, st, stream);
        if (err != cudaErrorNotSupported) return err;
        if (f_blocked) return cudaErrorUnknown;  // side_cols_fit said yes: cannot happen
    }
    *w_t = b;
    err = launch_transpose(b, a, k_out, n, ld_g, stream);
    if (err == cudaSuccess) err = transform_rows(out_side, a, ld_g, b, n, stream);
    return err;
}

}  // namespace fq
