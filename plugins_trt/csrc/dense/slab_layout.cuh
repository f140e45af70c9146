// Where the side-columns kernel (dense/side_cols.cu) keeps row p of a slab's v in shared memory.
//
// v holds d points by 8 columns, one 16-byte row per point. Point p is stored at slot
// p ^ S(p), S linear over GF(2) in p's bits 3-6 and 8-18 and below 8: bits 3, 4, 5, 6 map to 3, 4,
// 1, 2, and each of bits 8-10, 12-14, 16-18 to 1, 2, 4. So the slot is a permutation inside every
// aligned group of 8 points, cslot(a ^ b) = cslot(a) ^ cslot(b), and the 8 rows that one 8 x 8
// ldmatrix / stmatrix piece or one 16-byte store touches fall in 8 distinct 16-byte bank groups
// (slot mod 8) in each of the kernel's patterns: the radix-16 Walsh-Hadamard passes (rows 2^lo
// apart, lo = 0, 4, 8, 12), the gather's stores (rows 2j and 2j + 1 of 8 consecutive j) and the
// output's transposing loads (rows base + 8 (i / 2) + 2 m + i % 2). tests/test_slab_layout.py
// checks all of this on the host for every pattern up to 65536 points, and that oslot (below)
// permutes the points of a side with an odd factor.
#pragma once

#include "host_device.h"

namespace fq {

FQ_HD_INLINE int cslot(int p) {
    const int n = (p >> 3) & 15;
    const int s = ((n & 1) * 3) ^ ((n & 2) << 1) ^ ((n >> 2) & 1) ^ ((n >> 2) & 2);
    return p ^ s ^ (((p >> 8) ^ (p >> 12) ^ (p >> 16)) & 7);
}

// With a rotation's odd factor (d = power * odd, point p = i * odd + j as fq_export.rotations reads
// it), v is odd planes of power points: point p at slot j * power + cslot(i), so that the
// Walsh-Hadamard passes run over each plane as above and the odd factor's mix takes one point of
// every plane. power a multiple of 8 (a plane is whole groups of 8 slots).
FQ_HD_INLINE int oslot(int p, int power, int odd) {
    const int i = p / odd;
    return (p - i * odd) * power + cslot(i);
}

}  // namespace fq
