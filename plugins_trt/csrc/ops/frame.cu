// Frame analysis / synthesis kernels: rows in a grid-stride loop, one row at a time per block;
// gathers in CUDA cores, the per-block DFT of the tight fusion frame on tensor cores (fp16
// operands, fp32 accumulation). The DFT table is loaded into shared memory once per block.
#include "device/frame_transform.cuh"
#include "device/launch.cuh"
#include "device/rows.cuh"

namespace fq {
namespace {

constexpr int kFrameThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kFrameThreads)
    frame_analysis_kernel(FrameParams p, const T* __restrict__ in, T* out, int64_t rows) {
    extern __shared__ float smem[];
    __half* dft = reinterpret_cast<__half*>(smem);
    float* u = smem + detail::dft_floats(p.kp);
    const int d = p.d(), K = p.num_vectors();
    detail::load_dft(p.dft, dft, p.kp);
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        __syncthreads();  // the previous row's analysis is done with u
        detail::load_row(in + row * d, d, u);
        __syncthreads();
        detail::block_frame_analysis<T>(p, u, out + row * K, dft);
    }
}

template <typename T>
__global__ void __launch_bounds__(kFrameThreads)
    frame_synthesis_kernel(FrameParams p, const T* __restrict__ in, T* out, int64_t rows) {
    extern __shared__ float smem[];
    __half* dft_t = reinterpret_cast<__half*>(smem);
    const int d = p.d(), K = p.num_vectors();
    float* runs = smem + detail::dft_floats(p.kp);
    float* v = runs + K;
    detail::load_dft(p.dft_t, dft_t, p.kp);
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        __syncthreads();  // the previous row's stores are done with v
        const T* z = in + row * K;
        detail::block_frame_synthesis(p, [z](int i) { return detail::to_float(__ldg(z + i)); }, runs, v, dft_t);
        detail::store_row(out + row * d, d, v);
    }
}

template <typename T>
cudaError_t launch_typed(const FrameParams& p, const void* in, void* out, int64_t rows, bool analysis,
                         cudaStream_t stream) {
    const size_t table = sizeof(float) * detail::dft_floats(p.kp);
    if (analysis) {
        const size_t smem = table + sizeof(float) * detail::padded_floats(p.d());
        auto kernel = frame_analysis_kernel<T>;
        const cudaError_t err = detail::allow_smem(kernel, smem);
        if (err != cudaSuccess) return err;
        const int grid = detail::row_grid(kernel, kFrameThreads, smem, rows);
        kernel<<<grid, kFrameThreads, smem, stream>>>(p, static_cast<const T*>(in), static_cast<T*>(out), rows);
    } else {
        const size_t smem = table + sizeof(float) * (p.num_vectors() + detail::padded_floats(p.d()));
        auto kernel = frame_synthesis_kernel<T>;
        const cudaError_t err = detail::allow_smem(kernel, smem);
        if (err != cudaSuccess) return err;
        const int grid = detail::row_grid(kernel, kFrameThreads, smem, rows);
        kernel<<<grid, kFrameThreads, smem, stream>>>(p, static_cast<const T*>(in), static_cast<T*>(out), rows);
    }
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_frame(const FrameParams& p, const void* in, void* out, int64_t rows, DType dtype, bool analysis,
                         cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (p.kp > 16 * detail::kMaxKSteps || p.kp < 2 * p.k) return cudaErrorInvalidValue;
    return dtype == DType::kFloat16 ? launch_typed<__half>(p, in, out, rows, analysis, stream)
                                    : launch_typed<float>(p, in, out, rows, analysis, stream);
}

}  // namespace fq
