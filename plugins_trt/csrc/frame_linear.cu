// One FrameQuant layer y = R_out T_out D_hat T_in^T R_in^T x + bias.
//
// Fused path (rows <= kFusedMaxRows): one cooperative launch in three phases separated by grid
// barriers. A: one block per token rotates (R_in^T) and analyses (T_in^T) the input in shared
// memory and writes the fp16 frame coefficients c; B: all blocks run the packed tensor-core GEMV
// over 16-row tiles of D_hat (8 warps split the columns) into fp32 z; C: one block per token runs
// synthesis (T_out), rotation (R_out) and the bias. Unfused path: the five kernels one by one.
#include <algorithm>

#include "common.cuh"
#include "packed_matmul.cuh"

namespace fq {
namespace detail {
cudaError_t launch_rotation_bias(const RotationParams& p, const void* x, void* y, const float* bias, int64_t rows,
                                 DType dtype, bool transpose, cudaStream_t stream);
}

namespace {

using namespace detail;

constexpr int kFusedWarps = 8;

struct CoherentAct {  // frame coefficients written earlier in the same launch: read through L2
    const __half* c;
    int rows, cols;
    __device__ __forceinline__ uint32_t operator()(int tok, int k) const {
        if (tok >= rows || k >= cols) return 0u;
        return __ldcg(reinterpret_cast<const unsigned int*>(c + static_cast<int64_t>(tok) * cols + k));
    }
};

size_t phase_a_floats(const FrameLinearParams& p) {
    const int d = p.in_dim();
    return 2 * static_cast<size_t>(d) + (p.has_frame_in ? p.frame_in.kp * p.frame_in.kp / 2 : 0);
}
size_t phase_c_floats(const FrameLinearParams& p) {
    const int d = p.out_dim();
    return static_cast<size_t>(p.matmul.out_features) + 2 * static_cast<size_t>(d) +
           (p.has_frame_out ? p.frame_out.kp * p.frame_out.kp / 2 : 0);
}

template <int BITS, int NT, typename T>
__global__ void __launch_bounds__(kFusedWarps * 32)
    fused_frame_linear_kernel(FrameLinearParams p, const T* __restrict__ x, T* y, int rows, __half* cbuf,
                              float* zbuf, unsigned int* barrier) {
    extern __shared__ float smem[];
    const int d_in = p.in_dim(), d_out = p.out_dim();
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features;

    // Phase A: c = T_in^T R_in^T x, one block per token.
    for (int tok = blockIdx.x; tok < rows; tok += gridDim.x) {
        float* u = smem;
        float* tmp = u + d_in;
        __half* dft = reinterpret_cast<__half*>(tmp + d_in);
        for (int i = threadIdx.x; i < d_in; i += blockDim.x)
            u[i] = to_float(x[static_cast<int64_t>(tok) * d_in + i]);
        __syncthreads();
        if (p.has_rotation_in) block_rotate(p.rotation_in, u, tmp, true);
        __half* c = cbuf + static_cast<int64_t>(tok) * K_in;
        if (p.has_frame_in) {
            load_dft(p.frame_in.dft, dft, p.frame_in.kp);
            block_frame_analysis<__half>(p.frame_in, u, c, dft);
        } else {
            for (int i = threadIdx.x; i < K_in; i += blockDim.x) c[i] = __float2half_rn(u[i]);
        }
        __syncthreads();
    }
    grid_barrier(barrier);

    // Phase B: z = D_hat c on tensor cores, 16 rows per block and tile.
    {
        using L = CodeLayout<BITS>;
        float* red = smem;  // [kFusedWarps][NT * 128]
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const int nchunks = (p.matmul.words_per_row + L::kChunkWords - 1) / L::kChunkWords;
        const int per_warp = (nchunks + kFusedWarps - 1) / kFusedWarps;
        const int c_begin = min(nchunks, warp * per_warp), c_end = min(nchunks, c_begin + per_warp);
        const CoherentAct act{cbuf, rows, K_in};
        const int ntiles = (K_out + 15) / 16;
        for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
            const int row0 = tile * 16;
            float acc[NT][4], xs[NT];
            warp_packed_tile<BITS, NT>(p.matmul, row0, act, 0, c_begin, c_end, acc, xs, -1);
            apply_zero<NT>(p.matmul, row0, acc, xs);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) red[warp * NT * 128 + (nt * 4 + i) * 32 + lane] = acc[nt][i];
            __syncthreads();
            for (int e = threadIdx.x; e < NT * 128; e += blockDim.x) {
                float sum = 0.f;
#pragma unroll
                for (int w = 0; w < kFusedWarps; ++w) sum += red[w * NT * 128 + e];
                const int l = e & 31, i = (e >> 5) & 3, nt = e >> 7;
                const int row = row0 + (l >> 2) + 8 * (i >> 1);
                const int tok = nt * 8 + 2 * (l & 3) + (i & 1);
                if (row < K_out && tok < rows)
                    zbuf[static_cast<int64_t>(tok) * K_out + row] = __half2float(p.matmul.scale[row]) * sum;
            }
            __syncthreads();
        }
    }
    grid_barrier(barrier);

