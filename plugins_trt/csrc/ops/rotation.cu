// Randomized Hadamard rotation kernel: rows in a grid-stride loop, one row at a time per block,
// held in shared memory (fp32, padded against bank conflicts); loads and stores in 16-byte batches.
#include "device/launch.cuh"
#include "device/rotation.cuh"
#include "device/rows.cuh"

namespace fq {
namespace {

constexpr int kRotationThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kRotationThreads)
    rotation_kernel(RotationParams p, const T* __restrict__ x, T* y, int64_t rows, bool transpose) {
    extern __shared__ float smem[];
    float* v = smem;
    float* tmp = smem + detail::padded_floats(p.dim);
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        __syncthreads();  // the previous row's stores are done with v
        // The forward rotation starts with diag(signs): applied while loading.
        detail::load_row(x + row * p.dim, p.dim, v, transpose ? nullptr : p.signs);
        detail::block_rotate(p, v, tmp, transpose, !transpose);
        detail::store_row(y + row * p.dim, p.dim, v);
    }
}

template <typename T>
cudaError_t launch_typed(const RotationParams& p, const void* x, void* y, int64_t rows, bool transpose,
                         cudaStream_t stream) {
    const size_t smem = rotation_smem_bytes(p);
    auto kernel = rotation_kernel<T>;
    const cudaError_t err = detail::allow_smem(kernel, smem);
    if (err != cudaSuccess) return err;
    const int grid = detail::row_grid(kernel, kRotationThreads, smem, rows);
    kernel<<<grid, kRotationThreads, smem, stream>>>(p, static_cast<const T*>(x), static_cast<T*>(y), rows, transpose);
    return cudaGetLastError();
}

}  // namespace

size_t rotation_smem_bytes(const RotationParams& p) {
    return sizeof(float) * (static_cast<size_t>(detail::padded_floats(p.dim)) + (p.odd > 1 ? p.dim : 0));
}

cudaError_t launch_rotation(const RotationParams& p, const void* x, void* y, int64_t rows, DType dtype, bool transpose,
                            cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    return dtype == DType::kFloat16 ? launch_typed<__half>(p, x, y, rows, transpose, stream)
                                    : launch_typed<float>(p, x, y, rows, transpose, stream);
}

}  // namespace fq
