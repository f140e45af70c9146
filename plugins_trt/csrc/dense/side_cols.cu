// The side-columns kernel: one side of the dense build over the columns of a matrix, 8 columns
// (one slab) at a time.
//
// y^T = R T x for the columns of x (fp16, K x cols, rows ldx apart): the same transform as the
// side-rows kernel, but along x's columns, and written as the rows of y (cols x d, rows ldy
// apart). The dense build's second pass runs on F (K_out x n) so: it writes W^T directly and no
// transpose of F is needed. A block owns a slab of 8 columns at a time (one 16-byte piece of each
// of x's rows), held in shared memory as K rows of 16 bytes; every step works on all 8 columns at
// once, so the gather's table entries and addresses serve 8 values each, and each tensor-core
// product is a m16n8k16 whose n is the slab:
//   - per-block DFT: z_block (2k x 8) <- DFT^T z_block (A = the table, B = the slab, ldmatrix.trans);
//   - the synthesis gather with the rotation's signs, into v (d x 8);
//   - the Walsh-Hadamard passes: (H_16 / 4) times 16 points 2^lo apart by the 8 columns;
//   - with an odd factor (768 = 3 x 256, 3072 = 3 x 1024), its DCT mix on CUDA cores, one thread
//     per point of the power axis and pair of columns, in registers;
//   - the output through ldmatrix.trans: each lane gets 8 consecutive points of one column.
// The next slab is copied in (cp.async) while the block works on this one.

#include <algorithm>

#include "dense/side.cuh"
#include "dense/slab_layout.cuh"
#include "device/async_copy.cuh"
#include "device/launch.cuh"
#include "device/mma.cuh"
#include "device/walsh_hadamard.cuh"
#include "packed_layout.h"

