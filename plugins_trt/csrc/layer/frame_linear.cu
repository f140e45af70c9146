// One FrameQuant layer y = R_out T_out D_hat T_in^T R_in^T x + bias.
//
// The layer is three steps: a prologue per row (R_in^T then the frame analysis T_in^T, in shared
// memory), the packed matmul z = D_hat c, and an epilogue per row (frame synthesis T_out, R_out,
// bias). The unfused path launches them one by one; the gemm path (gemm_cublas.cpp) swaps the
// matmul for a dequantize + cuBLAS GEMM; the dense path (gemm_cublas.cpp, dense/effective_weight.cu)
// builds the layer's dense weight and runs one GEMM. For a few rows the single-launch layer takes one
// of four kernels (launch_frame_linear_fused, below): the gemv kernel (frame_linear_gemv.cu), the
// spread decode kernel (frame_linear_split.cu), the decode kernel (frame_linear_decode.cu) or the
// cooperative kernel (frame_linear_cooperative.cu). docs/kernels.md says which runs when, and why.
#include <algorithm>

#include "layer/layer_rows.cuh"

namespace fq {

using layer::kMaxSplits;

size_t frame_linear_workspace_bytes(const FrameLinearParams& p, int64_t rows) {
    const size_t fused = align256(sizeof(__half) * rows * p.matmul.in_features) +
                         sizeof(float) * kMaxSplits * rows * p.matmul.out_features;
    const size_t unfused =
        align256(sizeof(float) * rows * p.matmul.in_features) + sizeof(float) * rows * p.matmul.out_features;
    const size_t split = rows <= kDecodeRows ? frame_linear_split_workspace_bytes(p, rows) : 0;
    const size_t gemv = rows == 1 ? frame_linear_gemv_workspace_bytes(p) : 0;
    return std::max({fused, unfused, split, gemv});
}

cudaError_t launch_frame_linear_fused(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                      void* workspace, unsigned int* barrier, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kFusedMaxRows) return cudaErrorInvalidValue;
    if (rows == 1) {
        const cudaError_t err = launch_frame_linear_gemv(p, x, y, rows, dtype, workspace, barrier, stream);
        if (err != cudaErrorNotSupported) return err;
        cudaGetLastError();  // not sticky; clear it
    }
    if (rows <= kSplitAutoRows && std::max(p.in_dim(), p.out_dim()) > kSplitMinDim) {
        const cudaError_t err = launch_frame_linear_split(p, x, y, rows, dtype, workspace, barrier, stream);
        if (err != cudaErrorNotSupported) return err;
        cudaGetLastError();  // not sticky; clear it
    }
    if (rows <= kDecodeAutoRows) {
        // One wave only: a second wave of blocks repeats the prologue, which costs more than the
        // cooperative kernel's grid barriers.
        const cudaError_t err = layer::decode_any(p, x, y, rows, dtype, workspace, barrier, true, stream);
        if (err != cudaErrorNotSupported) return err;
        cudaGetLastError();  // not sticky; clear it
    }
    return launch_frame_linear_cooperative(p, x, y, rows, dtype, workspace, barrier, stream);
}

}  // namespace fq
