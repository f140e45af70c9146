// The m16n8k16 tensor-core product (fp16 operands, fp32 accumulation) and one output tile of it.
#pragma once

#include <cuda_fp16.h>
#include <cstdint>

namespace fq {
namespace detail {

// D += A B, m16n8k16, fp16 inputs, fp32 accumulation. Fragment layout (PTX ISA):
// A: a0 (row g, k 2q..2q+1), a1 (row g+8, same k), a2 (row g, k 2q+8..), a3 (row g+8, k 2q+8..);
// B: b0 (k 2q..2q+1, col g), b1 (k 2q+8.., col g); D: d0,d1 (row g, cols 2q, 2q+1), d2,d3 (row g+8),
// with g = lane / 4 and q = lane % 4.
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One 16 x 8 output tile of A B: acc = sum over k-steps s < ksteps of mma16816 with A fragments
// a[s] and B from a shared-memory table whose row n (halves `pitch` apart) holds output column n
// along k; `nt` picks output columns 8 nt .. 8 nt + 7.
template <int KS>
__device__ __forceinline__ void mma_tile(float acc[4], const uint32_t (&a)[KS][4], const __half* table, int pitch,
                                         int nt, int ksteps) {
    const int lane = threadIdx.x & 31;
    const __half* brow = table + (nt * 8 + (lane >> 2)) * pitch + 2 * (lane & 3);
    acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
#pragma unroll
    for (int s = 0; s < KS; ++s) {
        if (s < ksteps) {
            const uint32_t b0 = *reinterpret_cast<const uint32_t*>(brow + 16 * s);
            const uint32_t b1 = *reinterpret_cast<const uint32_t*>(brow + 16 * s + 8);
            mma16816(acc, a[s], b0, b1);
        }
    }
}

}  // namespace detail
}  // namespace fq