namespace fq {
namespace dense {
namespace {

constexpr int kColThreads = 512;

// v's rows are stored permuted (cslot, slab_layout.cuh), for conflict-free shared-memory accesses;
// with an odd factor, as planes of the power axis (oslot).

// Odd factors the kernel mixes: 3 (384, 768, 1536, 3072). With its DCT in registers, the mix of
// 5 or more points made the kernel spill (128 registers a thread); other odd factors take the rows.
constexpr int kColsMaxOdd = 3;
__host__ __device__ inline int cols_odd(const SideRows& s) { return s.has_rotation ? s.r.odd : 1; }

// Rows of a slab buffer z: K, padded so that the DFT's last k-steps (up to 31 rows past a block's
// start beyond its 2k) read zeros, not past the buffer.
__host__ __device__ inline int cols_z_rows(const SideRows& s) {
    return s.has_frame ? round_up(s.k_len, 32) + 32 : s.k_len;
}
// Radix-16 passes, and entries of the block's slot table: cslot of each pair's base point in
// every radix-16 pass (of one plane), then of each output step's base point (32 points apart), or
// with an odd factor the slot of every point (oslot is not linear).
__host__ __device__ inline int cols_passes16(const SideRows& s) {
    int log2n = 0;
    while (s.has_rotation && (2 << log2n) <= s.r.power) ++log2n;
    return log2n / 4;
}
__host__ __device__ inline int cols_point_slots(const SideRows& s) { return cols_odd(s) > 1 ? s.d : s.d / 32; }
__host__ __device__ inline int cols_slot_entries(const SideRows& s) {
    return cols_passes16(s) * s.r.power / 32 + cols_point_slots(s);
}
__host__ __device__ inline int cols_table_bytes(const SideRows& s) {
    return side_table_bytes(s) + round_up(2 * cols_slot_entries(s), 16);
}

// In place over a slab z: each block's 2k rows <- DFT^T times them. Warps take whole blocks; a
// block's B fragments (its rows, and the next block's first rows times the table's zero columns)
// are all loaded before its outputs are stored. No sync.
template <int KS> __device__ inline void cols_dft(const FrameParams& f, __half* z, const __half* dft) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int g = lane >> 2, q = lane & 3, two_k = 2 * f.k, ksteps = f.kp / 16, pitch = dft_pitch(f.kp);
    const int ntiles = (two_k + 15) / 16;
    const __half* arow = dft + (lane & 15) * pitch + 8 * (lane >> 4);
    for (int blk = warp; blk < f.rho_c; blk += nwarps) {
        __half* zb = z + static_cast<int64_t>(blk) * two_k * kSlab;
        uint32_t b[KS][2];
#pragma unroll
        for (int j = 0; j < KS / 2; ++j) {
            if (2 * j < ksteps) {  // rows 32 j + lane: pieces k 0-7, 8-15 (step 2j), 16-23, 24-31 (2j + 1)
                uint32_t r[4];
                ldmatrix_x4(r, zb + (32 * j + lane) * kSlab, true);
                b[2 * j][0] = r[0], b[2 * j][1] = r[1], b[2 * j + 1][0] = r[2], b[2 * j + 1][1] = r[3];
            }
        }
        __syncwarp();
        for (int nt = 0; nt < ntiles; ++nt) {
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int s = 0; s < KS; ++s) {
                if (s < ksteps) {
                    uint32_t a[4];
                    ldmatrix_x4(a, arow + 16 * nt * pitch + 16 * s, false);
                    mma16816(acc, a, b[s][0], b[s][1]);
                }
            }
            const int r0 = 16 * nt + g, r1 = r0 + 8;
            if (r0 < two_k) st_half2(zb + r0 * kSlab + 2 * q, acc[0], acc[1]);
            if (r1 < two_k) st_half2(zb + r1 * kSlab + 2 * q, acc[2], acc[3]);
        }
    }
}

__device__ __forceinline__ void unpack8(const uint4& u, float (&x)[8]) {
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ uint4 pack8(const float (&x)[8], uint32_t sign) {
    return make_uint4(pack_half2(x[0], x[1]) ^ sign, pack_half2(x[2], x[3]) ^ sign, pack_half2(x[4], x[5]) ^ sign,
                      pack_half2(x[6], x[7]) ^ sign);
}

// v's rows 2j, 2j + 1 (at their slots) for j0 <= j < j1 <- the synthesis gather of the DFT'd slab
// z (rows 2 c, 2 c + 1 of the two taps), or z's rows 2j, 2j + 1 without a frame, with the
// rotation's signs (bits; null: none). Slots: cslot, or pslot[point] (an odd factor). Thread t of
// nt takes every nt-th j and loads the table entries of U coordinates before it reads the slab for
// any of them. No sync.
__device__ inline void cols_gather(const SideRows& s, const __half* z, __half* v, const uint32_t* bits,
                                   const uint16_t* pslot, int j0, int j1, int t, int nt) {
    const uint4* zr = reinterpret_cast<const uint4*>(z);
    uint4* vr = reinterpret_cast<uint4*>(v);
    auto sign = [&](int row) -> uint32_t { return bits && ((bits[row >> 5] >> (row & 31)) & 1u) ? 0x80008000u : 0u; };
    if (!s.has_frame) {
        for (int row = 2 * j0 + t; row < 2 * j1; row += nt) {
            uint4 u = zr[row];
            const uint32_t m = sign(row);
            u.x ^= m, u.y ^= m, u.z ^= m, u.w ^= m;
            vr[pslot ? pslot[row] : cslot(row)] = u;
        }
        return;
    }
    constexpr int U = 2;
    for (int base = j0 + t; base < j1; base += U * nt) {
        int c0[U], c1[U];
        float w0[U], w1[U];
        load_synth_entries<U>(s.f, base, nt, j1, c0, c1, w0, w1);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = base + u * nt;
            if (j >= j1) continue;
            // Without pslot, row 2j + 1 sits at cslot(2j) ^ 1 (cslot is linear).
            const int slot0 = pslot ? pslot[2 * j] : cslot(2 * j), slot1 = pslot ? pslot[2 * j + 1] : slot0 ^ 1;
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // h = 0: real parts (row 2j), 1: imaginary (row 2j + 1)
                float a[8], b[8];
                unpack8(zr[2 * c0[u] + h], a);
                unpack8(zr[2 * c1[u] + h], b);
#pragma unroll
                for (int i = 0; i < 8; ++i) a[i] = w0[u] * a[i] + w1[u] * b[i];
                vr[h ? slot1 : slot0] = pack8(a, sign(2 * j + h));
            }
        }
    }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // stmatrix: sm_90 on
__device__ __forceinline__ void stmatrix_x4(__half* p, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(a), "r"(r0), "r"(r1), "r"(r2),
                 "r"(r3)
                 : "memory");
}
#endif

