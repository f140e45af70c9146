// Asynchronous global -> shared copies (cp.async, sm_80 on) and programmatic dependent launch
// (griddepcontrol, sm_90).
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace fq {
namespace detail {

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem) {
    const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Programmatic dependent launch (sm_90): a kernel launched with programmatic stream
// serialization may start before the kernel ahead of it ends; grid_dependency_wait() returns once
// that kernel has finished and its writes are visible (at once without such a launch), and
// allow_dependents() lets the next such kernel start. No-ops before sm_90.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's most recent cp.async groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// n 4-byte words global -> shared by cp.async, the block's threads together (16-byte pieces where
// both addresses allow); no commit, no wait.
__device__ inline void stage_words(void* dst, const void* src, int n) {
    const bool wide =
        ((reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(__cvta_generic_to_shared(dst))) & 15) == 0;
    const int n16 = wide ? n / 4 : 0;
    for (int i = threadIdx.x; i < n16; i += blockDim.x)
        cp_async16(static_cast<uint32_t*>(dst) + 4 * i, static_cast<const uint32_t*>(src) + 4 * i);
    for (int i = 4 * n16 + threadIdx.x; i < n; i += blockDim.x)
        cp_async4(static_cast<uint32_t*>(dst) + i, static_cast<const uint32_t*>(src) + i);
}

// Waits for every cp.async this thread started (a barrier must follow before others read them).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

}  // namespace detail
}  // namespace fq
