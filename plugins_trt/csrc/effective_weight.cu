// The layer's dense effective weight W = P_out D_hat P_in^T (m x n), built on the GPU from the
// packed codes and the recipe tables, for the dense many-row path (gemm_cublas.cpp).
//
// At many rows the per-row transforms dominate the layer (two transforms of every activation row,
// about the GEMM's time again at 12608 rows), while transforming the weight costs K_out + n
// rows once per call, whatever the row count; after it the layer is one fp16 GEMM with the dense
// layer's shape. The weight lives in the workspace only: nothing dense is stored, and the
// transforms are the epilogue kernels of frame_linear.cu run on weight rows:
//
//   A = D_hat                     (K_out x K_in)  decoded from the codes (rows 64-aligned)
//   F = A P_in^T                  (K_out x n)     row i: P_in A_i  (the input side's synthesis)
//   G = F^T                       (n x K_out)     tiled transpose
//   W^T = G P_out^T               (n x m)         row j: P_out G_j (the output side's synthesis)
#include <algorithm>

#include "common.cuh"

namespace fq {
namespace {

constexpr int kTile = 64, kThreadsX = 32, kThreadsY = 8;

// D_hat rows are decoded this many halves apart: 16-byte aligned rows keep the decoder on its
// vector stores (H100, 4500 x 4500: 174 us with rows 4500 apart, 21 us with 4544).
int64_t decode_ld(int64_t k_in) { return (k_in + 63) / 64 * 64; }

// out (cols x rows) = in (rows x cols)^T, fp16, through a 64 x 64 shared tile: each thread moves
// pairs of halves (4-byte loads and stores, 128 bytes per warp and tile row).
__global__ void __launch_bounds__(kThreadsX * kThreadsY) transpose_kernel(const __half* __restrict__ in, __half* out,
                                                                          int rows, int cols) {
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
        __half* dst = out + static_cast<int64_t>(c) * rows + r;
        if (pairs && r + 1 < rows) {
            *reinterpret_cast<__half2*>(dst) = __halves2half2(tile[2 * tx][j], tile[2 * tx + 1][j]);
        } else {
            if (r < rows) dst[0] = tile[2 * tx][j];
            if (r + 1 < rows) dst[1] = tile[2 * tx + 1][j];
        }
    }
}

cudaError_t launch_transpose(const __half* in, __half* out, int rows, int cols, cudaStream_t stream) {
    const dim3 grid((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile);
    if (grid.y > 65535) return cudaErrorInvalidValue;
    transpose_kernel<<<grid, dim3(kThreadsX, kThreadsY), 0, stream>>>(in, out, rows, cols);
    return cudaGetLastError();
}

// Halves of the two scratch buffers: a holds D_hat, then G; b holds F, then W^T.
size_t buffer_a(const FrameLinearParams& p) {
    const size_t n = p.in_dim(), k_in = p.matmul.in_features, k_out = p.matmul.out_features;
    return std::max(k_out * static_cast<size_t>(decode_ld(k_in)), n * k_out);
}
size_t buffer_b(const FrameLinearParams& p) {
    const size_t n = p.in_dim(), m = p.out_dim(), k_out = p.matmul.out_features;
    return std::max(k_out * n, n * m);
}

}  // namespace

size_t effective_weight_workspace_bytes(const FrameLinearParams& p) {
    return align256(sizeof(__half) * buffer_a(p)) + align256(sizeof(__half) * buffer_b(p));
}

cudaError_t launch_effective_weight(const FrameLinearParams& p, void* workspace, __half** w_t, cudaStream_t stream) {
    const int n = p.in_dim(), k_in = p.matmul.in_features, k_out = p.matmul.out_features;
    __half* a = static_cast<__half*>(workspace);
    __half* b = reinterpret_cast<__half*>(static_cast<char*>(workspace) + align256(sizeof(__half) * buffer_a(p)));
    const int64_t ld = decode_ld(k_in);
    cudaError_t err = launch_dequantize_ld(p.matmul, a, ld, stream);
    // The input side's synthesis runs as an epilogue whose "output side" is the input's recipe.
    FrameLinearParams in_side = p;
    in_side.has_frame_out = p.has_frame_in, in_side.frame_out = p.frame_in;
    in_side.has_rotation_out = p.has_rotation_in, in_side.rotation_out = p.rotation_in;
    in_side.matmul.out_features = k_in;
    in_side.bias = nullptr;
    if (err == cudaSuccess) err = launch_layer_epilogue(in_side, a, ld, b, k_out, DType::kFloat16, stream);
    if (err == cudaSuccess) err = launch_transpose(b, a, k_out, n, stream);
    FrameLinearParams out_side = p;
    out_side.bias = nullptr;
    if (err == cudaSuccess) err = launch_layer_epilogue(out_side, a, k_out, b, n, DType::kFloat16, stream);
    *w_t = b;
    return err;
}

}  // namespace fq