// A radix-16 Walsh-Hadamard pass over the points 2^lo apart of v (power points by 8 columns):
// out = (H_16 / 4) in for each group of 16 points, two groups per ldmatrix.x4.trans (lanes 0-15
// address the first group's rows, 16-31 the second's). Groups 2i and 2i + 1 start at points base
// and base + (lo ? 1 : 16), base's bits disjoint from the lane's offset; cslot is linear, so a
// lane's slot is cslot(base) XOR cslot(its offset), cslot(base) from the slot table `bases`.
// The warp takes pairs first, first + step, ... below `pairs`, two per step, loads before products
// before stores. With an odd factor the pairs run over the planes too: pair i is pair
// i mod 2^plane_log2 of plane i >> plane_log2 (power points each). The outputs go back with
// stmatrix.x4 to the rows the lane loaded (sm_90), else with 32-bit stores. No sync.
__device__ inline void cols_wht16(__half* v, int lo, const uint32_t (&h)[4], const uint16_t* bases, int first,
                                  int pairs, int step, int plane_log2 = 30, int power = 0) {
    const int lane = threadIdx.x & 31;
    const int second = lo ? 1 : 16;
    const int in = cslot(((lane >> 4) * second) | ((lane & 15) << lo));
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 900
    const int g = lane >> 2, q = lane & 3;
    const int out0 = cslot(g << lo), out1 = cslot((g + 8) << lo), out_second = cslot(second);
    uint32_t* vw = reinterpret_cast<uint32_t*>(v);  // a row is 4 words
#endif
    for (int pair = first; pair < pairs; pair += 2 * step) {
        int sb[2];
        uint32_t f[2][4];
        bool ok[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            ok[u] = pair + u * step < pairs;
            const int e = pair + u * step;
            sb[u] = ok[u] ? bases[e & ((1 << plane_log2) - 1)] + (e >> plane_log2) * power : 0;
            if (ok[u]) ldmatrix_x4(f[u], v + kSlab * (sb[u] ^ in), true);
        }
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            if (!ok[u]) continue;
            float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
            mma16816(d0, h, f[u][0], f[u][1]);
            mma16816(d1, h, f[u][2], f[u][3]);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            stmatrix_x4(v + kSlab * (sb[u] ^ in), pack_half2(d0[0], d0[1]), pack_half2(d0[2], d0[3]),
                        pack_half2(d1[0], d1[1]), pack_half2(d1[2], d1[3]));
#else
            vw[4 * (sb[u] ^ out0) + q] = pack_half2(d0[0], d0[1]);
            vw[4 * (sb[u] ^ out1) + q] = pack_half2(d0[2], d0[3]);
            vw[4 * (sb[u] ^ out_second ^ out0) + q] = pack_half2(d1[0], d1[1]);
            vw[4 * (sb[u] ^ out_second ^ out1) + q] = pack_half2(d1[2], d1[3]);
#endif
        }
    }
}

