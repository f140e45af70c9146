// Profiling builds (-DFQ_TRACE): %globaltimer stamps of thread 0, one table per translation unit,
// read back with the file's read_trace* launcher (fq_kernels.h).
#pragma once

namespace fq {
namespace detail {

#ifdef FQ_TRACE
static __device__ unsigned long long g_trace[64];  // one per translation unit
// Slots < 32: block 0 only; slots >= 32: any block (the decode kernel's last block).
#define FQ_STAMP(slot)                                               \
    do {                                                             \
        if (threadIdx.x == 0 && ((slot) >= 32 || blockIdx.x == 0)) { \
            unsigned long long t_;                                   \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));   \
            ::fq::detail::g_trace[(slot)] = t_;                      \
        }                                                            \
    } while (0)
#else
#define FQ_STAMP(slot) \
    do {               \
    } while (0)
#endif

}  // namespace detail
}  // namespace fq
