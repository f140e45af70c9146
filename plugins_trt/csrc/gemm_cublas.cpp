// The many-rows layer with the matmul on cuBLAS: prologue (R_in^T, T_in^T) into fp16 c,
// D_hat decoded to fp16, z = c D_hat^T by cublasGemmEx (fp32 accumulation), epilogue (T_out,
// R_out, bias). The GEMM runs on K_out and K_in rounded up to kGemmAlign, with D_hat's and c's
// padding zero: cuBLAS takes its fast tensor-core kernels only when the sizes themselves are
// multiples of 8, not just the leading dimensions, and K = k * rho rarely is one (H100, 12608
// rows: K = 4500 runs at 223 TFLOP/s, 4544 at 765; benchmarks/results/h100/cublas_alignment.txt).
// Kept out of the .cu files so that those build without the cuBLAS headers.
#include <cublas_v2.h>

#include "fq_kernels.h"

namespace fq {
namespace {

int64_t padded(int64_t n) { return (n + kGemmAlign - 1) / kGemmAlign * kGemmAlign; }
size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

size_t frame_linear_gemm_workspace_bytes(const FrameLinearParams& p, int64_t rows) {
    const int64_t ldc = padded(p.matmul.in_features), ldz = padded(p.matmul.out_features);
    return align256(sizeof(__half) * rows * ldc) + align256(sizeof(__half) * rows * ldz) +
           sizeof(__half) * ldz * ldc;
}

cudaError_t launch_frame_linear_gemm(const FrameLinearParams& p, const void* x, void* y, int64_t rows,
                                     void* workspace, void* cublas_handle, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > 0x7fffffff || cublas_handle == nullptr) return cudaErrorInvalidValue;
    const int64_t ldc = padded(p.matmul.in_features), ldz = padded(p.matmul.out_features);
    char* base = static_cast<char*>(workspace);
    __half* c = reinterpret_cast<__half*>(base);
    __half* z = reinterpret_cast<__half*>(base + align256(sizeof(__half) * rows * ldc));
    __half* d_hat = reinterpret_cast<__half*>(base + align256(sizeof(__half) * rows * ldc) +
                                              align256(sizeof(__half) * rows * ldz));
    const int64_t k_in = p.matmul.in_features, k_out = p.matmul.out_features;
    cudaError_t err = launch_layer_prologue(p, x, c, ldc, rows, DType::kFloat16, stream);
    // The padding: columns K_in .. ldc of c and D_hat, rows K_out .. ldz of D_hat (zeros times
    // finite values; the workspace may hold anything, NaN included).
    if (err == cudaSuccess && ldc > k_in)
        err = cudaMemset2DAsync(c + k_in, sizeof(__half) * ldc, 0, sizeof(__half) * (ldc - k_in), rows, stream);
    if (err == cudaSuccess && ldc > k_in)
        err = cudaMemset2DAsync(d_hat + k_in, sizeof(__half) * ldc, 0, sizeof(__half) * (ldc - k_in), k_out, stream);
    if (err == cudaSuccess && ldz > k_out)
        err = cudaMemsetAsync(d_hat + k_out * ldc, 0, sizeof(__half) * (ldz - k_out) * ldc, stream);
    if (err == cudaSuccess) err = launch_dequantize_ld(p.matmul, d_hat, ldc, stream);
    if (err != cudaSuccess) return err;
    auto handle = static_cast<cublasHandle_t>(cublas_handle);
    if (cublasSetStream(handle, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
    // Column-major view: z^T (ldz x rows) = D_hat (ldz x ldc) * c^T (ldc x rows), padded sizes.
    const float alpha = 1.f, beta = 0.f;
    const cublasStatus_t st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(ldz),
                                           static_cast<int>(rows), static_cast<int>(ldc), &alpha, d_hat, CUDA_R_16F,
                                           static_cast<int>(ldc), c, CUDA_R_16F, static_cast<int>(ldc), &beta, z,
                                           CUDA_R_16F, static_cast<int>(ldz), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
    return launch_layer_epilogue(p, z, ldz, y, rows, DType::kFloat16, stream);
}

}  // namespace fq