// A pass over the 2^R points 2^lo apart (R < 4) on CUDA cores, times `scale`, in each of `planes`
// planes of power points: one thread per coset and pair of columns, the points' slots as
// cslot(coset base) XOR cslot(e 2^lo) (linear, disjoint bits), fp32 butterflies. No sync.
template <int R> __device__ inline void cols_wht_scalar(__half* v, int power, int planes, int lo, float scale) {
    constexpr int kPts = 1 << R;
    const int cosets = power >> R, coset_log2 = __ffs(cosets) - 1;
    int off[kPts];
#pragma unroll
    for (int e = 0; e < kPts; ++e) off[e] = cslot(e << lo);
    for (int t = threadIdx.x; t < 4 * cosets * planes; t += blockDim.x) {
        const int c = (t >> 2) & (cosets - 1), plane = t >> (2 + coset_log2);
        const int base = ((c >> lo) << (lo + R)) | (c & ((1 << lo) - 1));
        const int at = cslot(base) + plane * power;             // plane * power: bits above the plane's
        __half2* vh = reinterpret_cast<__half2*>(v) + (t & 3);  // a row is 4 pairs
        float a[kPts], b[kPts];
#pragma unroll
        for (int e = 0; e < kPts; ++e) {
            const float2 f = __half22float2(vh[4 * (at ^ off[e])]);
            a[e] = f.x, b[e] = f.y;
        }
        fwht_registers(a);
        fwht_registers(b);
#pragma unroll
        for (int e = 0; e < kPts; ++e) vh[4 * (at ^ off[e])] = __floats2half2_rn(a[e] * scale, b[e] * scale);
    }
}
__device__ inline void cols_wht_scalar(__half* v, int power, int planes, int lo, int r) {
    switch (r) {
        case 1: cols_wht_scalar<1>(v, power, planes, lo, 0.70710678f); break;
        case 2: cols_wht_scalar<2>(v, power, planes, lo, 0.5f); break;
        case 3: cols_wht_scalar<3>(v, power, planes, lo, 0.35355339f); break;
        default: break;
    }
}

// The odd factor's forward mix, Y[i, l] = sum_n X[i, n] C[l, n] (C the orthonormal DCT, row-major
// in global memory) for every point i of the power axis, X[i, n] at oslot(i * ODD + n): one thread
// per i and pair of columns, all ODD points in registers, in place. No sync.
template <int ODD> __device__ inline void cols_odd_mix(__half* v, int power, const float* dct) {
    float c[ODD * ODD];
#pragma unroll
    for (int e = 0; e < ODD * ODD; ++e) c[e] = __ldg(dct + e);
    __half2* vh = reinterpret_cast<__half2*>(v);
    for (int t = threadIdx.x; t < 4 * power; t += blockDim.x) {
        const int at = 4 * cslot(t >> 2) + (t & 3);  // + 4 n power: plane n
        float2 x[ODD];
#pragma unroll
        for (int n = 0; n < ODD; ++n) x[n] = __half22float2(vh[at + 4 * n * power]);
#pragma unroll
        for (int l = 0; l < ODD; ++l) {
            float a = 0.f, b = 0.f;
#pragma unroll
            for (int n = 0; n < ODD; ++n) a = fmaf(c[l * ODD + n], x[n].x, a), b = fmaf(c[l * ODD + n], x[n].y, b);
            vh[at + 4 * l * power] = __floats2half2_rn(a, b);
        }
    }
}
__device__ inline void cols_odd_mix(__half* v, const RotationParams& r) {
    static_assert(kColsMaxOdd == 3, "cols_odd_mix instantiates 3");
    if (r.odd == 3) cols_odd_mix<3>(v, r.power, r.dct);  // side_cols_fit refuses other odd factors
}

// The block's slot table (no sync): for each radix-16 pass lo and pair i of a plane, the cslot of
// the base point of groups 2i and 2i + 1; then in out_slots, without an odd factor the cslot of
// every 32nd point (the output steps' bases), with one the oslot of every point.
__device__ inline void cols_slot_table(const SideRows& s, int passes16, int pairs, int odd, uint16_t* slots,
                                       uint16_t* out_slots) {
    for (int e = threadIdx.x; e < passes16 * pairs; e += blockDim.x) {
        const int lo = 4 * (e / pairs), gi = 2 * (e % pairs);
        slots[e] = static_cast<uint16_t>(cslot(((gi >> lo) << (lo + 4)) | (gi & ((1 << lo) - 1))));
    }
    if (odd > 1) {
        for (int e = threadIdx.x; e < s.d; e += blockDim.x)
            out_slots[e] = static_cast<uint16_t>(oslot(e, s.r.power, odd));
    } else {
        for (int e = threadIdx.x; e < s.d / 32; e += blockDim.x) out_slots[e] = static_cast<uint16_t>(cslot(32 * e));
    }
}

