// Frame analysis / synthesis kernels: one block per row; gathers in CUDA cores, the per-block
// DFT of the tight fusion frame on tensor cores (fp16 operands, fp32 accumulation).
#include "common.cuh"

namespace fq {
namespace {

constexpr int kFrameThreads = 128;

template <typename T>
__global__ void frame_analysis_kernel(FrameParams p, const T* __restrict__ in, T* out) {
    extern __shared__ float smem[];
    __half* dft = reinterpret_cast<__half*>(smem);
    float* u = smem + p.kp * p.kp / 2;
    const int64_t row = blockIdx.x;
    const int d = p.d(), K = p.num_vectors();
    for (int i = threadIdx.x; i < d; i += blockDim.x) u[i] = detail::to_float(in[row * d + i]);
    detail::load_dft(p.dft, dft, p.kp);  // ends with the barrier that also publishes u
    detail::block_frame_analysis<T>(p, u, out + row * K, dft);
}

template <typename T>
__global__ void frame_synthesis_kernel(FrameParams p, const T* __restrict__ in, T* out) {
    extern __shared__ float smem[];
    __half* dft_t = reinterpret_cast<__half*>(smem);
    const int d = p.d(), K = p.num_vectors();
    float* runs = smem + p.kp * p.kp / 2;
    float* v = runs + K;
    const int64_t row = blockIdx.x;
    detail::load_dft(p.dft_t, dft_t, p.kp);
    const T* z = in + row * K;
    detail::block_frame_synthesis(p, [&](int i) { return detail::to_float(z[i]); }, runs, v, dft_t);
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[row * d + i] = detail::from_float<T>(v[i]);
}

template <typename T>
cudaError_t launch_typed(const FrameParams& p, const void* in, void* out, int64_t rows, bool analysis,
                         cudaStream_t stream) {
    const size_t table = sizeof(__half) * p.kp * p.kp;
    if (analysis) {
        const size_t smem = table + sizeof(float) * p.d();
        auto kernel = frame_analysis_kernel<T>;
        if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        kernel<<<rows, kFrameThreads, smem, stream>>>(p, static_cast<const T*>(in), static_cast<T*>(out));
    } else {
        const size_t smem = table + sizeof(float) * (p.num_vectors() + p.d());
        auto kernel = frame_synthesis_kernel<T>;
        if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        kernel<<<rows, kFrameThreads, smem, stream>>>(p, static_cast<const T*>(in), static_cast<T*>(out));
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
