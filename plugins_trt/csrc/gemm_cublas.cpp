// The matmul of many rows on cuBLAS: D_hat decoded to fp16, then cublasGemmEx (fp32 accumulation)
// on K_out and K_in rounded up to kGemmAlign with zero padding: cuBLAS takes its fast
// tensor-core kernels only when the sizes themselves are multiples of 8, not just the leading
// dimensions, and K = k * rho rarely is one (docs/kernels.md has the measurement). Two callers: the packed matmul op
// (rows copied into and out of padded buffers where K is unaligned) and the many-row layer
// (prologue straight into the padded c, GEMM, epilogue reading the padded z).
// The dense many-row layer (one cuBLASLt GEMM on the layer's effective weight, bias in the GEMM's
// epilogue) lives here too.
// Kept out of the .cu files so that those build without the cuBLAS headers.
#include <algorithm>
#include <climits>

#include <cublasLt.h>
#include <cublas_v2.h>

#include "fq_kernels.h"

namespace fq {
namespace {

int64_t padded(int64_t n) { return (n + kGemmAlign - 1) / kGemmAlign * kGemmAlign; }

// Zero columns [from, ld) of `rows` rows of halves `ld` apart.
cudaError_t zero_columns(__half* base, int64_t ld, int64_t from, int64_t rows, cudaStream_t stream) {
    if (ld == from || rows == 0) return cudaSuccess;
    return cudaMemset2DAsync(base + from, sizeof(__half) * ld, 0, sizeof(__half) * (ld - from), rows, stream);
}

// z (rows x ldz) = c (rows x ldc) D_hat^T on the padded sizes, D_hat decoded into d_hat (ldz x ldc)
// with zero padding. c's padding columns must be zero (the workspace may hold anything, NaN
// included, and 0 * NaN is NaN).
cudaError_t padded_gemm(const PackedMatMulParams& p, const __half* c, int64_t ldc, __half* z, int64_t ldz, int64_t rows,
                        __half* d_hat, void* cublas_handle, cudaStream_t stream) {
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

cudaError_t launch_frame_linear_gemm(const FrameLinearParams& p, const void* x, void* y, int64_t rows, void* workspace,
                                     void* cublas_handle, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > INT_MAX || cublas_handle == nullptr) return cudaErrorInvalidValue;
    const int64_t ldc = padded(p.matmul.in_features), ldz = padded(p.matmul.out_features);
    char* base = static_cast<char*>(workspace);
    __half* c = reinterpret_cast<__half*>(base);
    __half* z = reinterpret_cast<__half*>(base + align256(sizeof(__half) * rows * ldc));
    __half* d_hat =
        reinterpret_cast<__half*>(base + align256(sizeof(__half) * rows * ldc) + align256(sizeof(__half) * rows * ldz));
    cudaError_t err = launch_layer_prologue(p, x, c, ldc, rows, DType::kFloat16, stream);
    if (err == cudaSuccess) err = zero_columns(c, ldc, p.matmul.in_features, rows, stream);
    if (err == cudaSuccess) err = padded_gemm(p.matmul, c, ldc, z, ldz, rows, d_hat, cublas_handle, stream);
    if (err == cudaSuccess) err = launch_layer_epilogue(p, z, ldz, y, rows, DType::kFloat16, stream);
    return err;
}

// ---- the dense form: one GEMM on the effective weight ------------------------------------

namespace {

constexpr size_t kLtWorkspace = 4u << 20;  // cuBLASLt's own scratch (split-K and the like)

// Descriptors of one cuBLASLt call, released on every path out.
struct LtCall {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~LtCall() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (d) cublasLtMatrixLayoutDestroy(d);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

// The largest power of two up to 256 that divides the address: cuBLASLt's heuristic assumes
// 256-byte aligned matrices unless told otherwise, and an algorithm picked so fails on a tensor
// that starts inside an allocation.
uint32_t alignment_of(const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    uint32_t r = 256;
    while (r > 1 && a % r != 0) r /= 2;
    return r;
}

// y (rows x m) = x (rows x n) w_t (n x m) + bias, fp16 with fp32 accumulation. Column-major view:
// y^T (m x rows) = w_t^T (m x n, ld m) x^T (n x rows, ld n), the bias one value per row of y^T.
// The descriptors and the first `want` entries of cuBLASLt's heuristic list for them (want at most
// kDenseGemmChoices); false where a descriptor cannot be made or the list is empty.
bool lt_candidates(cublasLtHandle_t handle, const void* w_t, const void* x, const void* y, const void* bias, int64_t n,
                   int64_t m, int64_t rows, int want, LtCall& c, cublasLtMatmulHeuristicResult_t* list, int* found) {
    const cublasOperation_t no = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const size_t ws = kLtWorkspace;
    bool ok =
        cublasLtMatmulDescCreate(&c.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSA, &no, sizeof(no)) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_TRANSB, &no, sizeof(no)) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)) ==
            CUBLAS_STATUS_SUCCESS &&
        (!bias || cublasLtMatmulDescSetAttribute(c.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) ==
                      CUBLAS_STATUS_SUCCESS) &&
        cublasLtMatrixLayoutCreate(&c.a, CUDA_R_16F, m, n, m) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&c.b, CUDA_R_16F, n, rows, n) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatrixLayoutCreate(&c.d, CUDA_R_16F, m, rows, m) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulPreferenceCreate(&c.pref) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)) ==
            CUBLAS_STATUS_SUCCESS;
    const uint32_t align[4] = {alignment_of(w_t), alignment_of(x), alignment_of(y), alignment_of(y)};
    const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; ok && i < 4; ++i)
        ok = cublasLtMatmulPreferenceSetAttribute(c.pref, which[i], &align[i], sizeof(align[i])) ==
             CUBLAS_STATUS_SUCCESS;
    *found = 0;
    return ok &&
           cublasLtMatmulAlgoGetHeuristic(handle, c.op, c.a, c.b, c.d, c.d, c.pref, want, list, found) ==
               CUBLAS_STATUS_SUCCESS &&
           *found > 0;
}