// Words a decoding block stages per slab: the packed codes of 8 rows of D_hat, then their 8 scales
// and 8 zeros (fp16).
__host__ __device__ inline int cols_stage_words(const PackedMatMulParams& m) { return kSlab * m.words_per_row + kSlab; }
inline size_t cols_smem_bytes(const SideRows& s, const PackedMatMulParams* decode) {
    const size_t slab = 16 * static_cast<size_t>(cols_z_rows(s));
    return cols_table_bytes(s) + (decode ? slab + 8 * static_cast<size_t>(cols_stage_words(*decode)) : 2 * slab) +
           16 * static_cast<size_t>(s.d);
}

// z rows l < K <- the slab's 8 rows of D_hat (rows past m.out_features staged as zeros), decoded
// from its staged words (stage[c * words_per_row + w], scales and zeros after them): one thread
// per row l, so that the 16-byte stores of consecutive threads are consecutive. No sync.
template <int BITS>
__device__ inline void cols_decode(const PackedMatMulParams& m, const uint32_t* stage, __half* z, int k_len) {
    constexpr int kCodes = packed::codes_per_word(BITS);
    const __half* sz = reinterpret_cast<const __half*>(stage + kSlab * m.words_per_row);
    float sc[kSlab], zr[kSlab];
#pragma unroll
    for (int c = 0; c < kSlab; ++c) sc[c] = __half2float(sz[c]), zr[c] = __half2float(sz[kSlab + c]);
    for (int l = threadIdx.x; l < k_len; l += blockDim.x) {
        const int w = l / kCodes, j = l % kCodes;
        float v[kSlab];
#pragma unroll
        for (int c = 0; c < kSlab; ++c)
            v[c] = sc[c] * (static_cast<float>(packed::code_of_word(stage[c * m.words_per_row + w], j, BITS)) - zr[c]);
        reinterpret_cast<uint4*>(z)[l] = pack8(v, 0u);
    }
}

