// The matmul of many rows on cuBLAS: D_hat decoded to fp16, then cublasGemmEx (fp32 accumulation)
// on K_out and K_in rounded up to kGemmAlign with zero padding: cuBLAS takes its fast
// tensor-core kernels only when the sizes themselves are multiples of 8, not just the leading
// dimensions, and K = k * rho rarely is one (H100, 12608 rows: K = 4500 runs at 223 TFLOP/s, 4544
// at 765; benchmarks/results/h100/cublas_alignment.txt). Two callers: the packed matmul op
// (rows copied into and out of padded buffers where K is unaligned) and the many-row layer
// (prologue straight into the padded c, GEMM, epilogue reading the padded z).
// Kept out of the .cu files so that those build without the cuBLAS headers.
#include <climits>

#include <cublas_v2.h>

#include "fq_kernels.h"

namespace fq {
namespace {

int64_t padded(int64_t n) { return (n + kGemmAlign - 1) / kGemmAlign * kGemmAlign; }
size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Zero columns [from, ld) of `rows` rows of halves `ld` apart.
cudaError_t zero_columns(__half* base, int64_t ld, int64_t from, int64_t rows, cudaStream_t stream) {
    if (ld == from || rows == 0) return cudaSuccess;
    return cudaMemset2DAsync(base + from, sizeof(__half) * ld, 0, sizeof(__half) * (ld - from), rows, stream);
}

// z (rows x ldz) = c (rows x ldc) D_hat^T on the padded sizes, D_hat decoded into d_hat (ldz x ldc)
// with zero padding. c's padding columns must be zero (the workspace may hold anything, NaN
// included, and 0 * NaN is NaN).
cudaError_t padded_gemm(const PackedMatMulParams& p, const __half* c, int64_t ldc, __half* z, int64_t ldz,
                        int64_t rows, __half* d_hat, void* cublas_handle, cudaStream_t stream) {
    if (rows > INT_MAX || cublas_handle == nullptr) return cudaErrorInvalidValue;
    const int64_t k_in = p.in_features, k_out = p.out_features;
    cudaError_t err = zero_columns(d_hat, ldc, k_in, k_out, stream);
    if (err == cudaSuccess && ldz > k_out)
        err = cudaMemsetAsync(d_hat + k_out * ldc, 0, sizeof(__half) * (ldz - k_out) * ldc, stream);
    if (err == cudaSuccess) err = launch_dequantize_ld(p, d_hat, ldc, stream);
    if (err != cudaSuccess) return err;
    auto handle = static_cast<cublasHandle_t>(cublas_handle);
    if (cublasSetStream(handle, stream) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
    // Column-major view: z^T (ldz x rows) = D_hat (ldz x ldc) * c^T (ldc x rows).
    const float alpha = 1.f, beta = 0.f;
    const cublasStatus_t st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(ldz),
                                           static_cast<int>(rows), static_cast<int>(ldc), &alpha, d_hat, CUDA_R_16F,
                                           static_cast<int>(ldc), c, CUDA_R_16F, static_cast<int>(ldc), &beta, z,
                                           CUDA_R_16F, static_cast<int>(ldz), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return st == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown;
}

size_t d_hat_bytes(const PackedMatMulParams& p) {
    return align256(sizeof(__half) * padded(p.out_features) * padded(p.in_features));
}

}  // namespace

size_t packed_matmul_gemm_workspace_bytes(const PackedMatMulParams& p, int64_t rows) {
    const int64_t ldc = padded(p.in_features), ldz = padded(p.out_features);
    return d_hat_bytes(p) + (ldc != p.in_features ? align256(sizeof(__half) * rows * ldc) : 0) +
           (ldz != p.out_features ? align256(sizeof(__half) * rows * ldz) : 0);
}

cudaError_t launch_packed_matmul_gemm(const PackedMatMulParams& p, const void* x, void* z, int64_t rows,
                                      void* workspace, void* cublas_handle, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    const int64_t k_in = p.in_features, k_out = p.out_features, ldc = padded(k_in), ldz = padded(k_out);
    char* base = static_cast<char*>(workspace);
    __half* d_hat = reinterpret_cast<__half*>(base);
    char* next = base + d_hat_bytes(p);
    const __half* c = static_cast<const __half*>(x);
    __half* zp = static_cast<__half*>(z);
    cudaError_t err = cudaSuccess;
    if (ldc != k_in) {  // rows into a padded copy
        __half* cp = reinterpret_cast<__half*>(next);
        next += align256(sizeof(__half) * rows * ldc);
        err = cudaMemcpy2DAsync(cp, sizeof(__half) * ldc, x, sizeof(__half) * k_in, sizeof(__half) * k_in, rows,
                                cudaMemcpyDeviceToDevice, stream);
        if (err == cudaSuccess) err = zero_columns(cp, ldc, k_in, rows, stream);
        c = cp;
    }
    if (ldz != k_out) zp = reinterpret_cast<__half*>(next);
    if (err == cudaSuccess) err = padded_gemm(p, c, ldc, zp, ldz, rows, d_hat, cublas_handle, stream);
    if (err == cudaSuccess && zp != z)
        err = cudaMemcpy2DAsync(z, sizeof(__half) * k_out, zp, sizeof(__half) * ldz, sizeof(__half) * k_out, rows,
                                cudaMemcpyDeviceToDevice, stream);
    return err;
}

size_t frame_linear_gemm_workspace_bytes(const FrameLinearParams& p, int64_t rows) {
    const int64_t ldc = padded(p.matmul.in_features), ldz = padded(p.matmul.out_features);
    return align256(sizeof(__half) * rows * ldc) + align256(sizeof(__half) * rows * ldz) + d_hat_bytes(p.matmul);
}

cudaError_t launch_frame_linear_gemm(const FrameLinearParams& p, const void* x, void* y, int64_t rows,
                                     void* workspace, void* cublas_handle, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > INT_MAX || cublas_handle == nullptr) return cudaErrorInvalidValue;
    const int64_t ldc = padded(p.matmul.in_features), ldz = padded(p.matmul.out_features);
    char* base = static_cast<char*>(workspace);
    __half* c = reinterpret_cast<__half*>(base);
    __half* z = reinterpret_cast<__half*>(base + align256(sizeof(__half) * rows * ldc));
    __half* d_hat = reinterpret_cast<__half*>(base + align256(sizeof(__half) * rows * ldc) +
                                              align256(sizeof(__half) * rows * ldz));
    cudaError_t err = launch_layer_prologue(p, x, c, ldc, rows, DType::kFloat16, stream);
    if (err == cudaSuccess) err = zero_columns(c, ldc, p.matmul.in_features, rows, stream);
    if (err == cudaSuccess) err = padded_gemm(p.matmul, c, ldc, z, ldz, rows, d_hat, cublas_handle, stream);
    if (err == cudaSuccess) err = launch_layer_epilogue(p, z, ldz, y, rows, DType::kFloat16, stream);
    return err;
}

}  // namespace fq
