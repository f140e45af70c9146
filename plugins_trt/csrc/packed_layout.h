// The packed layout of b-bit codes (layout version 1), as every C++ and CUDA reader sees it.
//
// The C++ statement of fq_export/packing.py, which defines the layout: codes form a rows x cols
// matrix of unsigned integers in [0, 2^bits); each row is padded with zero codes to a multiple of
// kGroup = 32 columns; each group of 32 codes is stored in `bits` consecutive 32-bit words, read as
// one little-endian integer of 32 * bits bits, code j of the group at bits [bits j, bits j + bits).
// For bits in {2, 4, 8} no code crosses a word (a word holds 32 / bits whole codes); for bits = 3,
// codes 10 and 21 of a group straddle two words. tests/test_packed_layout_header.py checks these
// functions against fq_export.packing (words_per_row, pack_codes / unpack_codes, LAYOUT_VERSION).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace fq {
namespace packed {

constexpr int kLayoutVersion = 1;  // fq_export.packing.LAYOUT_VERSION; the plugins' layout_version
constexpr int kGroup = 32;         // codes of one group, stored in `bits` words

// Bit widths of the layout (fq_export.packing.SUPPORTED_BITS).
FQ_HD_INLINE constexpr bool supported_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }
// Bit widths whose codes never cross a word: the tensor-core and word-at-a-time decoders.
FQ_HD_INLINE constexpr bool whole_word_bits(int bits) { return bits == 2 || bits == 4 || bits == 8; }

// 32-bit words holding one row of `cols` codes.
FQ_HD_INLINE constexpr int words_per_row(int cols, int bits) { return (cols + kGroup - 1) / kGroup * bits; }

// Codes per word and the mask of one code, for whole_word_bits.
FQ_HD_INLINE constexpr int codes_per_word(int bits) { return 32 / bits; }
FQ_HD_INLINE constexpr uint32_t code_mask(int bits) { return (1u << bits) - 1u; }

// Code j (j < codes_per_word(bits)) of one word, for whole_word_bits.
FQ_HD_INLINE constexpr uint32_t code_of_word(uint32_t word, int j, int bits) {
    return (word >> (bits * j)) & code_mask(bits);
}

// Where code `col` of a row lives: word index within the row and bit offset within that word
// (fq_export.packing.code_location); the code spills into the next word where shift + bits > 32.
FQ_HD_INLINE constexpr int code_word(int col, int bits) { return (col >> 5) * bits + ((bits * (col & 31)) >> 5); }
FQ_HD_INLINE constexpr int code_shift(int col, int bits) { return (bits * (col & 31)) & 31; }

// Code `col` of one row, any supported bit width (3 included).
FQ_HD_INLINE uint32_t read_code(const uint32_t* row, int col, int bits) {
    const int bit = bits * (col & 31);
    const int word = (col >> 5) * bits + (bit >> 5);
    const int shift = bit & 31;
    uint64_t wide = row[word];
    if (shift + bits > 32) wide |= static_cast<uint64_t>(row[word + 1]) << 32;
    return static_cast<uint32_t>(wide >> shift) & code_mask(bits);
}

}  // namespace packed
}  // namespace fq
