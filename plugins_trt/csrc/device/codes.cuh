// The packed codes as the tensor-core kernels read them: which lane feeds which codes, and their
// decoding to exact fp16 integers (packed_layout.h is the layout itself).
#pragma once

#include <cuda_fp16.h>
#include <cstdint>

#include "packed_layout.h"

namespace fq {
namespace detail {

// Code layout seen by one lane (bits in {2, 4, 8}: packed::whole_word_bits). Word w of a row holds
// codes w * kCodesPerWord + j at bit bits * j (packed_layout.h). The 4 lanes of a quad own
// consecutive slices of kLaneWords words; each k16 step a lane feeds 4 codes of one word: pair
// (j, j + kPairStride) into a0/a1 and (j + 1, j + 1 + kPairStride) into a2/a3, j = 2 * sub.
// The activations are read in the same order, so the product is the plain dot product.
template <int BITS> struct CodeLayout {
    static_assert(packed::whole_word_bits(BITS), "tensor-core path supports 2, 4, 8 bits");
    static constexpr int kLaneWords = (BITS == 2) ? 2 : 4;  // 8- or 16-byte loads
    static constexpr int kCodesPerWord = packed::codes_per_word(BITS);
    static constexpr int kPairStride = 16 / BITS;  // code distance of the two halves
    static constexpr int kStepsPerWord = 8 / BITS;
    static constexpr int kSteps = kLaneWords * kStepsPerWord;                  // k16 steps per chunk
    static constexpr int kChunkWords = 4 * kLaneWords;                         // words of one row per chunk
    static constexpr uint32_t kMask2 = packed::code_mask(BITS) * 0x00010001u;  // one code in each half
};

// Half2 (c_j, c_{j + kPairStride}) as exact fp16 integers, j = 2 * sub + odd.
template <int BITS> __device__ __forceinline__ uint32_t decode_pair(uint32_t word, int shift) {
    constexpr uint32_t kMagic = 0x64006400u;  // fp16 1024.0 in both halves: 1024 + c is exact
    uint32_t h = ((word >> shift) & CodeLayout<BITS>::kMask2) | kMagic;
    __half2 v = __hsub2(*reinterpret_cast<__half2*>(&h), __half2half2(__ushort_as_half(0x6400)));
    return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace detail
}  // namespace fq