// BITS = 0: the slabs are 8 columns of x (cols of them); else BITS-bit codes are decoded into the
// slab (D_hat's rows as x's columns, cols = D_hat's rows; a last partial slab reads zero rows and
// writes only its rows), with the next slab's words staged by cp.async.
template <int KS, int BITS>
__global__ void __launch_bounds__(kColThreads, 1)
    side_cols_kernel(SideRows s, const __half* __restrict__ x, PackedMatMulParams m, int cols, __half* y,
                     SlabStrides st) {
    extern __shared__ __align__(16) unsigned char cols_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int slabs = (cols + kSlab - 1) / kSlab;
    __half* dft = reinterpret_cast<__half*>(cols_smem);
    uint32_t* bits = reinterpret_cast<uint32_t*>(cols_smem + side_dft_bytes(s));
    uint16_t* slots = reinterpret_cast<uint16_t*>(cols_smem + side_table_bytes(s));
    const int zrows = cols_z_rows(s);
    // One slab buffer (decoding) or two, then v, then two stages of code words.
    __half* const z0 = reinterpret_cast<__half*>(cols_smem + cols_table_bytes(s));
    __half* const v = z0 + (BITS ? 1 : 2) * zrows * kSlab;
    uint32_t* const stage0 = reinterpret_cast<uint32_t*>(v + s.d * kSlab);
    const int stage_words = BITS ? cols_stage_words(m) : 0;
    auto zbuf = [&](int i) { return BITS ? z0 : z0 + (i & 1) * zrows * kSlab; };
    // The next slab's rows are copied in three parts, started in three phases of this slab (all at
    // once, starting the copies stalled the block on its memory pipe), as one cp.async group.
    constexpr int kFetchParts = 3;  // decoding: the code words all in part 0
    auto fetch = [&](int slab, int i, int part) {
        if (slab < slabs && (BITS == 0 || part == 0)) {
            if constexpr (BITS != 0) {
                uint32_t* st = stage0 + (i & 1) * stage_words;
                for (int c = 0; c < kSlab; ++c) {
                    const int row = slab * kSlab + c;
                    for (int w = threadIdx.x; w < m.words_per_row; w += blockDim.x) {
                        if (row < m.out_features)
                            cp_async4(st + c * m.words_per_row + w,
                                      m.codes + static_cast<int64_t>(row) * m.words_per_row + w);
                        else
                            st[c * m.words_per_row + w] = 0u;
                    }
                }
                if (threadIdx.x < 2) {  // the 8 scales (thread 0) and zeros (thread 1)
                    const __half* src = (threadIdx.x ? m.zero : m.scale) + slab * kSlab;
                    __half* dst = reinterpret_cast<__half*>(st + kSlab * m.words_per_row) + kSlab * threadIdx.x;
                    if (slab * kSlab + kSlab <= m.out_features && !(reinterpret_cast<uintptr_t>(src) & 15)) {
                        cp_async16(dst, src);
                    } else {
                        for (int c = 0; c < kSlab; ++c)
                            dst[c] = slab * kSlab + c < m.out_features ? src[c] : __float2half(0.f);
                    }
                }
            } else {
                const __half* src = x + slab * st.x_slab;
                __half* zb = zbuf(i);
                const int r0 = part * s.k_len / kFetchParts, r1 = (part + 1) * s.k_len / kFetchParts;
                for (int r = r0 + threadIdx.x; r < r1; r += blockDim.x) cp_async16(zb + r * kSlab, src + r * st.x_row);
            }
        }
        if (part == kFetchParts - 1) cp_async_commit();
    };
    // Decoding (the first pass) reads only the codes, and lets the second pass start its tables;
    // the second pass reads x only after the first pass has ended (grid_dependency_wait below).
    if constexpr (BITS != 0) {
        allow_dependents();
        for (int part = 0; part < kFetchParts; ++part) fetch(blockIdx.x, 0, part);
    }
    for (int r = s.k_len + threadIdx.x; r < zrows; r += blockDim.x) {  // the pad rows the DFT reads
        reinterpret_cast<uint4*>(zbuf(0))[r] = make_uint4(0, 0, 0, 0);
        reinterpret_cast<uint4*>(zbuf(1))[r] = make_uint4(0, 0, 0, 0);
    }
    if (s.has_rotation) stage_sign_bits(bits, s.r.signs, s.d);
    const int passes16 = cols_passes16(s), pairs = s.has_rotation ? s.r.power / 32 : 0;  // per plane
    const int odd = cols_odd(s), planes_pairs = odd * pairs;
    const int pair_log2 = pairs ? __ffs(pairs) - 1 : 0;
    // odd == 1: cslot of every 32nd point (out_slots); else oslot of every point (pslot).
    uint16_t* const out_slots = slots + passes16 * pairs;
    const uint16_t* const pslot = odd > 1 ? out_slots : nullptr;
    cols_slot_table(s, passes16, pairs, odd, slots, out_slots);
    if (s.has_frame)
        load_dft(s.f.dft_t, dft, s.f.kp);  // ends with a barrier
    else
        __syncthreads();
    if constexpr (BITS == 0) {
        grid_dependency_wait();
        for (int part = 0; part < kFetchParts; ++part) fetch(blockIdx.x, 0, part);
    }
    uint32_t h[4];
    h16_fragments(h);
    const int log2n = s.has_rotation ? __ffs(s.r.power) - 1 : 0;
    // Output: piece m of a lane's ldmatrix.x4.trans has the rows base + 8 (i / 2) + 2 m + i % 2
    // (lane 8 m + i), so lane 4 c + q receives points base + 8 q .. + 7 of column c.
    const int out_point = 8 * ((lane & 7) >> 1) + 2 * (lane >> 3) + (lane & 1);
    const int in_out = cslot(out_point);
    auto output = [&](int slab) {
        if (st.y_point) {  // one 16-byte row of v per point, 2 loads in flight per thread
            const uint4* vr = reinterpret_cast<const uint4*>(v);
            const int gi = st.y_inter;
            __half* out = y + static_cast<int64_t>(slab) * kSlab * gi;
            constexpr int kU = 2;
            for (int p0 = threadIdx.x; p0 < s.d; p0 += kU * blockDim.x) {
                uint4 r[kU];
#pragma unroll
                for (int u = 0; u < kU; ++u) {
                    const int p = p0 + u * blockDim.x;
                    if (p < s.d) r[u] = vr[pslot ? pslot[p] : cslot(p)];
                }
#pragma unroll
                for (int u = 0; u < kU; ++u) {
                    const int p = p0 + u * blockDim.x;
                    if (p < s.d) *reinterpret_cast<uint4*>(out + (p / gi) * gi * st.y_point + kSlab * (p % gi)) = r[u];
                }
            }
            return;
        }
        const int c = lane >> 2, q = lane & 3;
        const bool write = slab * kSlab + c < cols;
        __half* out = y + (static_cast<int64_t>(slab) * kSlab + c) * st.y_row + q * st.y_group;
        constexpr int kOutSteps = 4;  // loads in flight per warp
        for (int t0 = warp; t0 < s.d / 32; t0 += kOutSteps * nwarps) {
            uint32_t r4[kOutSteps][4];
#pragma unroll
            for (int u = 0; u < kOutSteps; ++u)
                if (t0 + u * nwarps < s.d / 32) {
                    const int t = t0 + u * nwarps;
                    ldmatrix_x4(r4[u], v + kSlab * (pslot ? pslot[32 * t + out_point] : out_slots[t] ^ in_out), true);
                }
#pragma unroll
            for (int u = 0; u < kOutSteps; ++u) {
                const int t = t0 + u * nwarps;
                if (write && t < s.d / 32)
                    *reinterpret_cast<uint4*>(out + 4 * t * st.y_group) =
                        make_uint4(r4[u][0], r4[u][1], r4[u][2], r4[u][3]);
            }
        }
    };
    // With a frame, a slab's output is written during the next slab's DFT (which leaves v alone),
    // so that its stores overlap the DFT's tensor-core work instead of holding the block alone.
    const bool deferred = s.has_frame;
    int it = 0, last = -1;
    for (int slab = blockIdx.x; slab < slabs; slab += gridDim.x, ++it) {
        __half* z = zbuf(it);
        fetch(slab + gridDim.x, it + 1, 0);
        // This slab's group is the last one committed (the next slab's copies are committed in
        // its third part), so every committed group must be complete: wait_group 0.
        cp_async_wait<0>();
        __syncthreads();
        if constexpr (BITS != 0) {
            cols_decode<BITS>(m, stage0 + (it & 1) * stage_words, z, s.k_len);
            __syncthreads();
        }
        if (s.has_frame) {
            cols_dft<KS>(s.f, z, dft);
            if (last >= 0) output(last);
            __syncthreads();
        }
        fetch(slab + gridDim.x, it + 1, 1);
        const uint32_t* signs = s.has_rotation ? bits : nullptr;
        int lo = 0;
        if (log2n >= 8 && odd == 1) {
            // The gather and the first two passes stay inside 256-point blocks of v: each warp
            // takes whole blocks through the three with no block barrier in between.
            for (int b = warp; b < s.r.power / 256; b += nwarps) {
                cols_gather(s, z, v, signs, nullptr, 128 * b, 128 * b + 128, lane, 32);
                __syncwarp();
                cols_wht16(v, 0, h, slots, 8 * b, 8 * b + 8, 1);
                __syncwarp();
                cols_wht16(v, 4, h, slots + pairs, 8 * b, 8 * b + 8, 1);
                __syncwarp();
            }
            lo = 8;
        } else {
            cols_gather(s, z, v, signs, pslot, 0, s.d / 2, threadIdx.x, blockDim.x);
        }
        __syncthreads();
        fetch(slab + gridDim.x, it + 1, 2);
        for (; lo < log2n; lo += 4) {
            const int r = min(4, log2n - lo);
            if (r == 4)
                cols_wht16(v, lo, h, slots + (lo / 4) * pairs, warp, planes_pairs, nwarps, pair_log2, s.r.power);
            else
                cols_wht_scalar(v, s.r.power, odd, lo, r);
            __syncthreads();
        }
        if (odd > 1) {
            cols_odd_mix(v, s.r);
            __syncthreads();
        }
        if (deferred) {
            last = slab;
        } else {
            output(slab);
            __syncthreads();  // v read before the next slab's gather writes it
        }
    }
    if (last >= 0) output(last);
    cp_async_wait_all();
}