// The GEMM with entry `choice` of the heuristic list (past its end: the last entry). The list is
// asked for only as far as that entry, so the default choice costs one entry's query per call.
cudaError_t lt_gemm_bias(cublasLtHandle_t handle, const __half* w_t, const __half* x, __half* y, const __half* bias,
                         int64_t n, int64_t m, int64_t rows, void* lt_ws, int choice, cudaStream_t stream) {
    choice = std::min(std::max(choice, 0), kDenseGemmChoices - 1);
    LtCall c;
    cublasLtMatmulHeuristicResult_t list[kDenseGemmChoices]{};
    int found = 0;
    if (!lt_candidates(handle, w_t, x, y, bias, n, m, rows, choice + 1, c, list, &found)) return cudaErrorNotSupported;
    const cublasLtMatmulAlgo_t& algo = list[std::min(choice, found - 1)].algo;
    const float alpha = 1.f, beta = 0.f;
    return cublasLtMatmul(handle, c.op, &alpha, w_t, c.a, x, c.b, &beta, y, c.d, y, c.d, &algo, lt_ws, kLtWorkspace,
                          stream) == CUBLAS_STATUS_SUCCESS
               ? cudaSuccess
               : cudaErrorUnknown;
}

// The dense form's workspace after the build's two scratch buffers: the fp16 bias (where the layer
// has one), then cuBLASLt's scratch.
struct DenseTail {
    __half* bias;
    char* lt_ws;
};
DenseTail dense_tail(const FrameLinearParams& p, void* workspace) {
    char* const after_weight = static_cast<char*>(workspace) + effective_weight_workspace_bytes(p);
    return {p.bias ? reinterpret_cast<__half*>(after_weight) : nullptr,
            after_weight + align256(sizeof(__half) * p.out_dim())};
}

}  // namespace