    // Phase C: y = R_out T_out z + bias, one block per token.
    for (int tok = blockIdx.x; tok < rows; tok += gridDim.x) {
        float* runs = smem;
        float* v = runs + K_out;
        float* tmp = v + d_out;
        __half* dft_t = reinterpret_cast<__half*>(tmp + d_out);
        const float* z = zbuf + static_cast<int64_t>(tok) * K_out;
        if (p.has_frame_out) {
            load_dft(p.frame_out.dft_t, dft_t, p.frame_out.kp);
            block_frame_synthesis(p.frame_out, [&](int i) { return __ldcg(z + i); }, runs, v, dft_t);
        } else {
            for (int i = threadIdx.x; i < d_out; i += blockDim.x) v[i] = __ldcg(z + i);
            __syncthreads();
        }
        if (p.has_rotation_out) block_rotate(p.rotation_out, v, tmp, false);
        for (int i = threadIdx.x; i < d_out; i += blockDim.x)
            y[static_cast<int64_t>(tok) * d_out + i] = from_float<T>(v[i] + (p.bias ? p.bias[i] : 0.f));
        __syncthreads();
    }
}

template <int BITS, int NT, typename T>
cudaError_t launch_fused(const FrameLinearParams& p, const T* x, T* y, int rows, void* workspace,
                         unsigned int* barrier, cudaStream_t stream) {
    auto kernel = fused_frame_linear_kernel<BITS, NT, T>;
    const size_t floats = std::max({phase_a_floats(p), phase_c_floats(p), static_cast<size_t>(kFusedWarps * NT * 128)});
    const size_t smem = floats * sizeof(float);
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
    int device = 0, sms = 0, per_sm = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kFusedWarps * 32, smem);
    if (err != cudaSuccess) return err;
    if (per_sm < 1) return cudaErrorInvalidConfiguration;
    const int ntiles = (p.matmul.out_features + 15) / 16;
    const int grid = std::max(1, std::min(ntiles, per_sm * sms));
    __half* cbuf = static_cast<__half*>(workspace);
    const size_t c_bytes = (sizeof(__half) * rows * p.matmul.in_features + 255) / 256 * 256;
    float* zbuf = reinterpret_cast<float*>(static_cast<char*>(workspace) + c_bytes);
    FrameLinearParams params = p;
    void* args[] = {&params, &x, &y, &rows, &cbuf, &zbuf, &barrier};
    return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(grid), dim3(kFusedWarps * 32), args, smem,
                                       stream);
}

template <typename T>
cudaError_t launch_fused_typed(const FrameLinearParams& p, const T* x, T* y, int rows, void* ws, unsigned int* bar,
                               cudaStream_t stream) {
    const bool two = rows > 8;
    switch (p.matmul.bits) {
        case 2: return two ? launch_fused<2, 2, T>(p, x, y, rows, ws, bar, stream) : launch_fused<2, 1, T>(p, x, y, rows, ws, bar, stream);
        case 4: return two ? launch_fused<4, 2, T>(p, x, y, rows, ws, bar, stream) : launch_fused<4, 1, T>(p, x, y, rows, ws, bar, stream);
        case 8: return two ? launch_fused<8, 2, T>(p, x, y, rows, ws, bar, stream) : launch_fused<8, 1, T>(p, x, y, rows, ws, bar, stream);
        default: return cudaErrorInvalidValue;
    }
}