template <int BITS>
cudaError_t launch_cols(const SideRows& s, const __half* x, const PackedMatMulParams& m, int cols, __half* y,
                        const SlabStrides& st, cudaStream_t stream) {
    if (cols <= 0) return cudaSuccess;
    const size_t bytes = cols_smem_bytes(s, BITS ? &m : nullptr);
    const DeviceLimits dev = device_limits();
    const int grid = std::min(dev.sms, (cols + kSlab - 1) / kSlab);
    auto kernel = (!s.has_frame || s.f.kp <= 64) ? side_cols_kernel<4, BITS> : side_cols_kernel<8, BITS>;
    cudaError_t err = allow_smem(kernel, bytes);
    if (err != cudaSuccess) return err;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(grid), cfg.blockDim = dim3(kColThreads), cfg.dynamicSmemBytes = bytes, cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    // sm_90: a pass over x (the second) may start while the kernel before it ends; it stages its
    // tables, then waits for that kernel's writes (grid_dependency_wait) before it reads x.
    cfg.attrs = attr, cfg.numAttrs = (BITS == 0 && dev.cc_major >= 9) ? 1 : 0;
    err = cudaLaunchKernelEx(&cfg, kernel, s, x, m, cols, y, st);
    if (err != cudaSuccess && cfg.numAttrs) {  // a runtime that refuses the attribute: a plain launch
        cudaGetLastError();
        cfg.numAttrs = 0;
        err = cudaLaunchKernelEx(&cfg, kernel, s, x, m, cols, y, st);
    }
    return err;
}

}  // namespace

