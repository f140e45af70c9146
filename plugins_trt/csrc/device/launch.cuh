// Host side of the launchers: the activation-type dispatch and the device limits that grids and
// shared memory are sized by.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>

#include "fq_kernels.h"

namespace fq {
namespace detail {

// f(x, y) with x and y cast to the activation type of dtype (the layer launchers' dispatch).
template <typename F> cudaError_t with_act_type(DType dtype, const void* x, void* y, F f) {
    if (dtype == DType::kFloat16) return f(static_cast<const __half*>(x), static_cast<__half*>(y));
    return f(static_cast<const float*>(x), static_cast<float*>(y));
}

// The current device's SM count and shared-memory limits in bytes (per block with opt-in, per SM):
// what every launcher sizes its grid and blocks by.
struct DeviceLimits {
    int sms = 0, smem_optin = 0, smem_per_sm = 0, cc_major = 0;
};
inline DeviceLimits device_limits() {
    DeviceLimits d;
    int device = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, device);
    return d;
}

// Allows `smem` bytes of dynamic shared memory for `kernel`.
template <typename K> cudaError_t allow_smem(K kernel, size_t smem) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

// Blocks for a grid-stride row kernel: as many as are resident on the device at once, at most rows.
template <typename K> int row_grid(K kernel, int threads, size_t smem, int64_t rows) {
    const int sms = device_limits().sms;
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess || per_sm < 1)
        per_sm = 1;
    const int64_t resident = static_cast<int64_t>(per_sm) * sms;
    return static_cast<int>(rows < 1 ? 1 : (rows < resident ? rows : resident));
}

}  // namespace detail
}  // namespace fq