template <typename T>
__global__ void add_bias_kernel(T* y, const float* bias, int64_t rows, int cols) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < rows * cols) y[i] = from_float<T>(to_float(y[i]) + bias[i % cols]);
}

}  // namespace

size_t frame_linear_workspace_bytes(const FrameLinearParams& p, int64_t rows) {
    const size_t fused = (sizeof(__half) * rows * p.matmul.in_features + 255) / 256 * 256 +
                         sizeof(float) * rows * p.matmul.out_features;
    const size_t width = std::max({p.in_dim(), p.out_dim(), p.matmul.in_features, p.matmul.out_features});
    const size_t unfused = 2 * ((sizeof(float) * rows * width + 255) / 256 * 256);
    return std::max(fused, unfused);
}

cudaError_t launch_frame_linear_fused(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                      void* workspace, unsigned int* barrier, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kFusedMaxRows) return cudaErrorInvalidValue;
    if (dtype == DType::kFloat16)
        return launch_fused_typed<__half>(p, static_cast<const __half*>(x), static_cast<__half*>(y),
                                          static_cast<int>(rows), workspace, barrier, stream);
    return launch_fused_typed<float>(p, static_cast<const float*>(x), static_cast<float*>(y), static_cast<int>(rows),
                                     workspace, barrier, stream);
}

cudaError_t launch_frame_linear_unfused(const FrameLinearParams& p, const void* x, void* y, int64_t rows,
                                        DType dtype, void* workspace, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    const size_t elem = dtype == DType::kFloat16 ? 2 : 4;
    const size_t width = std::max({p.in_dim(), p.out_dim(), p.matmul.in_features, p.matmul.out_features});
    char* buf_a = static_cast<char*>(workspace);
    char* buf_b = buf_a + (sizeof(float) * rows * width + 255) / 256 * 256;
    (void)elem;
    cudaError_t err = cudaSuccess;
    const void* cur = x;
    if (p.has_rotation_in) {
        err = launch_rotation(p.rotation_in, cur, buf_a, rows, dtype, true, stream);
        cur = buf_a;
    }
    if (err == cudaSuccess && p.has_frame_in) {
        void* out = cur == buf_a ? buf_b : buf_a;
        err = launch_frame(p.frame_in, cur, out, rows, dtype, true, stream);
        cur = out;
    }
    if (err == cudaSuccess) {
        void* out = cur == buf_a ? buf_b : buf_a;
        err = launch_packed_matmul(p.matmul, cur, out, rows, dtype, stream);
        cur = out;
    }
    if (err == cudaSuccess && p.has_frame_out) {
        void* out = (!p.has_rotation_out) ? y : (cur == buf_a ? buf_b : buf_a);
        err = launch_frame(p.frame_out, cur, out, rows, dtype, false, stream);
        cur = out;
    }
    if (err != cudaSuccess) return err;
    if (p.has_rotation_out) return detail::launch_rotation_bias(p.rotation_out, cur, y, p.bias, rows, dtype, false, stream);
    if (cur != y) {
        err = cudaMemcpyAsync(y, cur, elem * rows * p.out_dim(), cudaMemcpyDeviceToDevice, stream);
        if (err != cudaSuccess) return err;
    }
    if (p.bias) {
        const int64_t n = rows * p.out_dim();
        const int blocks = static_cast<int>((n + 255) / 256);
        if (dtype == DType::kFloat16)
            add_bias_kernel<__half><<<blocks, 256, 0, stream>>>(static_cast<__half*>(y), p.bias, rows, p.out_dim());
        else
            add_bias_kernel<float><<<blocks, 256, 0, stream>>>(static_cast<float*>(y), p.bias, rows, p.out_dim());
        return cudaGetLastError();
    }
    return cudaSuccess;
}

}  // namespace fq