bool side_cols_fit(const SideRows& s, const PackedMatMulParams* decode, int cols, const __half* x, const __half* y,
                   const SlabStrides& st) {
    if (!side_on_tensor_cores(s, kColsMaxOdd) || (s.has_rotation && (s.r.dim != s.d || s.r.odd % 2 == 0)) ||
        (!s.has_frame && s.k_len != s.d) || s.d % 32 || s.d > 65536)
        return false;
    if (decode ? (decode->in_features != s.k_len || decode->out_features != cols) : (cols % kSlab || misaligned16(x)))
        return false;
    if ((st.x_slab | st.x_row | st.y_row | st.y_group | st.y_point) % 8 || misaligned16(y)) return false;
    if (st.y_point && (st.y_point < round_up(cols, kSlab) || st.y_inter < 1 || s.d % st.y_inter)) return false;
    return cols_smem_bytes(s, decode) <= static_cast<size_t>(device_limits().smem_optin);
}

// The side-columns kernel over x (K x cols, as `st` lays it out) into y (cols x d) where
// side_cols_fit; returns cudaErrorNotSupported (nothing launched) otherwise.
cudaError_t launch_side_cols(const SideRows& s, const __half* x, int cols, __half* y, const SlabStrides& st,
                             cudaStream_t stream) {
    if (!side_cols_fit(s, nullptr, cols, x, y, st)) return cudaErrorNotSupported;
    return launch_cols<0>(s, x, PackedMatMulParams{}, cols, y, st, stream);
}

// The side over D_hat's rows decoded from the codes (2, 4 or 8 bits), as the columns of D_hat^T:
// y (out_features x d) = rows of D_hat transformed. cudaErrorNotSupported as launch_side_cols.
cudaError_t launch_decode_side_cols(const SideRows& s, const PackedMatMulParams& m, __half* y, const SlabStrides& st,
                                    cudaStream_t stream) {
    if (!side_cols_fit(s, &m, m.out_features, nullptr, y, st)) return cudaErrorNotSupported;
    switch (m.bits) {
        case 2: return launch_cols<2>(s, nullptr, m, m.out_features, y, st, stream);
        case 4: return launch_cols<4>(s, nullptr, m, m.out_features, y, st, stream);
        case 8: return launch_cols<8>(s, nullptr, m, m.out_features, y, st, stream);
        default: return cudaErrorNotSupported;
    }
}

}  // namespace dense
}  // namespace fq
