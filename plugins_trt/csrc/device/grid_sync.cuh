// Synchronisation between the blocks of one launch: a grid barrier for co-resident blocks and the
// arrival count that tells the last block of a grid.
#pragma once

namespace fq {
namespace detail {

// Blocks 0 .. n-1 arrive here; those with `wait` stay until all n arrived. The counter starts at 0
// (or 0x80000000) and each crossing adds exactly 2^31 (block 0 adds 2^31 - (n - 1), the others
// 1), so its top bit flips once all blocks arrived and the counter is ready for the next crossing
// or launch. `nap`: waiters poll with a short sleep (the spread decode kernel's barriers, whose
// waiters are many; the cooperative kernel's poll without one).
__device__ inline void grid_barrier(unsigned int* counter, unsigned int n, bool wait, bool nap) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int inc = (blockIdx.x == 0) ? (0x80000000u - (n - 1)) : 1u;
        __threadfence();
        const unsigned int old = atomicAdd(counter, inc);
        if (wait) {
            while (((old ^ *reinterpret_cast<volatile unsigned int*>(counter)) & 0x80000000u) == 0)
                if (nap) __nanosleep(32);
            __threadfence();
        }
    }
    __syncthreads();
}
__device__ inline void grid_barrier(unsigned int* counter) { grid_barrier(counter, gridDim.x, true, false); }

// Every block calls this once when its results are written; true (in every thread) for the last
// block of the grid to do so, which may then read all of them. The counter's low 31 bits count
// arrivals and return to zero; its top bit (grid_barrier's phase, the cooperative kernel shares
// the word) is left as it was. (The barrier orders the block's stores before thread 0's fence,
// which is cumulative.)
__device__ inline bool last_block_arrives(unsigned int* counter) {
    __shared__ bool is_last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned int old = atomicAdd(counter, 1u);
        is_last = ((old + 1u) & 0x7fffffffu) == gridDim.x;
        if (is_last) {
            atomicSub(counter, gridDim.x);
            __threadfence();
        }
    }
    __syncthreads();
    return is_last;
}

}  // namespace detail
}  // namespace fq
