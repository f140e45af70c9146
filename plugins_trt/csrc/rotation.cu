// Randomized Hadamard rotation kernel: one block per row, the row held in shared memory (fp32).
#include "common.cuh"

namespace fq {
namespace {

template <typename T>
__global__ void rotation_kernel(RotationParams p, const T* __restrict__ x, T* y, const float* bias,
                                bool transpose) {
    extern __shared__ float smem[];
    float* v = smem;
    float* tmp = smem + p.dim;
    const int64_t row = blockIdx.x;
    const T* xr = x + row * p.dim;
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x) v[i] = detail::to_float(xr[i]);
    __syncthreads();
    detail::block_rotate(p, v, tmp, transpose);
    T* yr = y + row * p.dim;
    for (int i = threadIdx.x; i < p.dim; i += blockDim.x)
        yr[i] = detail::from_float<T>(v[i] + (bias ? bias[i] : 0.f));
}

}  // namespace

size_t rotation_smem_bytes(const RotationParams& p) {
    return sizeof(float) * static_cast<size_t>(p.dim) * (p.odd > 1 ? 2 : 1);
}

namespace detail {
// y = R x + bias (or R^T x + bias); used by the unfused layer for its last step.
cudaError_t launch_rotation_bias(const RotationParams& p, const void* x, void* y, const float* bias, int64_t rows,
                                 DType dtype, bool transpose, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    const size_t smem = rotation_smem_bytes(p);
    const int threads = p.dim >= 4096 ? 512 : 256;
    if (dtype == DType::kFloat16) {
        auto kernel = rotation_kernel<__half>;
        if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        kernel<<<rows, threads, smem, stream>>>(p, static_cast<const __half*>(x), static_cast<__half*>(y), bias,
                                                transpose);
    } else {
        auto kernel = rotation_kernel<float>;
        if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        kernel<<<rows, threads, smem, stream>>>(p, static_cast<const float*>(x), static_cast<float*>(y), bias,
                                                transpose);
    }
    return cudaGetLastError();
}
}  // namespace detail

cudaError_t launch_rotation(const RotationParams& p, const void* x, void* y, int64_t rows, DType dtype,
                            bool transpose, cudaStream_t stream) {
    return detail::launch_rotation_bias(p, x, y, nullptr, rows, dtype, transpose, stream);
}

}  // namespace fq