size_t frame_linear_dense_workspace_bytes(const FrameLinearParams& p) {
    return effective_weight_workspace_bytes(p) + align256(sizeof(__half) * p.out_dim()) + kLtWorkspace;
}

cudaError_t launch_frame_linear_dense(const FrameLinearParams& p, const void* x, void* y, int64_t rows, void* workspace,
                                      void* cublaslt_handle, cudaStream_t stream, int gemm_choice) {
    if (rows == 0) return cudaSuccess;
    if (cublaslt_handle == nullptr) return cudaErrorInvalidValue;
    const DenseTail tail = dense_tail(p, workspace);
    __half* const bias = tail.bias;
    __half* w_t = nullptr;
    cudaError_t err = launch_effective_weight(p, workspace, &w_t, stream);
    // cuBLASLt adds a bias of the output's type: fp16 (the output is rounded to fp16 anyway).
    if (err == cudaSuccess && bias) err = launch_half_from_float(p.bias, bias, p.out_dim(), stream);
    if (err != cudaSuccess) return err;
    return lt_gemm_bias(static_cast<cublasLtHandle_t>(cublaslt_handle), w_t, static_cast<const __half*>(x),
                        static_cast<__half*>(y), bias, p.in_dim(), p.out_dim(), rows, tail.lt_ws, gemm_choice, stream);
}

size_t dense_weight_bytes(const FrameLinearParams& p) {
    return align256(sizeof(__half) * p.in_dim() * p.out_dim()) + align256(sizeof(__half) * p.out_dim());
}

size_t dense_weight_gemm_workspace_bytes() { return kLtWorkspace; }

cudaError_t build_dense_weight(const FrameLinearParams& p, void* weight, void* workspace, cudaStream_t stream) {
    __half* w_t = nullptr;
    const size_t w_bytes = sizeof(__half) * p.in_dim() * p.out_dim();
    cudaError_t err = launch_effective_weight(p, workspace, &w_t, stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(weight, w_t, w_bytes, cudaMemcpyDeviceToDevice, stream);
    if (err == cudaSuccess && p.bias)
        err = launch_half_from_float(p.bias, reinterpret_cast<__half*>(static_cast<char*>(weight) + align256(w_bytes)),
                                     p.out_dim(), stream);
    return err;
}

cudaError_t launch_dense_weight_gemm(const FrameLinearParams& p, const void* weight, const void* x, void* y,
                                     int64_t rows, void* workspace, void* cublaslt_handle, cudaStream_t stream,
                                     int gemm_choice) {
    if (rows == 0) return cudaSuccess;
    if (cublaslt_handle == nullptr || weight == nullptr) return cudaErrorInvalidValue;
    const size_t w_bytes = sizeof(__half) * p.in_dim() * p.out_dim();
    const __half* bias =
        p.bias ? reinterpret_cast<const __half*>(static_cast<const char*>(weight) + align256(w_bytes)) : nullptr;
    return lt_gemm_bias(static_cast<cublasLtHandle_t>(cublaslt_handle), static_cast<const __half*>(weight),
                        static_cast<const __half*>(x), static_cast<__half*>(y), bias, p.in_dim(), p.out_dim(), rows,
                        workspace, gemm_choice, stream);
}

int frame_linear_dense_gemm_choices(const FrameLinearParams& p, const void* x, const void* y, int64_t rows,
                                    void* workspace, void* cublaslt_handle) {
    if (cublaslt_handle == nullptr || rows <= 0) return 0;
    // The build leaves W^T at the start of either scratch buffer: both 256-byte aligned when the
    // workspace is, as the bias is.
    LtCall c;
    cublasLtMatmulHeuristicResult_t list[kDenseGemmChoices]{};
    int found = 0;
    lt_candidates(static_cast<cublasLtHandle_t>(cublaslt_handle), workspace, x, y, dense_tail(p, workspace).bias,
                  p.in_dim(), p.out_dim(), rows, kDenseGemmChoices, c, list, &found);
    return found;
}

}  // namespace fq
