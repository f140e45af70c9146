// The side-rows kernel: one side of the dense build over many rows, one warp (or a group of 4
// warps) per row, every dense step on tensor cores.
//
// y = R T z for every row z (fp16 in and out), T the side's frame synthesis and R its rotation.
// One warp owns a row from start to end (no block barrier after the tables; with an odd factor a
// group of kRowGroupWarps warps, which share each step and meet at a named barrier between steps),
// and every dense step is a tensor-core product on fp16 values in shared memory:
//   - the per-block DFT, in place over the staged row (A = 16 blocks of the row, B = DFT^T);
//   - the gather of the synthesis (two taps per coordinate) with the rotation's signs, into v;
//   - the Walsh-Hadamard transform in radix-16 passes, each a product with H_16 / 4 (+-1/4 is
//     exact in fp16): the first pass multiplies 16 x 16 tiles of v from the right (ldmatrix),
//     later passes, along points 2^lo apart, from the left (ldmatrix.trans); passes on fewer than
//     4 bits, or rows shorter than 256, run on CUDA cores with the scale 2^(-bits/2);
//   - with an odd factor (11008 = 256 x 43, 768 = 256 x 3): v held as `odd` planes of the power
//     axis (point i * odd + n in plane n at i, planes power + 8 halves apart), the passes above on
//     each plane, then the odd mix Y[i, l] = sum_n X[i, n] C[l, n] on tensor cores, 16 points i by
//     the planes (A gathered from the planes, B the DCT from shared memory), in place;
//   - 16-byte stores of v (with an odd factor, each lane gathers its 8 outputs from the planes).
// The next row's z is copied in (cp.async) while the Walsh-Hadamard passes and the store run.
// Values are rounded to fp16 between steps (the tensor cores' inputs are fp16 either way); the
// sums are fp32. The layer's epilogue kernel, which runs a row as a chain of block-wide fp32 steps
// with barriers in between, takes the sides this kernel refuses.
#include <algorithm>

#include "dense/side.cuh"
#include "device/async_copy.cuh"
#include "device/launch.cuh"
#include "device/mma.cuh"
#include "device/rows.cuh"
#include "device/walsh_hadamard.cuh"
#include "packed_layout.h"

namespace fq {
namespace dense {
namespace {

constexpr int kSideMaxWarps = 16;
// Halves of a warp's two buffers (z, then the DFT's output in place; v).
__host__ __device__ inline int side_z_halves(const SideRows& s) { return round_up(s.k_len, 64); }
__host__ __device__ inline int side_v_halves(const SideRows& s) { return round_up(s.d, 64); }
// The side-rows kernel's odd factor: planes of the power axis, power + 8 halves apart (their
// 16-byte pieces at distinct bank groups for the odd mix's A loads, whose 4 lanes of a row read
// 4 planes), and the mix's DCT table (stage_odd_mma_table) after the side's tables.
__host__ __device__ inline int rows_odd(const SideRows& s) { return s.has_rotation ? s.r.odd : 1; }
__host__ __device__ inline int rows_plane_pitch(const SideRows& s) { return s.r.power + 8; }
__host__ __device__ inline int rows_v_halves(const SideRows& s) {
    return rows_odd(s) > 1 ? round_up(rows_odd(s) * rows_plane_pitch(s), 64) : side_v_halves(s);
}
__host__ __device__ inline int rows_table_bytes(const SideRows& s) {
    return side_table_bytes(s) + (rows_odd(s) > 1 ? 4 * odd_mma_floats(rows_odd(s)) : 0);
}

// The warps that share one row (a group, kRowGroupWarps of them with an odd factor, else one):
// part is this warp's index in the group; sync() orders the group's shared-memory accesses (a
// named barrier per group, or the warp's own).
constexpr int kRowGroupWarps = 4;
struct RowGroup {
    int part = 0, parts = 1, id = 0;
    __device__ int thread() const { return part * 32 + (threadIdx.x & 31); }
    __device__ int threads() const { return parts * 32; }
    __device__ __forceinline__ void sync() const {
        if (parts == 1)
            __syncwarp();
        else
            asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(parts * 32) : "memory");
    }
};

// v's values live in shared memory with their 16-byte chunks permuted inside each group of 8:
// chunk c is stored at c ^ (bit 3 of c) ^ (bits 5-7 of c). The 8 rows of each 8 x 8 ldmatrix
// piece then hit 8 distinct 16-byte bank groups in every pass (rows 32 bytes apart in the first
// two passes, 512 bytes apart in the third), where a plain layout has 2-way and 8-way conflicts.
__device__ __forceinline__ int vswz(int i) { return i ^ ((((i >> 6) & 1) ^ ((i >> 8) & 7)) << 3); }

// A radix-16 pass over the 16 points 2^lo apart (lo = 0: v (as 16 x 16 tiles) times H / 4; lo >= 4:
// H / 4 times 16 x 16 tiles of points 2^lo apart by 16 consecutive columns). h: the fragments of
// H / 4 (as A: rows g, g + 8 by columns 2q, 2q + 8; as B the same registers, H being symmetric).
// power >= 256 and, for lo >= 4, power >= 2^(lo + 4). `planes` rows of `power` points,
// plane_stride halves apart, one after the other (the planes of an odd factor). The next tile is
// loaded before this one's products (tiles are disjoint). No sync.
//
// Addresses: a tile's rows are `step` points apart (16, or 2^lo), a lane reads row lrow at column
// lcol and writes rows g and g + 8 at columns 2q and 2q + 8. Tile t starts at
// (t >> cg) << (lo + 4) + (t & (2^cg - 1)) * 16 (cg = lo - 4 column groups; lo = 0 and lo = 4
// are both 256 t), whose bits are disjoint from the lane's offset; vswz XORs a point with (its bits
// 6 and 8-10 folded) << 3, which is linear in the bits: so a lane's address is the tile base XOR
// vswz of its own offset XOR 8 times the tile's swizzle bits. The writes at column 2q + 8 toggle bit 3, those of row g
// + 8 add 8 step (a bit above the swizzle's, set without carry).
__device__ __forceinline__ void wht_pass16(__half* v, int power, int lo, const uint32_t (&h)[4], int planes = 1,
                                           int plane_stride = 0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    // ldmatrix.x4: lanes 8m .. 8m + 7 address the rows of piece m = (rows 0-7 | 8-15) x (cols 0-7 | 8-15).
    const int lrow = (lane & 7) + 8 * ((lane >> 3) & 1), lcol = 8 * (lane >> 4);
    const int tiles = power >> 8, tiles_log2 = __ffs(tiles) - 1, total = tiles * planes;
    if (total <= 0) return;  // a warp of a group with no plane (odd factor below the group's warps)
    const bool right = lo == 0;
    const int step = right ? 16 : 1 << lo, cg = lo > 4 ? lo - 4 : 0, cmask = (1 << cg) - 1;
    const int lane_in = vswz(lrow * step + lcol), lane_out = vswz(g * step + 2 * q);
    auto base = [&](int t) { return ((t >> cg) << (lo + 4)) + ((t & cmask) << 4); };
    auto swz = [](int b) { return ((((b >> 6) & 1) ^ ((b >> 8) & 7)) << 3); };  // the tile's part of vswz
    // Item k: tile k % tiles of plane k / tiles.
    auto row_of = [&](int k) { return v + (k >> tiles_log2) * plane_stride; };
    auto load = [&](uint32_t (&f)[4], int k) {
        const int t = k & (tiles - 1), b = right ? 256 * t : base(t);
        ldmatrix_x4(f, row_of(k) + (b ^ lane_in ^ swz(b)), !right);
    };
    uint32_t next[4];
    load(next, 0);
    for (int k = 0; k < total; ++k) {
        uint32_t f[4] = {next[0], next[1], next[2], next[3]};
        if (k + 1 < total) load(next, k + 1);
        float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
        if (right) {
            mma16816(d0, f, h[0], h[2]);  // output columns 0-7: B rows k 2q.., 2q + 8.. of column g
            mma16816(d1, f, h[1], h[3]);  // columns 8-15 (B column g + 8)
        } else {
            mma16816(d0, h, f[0], f[1]);  // columns 0-7 of the tile
            mma16816(d1, h, f[2], f[3]);  // columns 8-15
        }
        const int t = k & (tiles - 1), b = right ? 256 * t : base(t);
        const int o = b ^ lane_out ^ swz(b), o8 = o + 8 * step;
        __half* row = row_of(k);
        st_half2(row + o, d0[0], d0[1]);
        st_half2(row + o8, d0[2], d0[3]);
        st_half2(row + (o ^ 8), d1[0], d1[1]);
        st_half2(row + (o8 ^ 8), d1[2], d1[3]);
    }
}

// A pass over the 2^r points 2^lo apart (r <= 4) on CUDA cores, times `scale`. No sync.
__device__ inline void wht_pass_scalar(__half* v, int power, int lo, int r, float scale) {
    const int pts = 1 << r, cosets = power >> r;
    for (int c = threadIdx.x & 31; c < cosets; c += 32) {
        const int low = c & ((1 << lo) - 1), high = c >> lo;
        const int base = (high << (lo + r)) | low;
        float x[16];
#pragma unroll
        for (int e = 0; e < 16; ++e)
            if (e < pts) x[e] = __half2float(v[vswz(base + (e << lo))]);
        fwht_registers(x, pts);
#pragma unroll
        for (int e = 0; e < 16; ++e)
            if (e < pts) v[vswz(base + (e << lo))] = __float2half_rn(x[e] * scale);
    }
}

// mma_tile with the B fragments of two k-steps per ldmatrix.x4 (pieces: k 0-7, 8-15, 16-23, 24-31
// of rows n = 8 nt .. 8 nt + 7; the table's rows are 16-byte aligned, dft_pitch apart). An odd
// last k-step reads its fragments as mma_tile does.
template <int KS>
__device__ __forceinline__ void mma_tile_ldsm(float acc[4], const uint32_t (&a)[KS][4], const __half* table, int pitch,
                                              int nt, int ksteps) {
    const int lane = threadIdx.x & 31;
    const __half* row = table + (nt * 8 + (lane & 7)) * pitch + 8 * (lane >> 3);
    const __half* brow = table + (nt * 8 + (lane >> 2)) * pitch + 2 * (lane & 3);
    acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
#pragma unroll
    for (int j = 0; j < KS / 2; ++j) {
        if (2 * j + 1 < ksteps) {
            uint32_t b[4];
            ldmatrix_x4(b, row + 32 * j, false);
            mma16816(acc, a[2 * j], b[0], b[1]);
            mma16816(acc, a[2 * j + 1], b[2], b[3]);
        } else if (2 * j < ksteps) {
            const uint32_t b0 = *reinterpret_cast<const uint32_t*>(brow + 32 * j);
            const uint32_t b1 = *reinterpret_cast<const uint32_t*>(brow + 32 * j + 8);
            mma16816(acc, a[2 * j], b0, b1);
        }
    }
}

// In place over a staged row z (K values, blocks of 2k): block i <- DFT^T block i, 16 blocks at a
// time, A fragments all loaded before the block's outputs are written. dft: DFT^T in shared
// memory (load_dft). No sync at the end.
template <int KS>
__device__ inline void warp_dft_in_place(const FrameParams& f, __half* z, const __half* dft, const RowGroup& grp) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int two_k = 2 * f.k, ksteps = f.kp / 16, pitch = dft_pitch(f.kp), ntiles = (two_k + 7) / 8;
    for (int run0 = 16 * grp.part; run0 < f.rho_c; run0 += 16 * grp.parts) {
        uint32_t a[KS][4];
#pragma unroll
        for (int s = 0; s < KS; ++s) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int run = run0 + g + 8 * (r & 1), l = 16 * s + 2 * q + 8 * (r >> 1);
                const bool ok = s < ksteps && run < f.rho_c && l < two_k;
                a[s][r] = ok ? *reinterpret_cast<const uint32_t*>(z + run * two_k + l) : 0u;
            }
        }
        __syncwarp();
        const int r0 = run0 + g, r1 = r0 + 8;
#pragma unroll 2
        for (int nt = 0; nt < ntiles; ++nt) {
            float acc[4];
            mma_tile_ldsm<KS>(acc, a, dft, pitch, nt, ksteps);
            const int col = nt * 8 + 2 * q;
            if (col < two_k) {
                if (r0 < f.rho_c) st_half2(z + r0 * two_k + col, acc[0], acc[1]);
                if (r1 < f.rho_c) st_half2(z + r1 * two_k + col, acc[2], acc[3]);
            }
        }
    }
}

// Where point e of a row lives in v: vswz(e), or with an odd factor plane e % odd at e / odd.
struct RowPlanes {
    int odd = 1, pitch = 0;
    float inv_odd = 1.f;  // (e + 0.5) / odd truncates to e / odd for e < 2^20
    __device__ explicit RowPlanes(const SideRows& s)
        : odd(rows_odd(s)), pitch(rows_plane_pitch(s)), inv_odd(1.f / static_cast<float>(rows_odd(s))) {}
    __device__ __forceinline__ int point(int e) const {
        return static_cast<int>((static_cast<float>(e) + 0.5f) * inv_odd);
    }
    __device__ __forceinline__ int at(int i, int n) const { return n * pitch + vswz(i); }
};

// v (coordinate pairs 2j, 2j + 1) <- the synthesis gather of the DFT'd row z, or z itself without
// a frame, with the rotation's signs (bits; null: none). No sync.
__device__ inline void warp_gather(const SideRows& s, const __half* z, __half* v, const uint32_t* bits,
                                   const RowGroup& grp) {
    const int lane = grp.thread(), T = grp.threads();
    const SignFold signs{bits, 1.f};
    const RowPlanes pl(s);
    auto put = [&](int j, float re, float im) {
        signs.apply(j, re, im);
        if (pl.odd == 1) {
            st_half2(v + vswz(2 * j), re, im);
        } else {  // points 2j and 2j + 1: neighbouring planes, or the last plane and plane 0 of i + 1
            const int i = pl.point(2 * j), n = 2 * j - i * pl.odd, at = pl.at(i, n);
            v[at] = __float2half_rn(re);
            v[n + 1 < pl.odd ? at + pl.pitch : vswz(i + 1)] = __float2half_rn(im);
        }
    };
    if (!s.has_frame) {
        for (int j = lane; j < s.d / 2; j += T) {
            const float2 x = __half22float2(*reinterpret_cast<const __half2*>(z + 2 * j));
            put(j, x.x, x.y);
        }
        return;
    }
    // Coordinates j = lane + T (U i + u) (T: the group's threads): the next U coordinates' table entries are loaded
    // while this U's row values are read and combined (the table loads wait on L1 / L2, the row
    // reads on them).
    const int dc = s.f.d_c;
    constexpr int U = 4;
    int b0[U], b1[U];
    float w0[U], w1[U];
    auto tables = [&](int base) { load_synth_entries<U>(s.f, base, T, dc, b0, b1, w0, w1); };
    tables(lane);
    for (int base = lane; base < dc; base += T * U) {
        int c0[U], c1[U];
        float v0[U], v1[U];
#pragma unroll
        for (int u = 0; u < U; ++u) c0[u] = b0[u], c1[u] = b1[u], v0[u] = w0[u], v1[u] = w1[u];
        if (base + T * U < dc) tables(base + T * U);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = base + T * u;
            if (j < dc) {
                const float2 x0 = __half22float2(*reinterpret_cast<const __half2*>(z + 2 * c0[u]));
                const float2 x1 = __half22float2(*reinterpret_cast<const __half2*>(z + 2 * c1[u]));
                put(j, v0[u] * x0.x + v1[u] * x1.x, v0[u] * x0.y + v1[u] * x1.y);
            }
        }
    }
}

// The odd mix in place over the planes of v: Y[i, l] = sum_n X[i, n] C[l, n] (table: the DCT as
// stage_odd_mma_table's forward B), 16 points i per product. A tile's A fragments are all in
// registers before its outputs overwrite the same points; the group's warps take every parts-th
// tile. No sync.
__device__ inline void warp_odd_mix(const RowPlanes& pl, __half* v, int power, const __half* table,
                                    const RowGroup& grp) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int odd = pl.odd, pad = odd_mma_pad(odd), tpitch = odd_mma_pitch(odd), ksteps = pad / 16;
    auto pair = [&](int sw, int k) {  // X[i, k], X[i, k + 1] (zero beyond odd), sw = vswz(i)
        const __half lo = k < odd ? v[k * pl.pitch + sw] : __float2half_rn(0.f);
        const __half hi = k + 1 < odd ? v[(k + 1) * pl.pitch + sw] : __float2half_rn(0.f);
        return static_cast<uint32_t>(__half_as_ushort(lo)) | (static_cast<uint32_t>(__half_as_ushort(hi)) << 16);
    };
    for (int i0 = 16 * grp.part + g; i0 < power; i0 += 16 * grp.parts) {
        const int s0 = vswz(i0), s1 = vswz(i0 + 8);
        uint32_t a[kOddMmaMax / 16][4];
#pragma unroll
        for (int st = 0; st < kOddMmaMax / 16; ++st) {
            if (st < ksteps) {
                const int k = 16 * st + 2 * q;
                a[st][0] = pair(s0, k), a[st][1] = pair(s1, k), a[st][2] = pair(s0, k + 8), a[st][3] = pair(s1, k + 8);
            }
        }
        for (int nt = 0; nt < pad / 8; ++nt) {
            float acc[4];
            mma_tile(acc, a, table, tpitch, nt, ksteps);
            const int col = nt * 8 + 2 * q;
            const int at = col * pl.pitch;
            if (col < odd) {
                v[at + s0] = __float2half_rn(acc[0]);
                v[at + s1] = __float2half_rn(acc[2]);
            }
            if (col + 1 < odd) {
                v[at + pl.pitch + s0] = __float2half_rn(acc[1]);
                v[at + pl.pitch + s1] = __float2half_rn(acc[3]);
            }
        }
    }
}

// Words of a row's codes a group stages when the side-rows kernel decodes its rows (dec.codes set),
// rounded to 16 bytes; none otherwise.
__host__ __device__ inline int rows_stage_words(const PackedMatMulParams& dec) {
    return dec.codes ? round_up(dec.words_per_row, 4) : 0;
}

// zb[0 .. 32 words_per_row / bits) <- row `row` of D_hat from its staged code words, as the dense
// dequantization writes it (scale (code - zero), rounded to fp16): one word per thread at a time,
// its codes as 16-byte (8-byte for 8 bits) stores. Codes past in_features decode too (zb holds
// them: round_up(K, 64) halves; nothing reads them). No sync.
__device__ inline void rows_decode(const PackedMatMulParams& dec, const uint32_t* stage, __half* zb, int64_t row,
                                   const RowGroup& grp) {
    const float scale = __half2float(dec.scale[row]), zero = __half2float(dec.zero[row]);
    const int bits = dec.bits, codes = packed::codes_per_word(bits);
    auto value = [&](uint32_t word, int j) {
        return scale * (static_cast<float>(packed::code_of_word(word, j, bits)) - zero);
    };
    for (int w = grp.thread(); w < dec.words_per_row; w += grp.threads()) {
        const uint32_t word = stage[w];
        __half* out = zb + w * codes;
        for (int j0 = 0; j0 < codes; j0 += 8) {
            if (codes >= 8) {
                *reinterpret_cast<uint4*>(out + j0) = make_uint4(pack_half2(value(word, j0), value(word, j0 + 1)),
                                                                 pack_half2(value(word, j0 + 2), value(word, j0 + 3)),
                                                                 pack_half2(value(word, j0 + 4), value(word, j0 + 5)),
                                                                 pack_half2(value(word, j0 + 6), value(word, j0 + 7)));
            } else {  // 8 bits: 4 codes
                *reinterpret_cast<uint2*>(out) =
                    make_uint2(pack_half2(value(word, 0), value(word, 1)), pack_half2(value(word, 2), value(word, 3)));
            }
        }
    }
}

// z's rows are interleaved in groups of zi (zi = 1: plain rows ldz apart): 16-byte piece c of row
// r at z + (r / zi) zi ldz + 8 (c zi + r % zi). dec.codes set: z is not read; row r's z is
// decoded from dec's codes (row r of D_hat).
template <int KS>
__global__ void __launch_bounds__(kSideMaxWarps * 32)
    side_rows_kernel(SideRows s, const __half* __restrict__ z, int64_t ldz, int zi, __half* y, int64_t ldy,
                     int64_t rows, int group_warps, PackedMatMulParams dec) {
    extern __shared__ __align__(16) unsigned char side_smem[];
    const int warp = threadIdx.x >> 5, groups = (blockDim.x >> 5) / group_warps, group = warp / group_warps;
    const RowGroup grp{warp % group_warps, group_warps, 1 + group};
    const int t = grp.thread(), T = grp.threads();
    __half* dft = reinterpret_cast<__half*>(side_smem);
    uint32_t* bits = reinterpret_cast<uint32_t*>(side_smem + side_dft_bytes(s));
    __half* odd_table = reinterpret_cast<__half*>(side_smem + side_table_bytes(s));
    const RowPlanes pl(s);
    const int zh = side_z_halves(s), vh = rows_v_halves(s), sw = rows_stage_words(dec);
    __half* zb = reinterpret_cast<__half*>(side_smem + rows_table_bytes(s) +
                                           static_cast<int64_t>(group) * (2 * (zh + vh) + 4 * sw));
    __half* vb = zb + zh;
    uint32_t* stage = reinterpret_cast<uint32_t*>(vb + vh);  // sw words
    const int64_t stride = static_cast<int64_t>(gridDim.x) * groups;
    const int chunks = (s.k_len + 7) / 8;
    auto fetch = [&](int64_t row) {  // z row -> zb (16-byte pieces; rows are ldz >= 8 chunks apart), or its codes
        if (row < rows) {
            if (dec.codes) {
                const uint32_t* src = dec.codes + row * dec.words_per_row;
                for (int w = t; w < dec.words_per_row; w += T) cp_async4(stage + w, src + w);
            } else {
                const __half* src = z + (row / zi) * zi * ldz + 8 * (row % zi);
#pragma unroll 4
                for (int c = t; c < chunks; c += T) cp_async16(zb + 8 * c, src + 8 * zi * c);
            }
        }
        cp_async_commit();
    };
    int64_t row = static_cast<int64_t>(blockIdx.x) * groups + group;
    fetch(row);
    if (s.has_rotation) stage_sign_bits(bits, s.r.signs, s.d);
    if (pl.odd > 1) stage_odd_mma_table(odd_table, s.r.dct, pl.odd, false);
    if (s.has_frame)
        load_dft(s.f.dft_t, dft, s.f.kp);  // ends with a barrier (the tables above too)
    else
        __syncthreads();
    uint32_t h[4];
    h16_fragments(h);
    const int log2n = s.has_rotation ? __ffs(s.r.power) - 1 : 0;
    for (; row < rows; row += stride) {
        cp_async_wait_all();
        grp.sync();  // the group's copies of z (or its codes) in
        if (dec.codes) {
            rows_decode(dec, stage, zb, row, grp);
            grp.sync();
            fetch(row + stride);  // the stage is free until the next row
        }
        if (s.has_frame) {
            warp_dft_in_place<KS>(s.f, zb, dft, grp);
            grp.sync();
        }
        warp_gather(s, zb, vb, s.has_rotation ? bits : nullptr, grp);
        grp.sync();
        if (!dec.codes) fetch(row + stride);  // zb is free until the next row
        // Each warp's planes (every parts-th), pass after pass; one plane without an odd factor.
        for (int lo = 0; lo < log2n; lo += 4) {
            const int r = min(4, log2n - lo);
            const int planes = (pl.odd - grp.part + grp.parts - 1) / grp.parts;
            if (r == 4 && s.r.power >= 256) {
                wht_pass16(vb + grp.part * pl.pitch, s.r.power, lo, h, planes, grp.parts * pl.pitch);
            } else {
                for (int n = grp.part; n < pl.odd; n += grp.parts)
                    wht_pass_scalar(vb + n * pl.pitch, s.r.power, lo, r, exp2f(-0.5f * r));
            }
            __syncwarp();
        }
        __half* out = y + row * ldy;
        if (pl.odd == 1) {
#pragma unroll 4
            for (int c = t; c < s.d / 8; c += T)
                *reinterpret_cast<uint4*>(out + 8 * c) = *reinterpret_cast<const uint4*>(vb + vswz(8 * c));
        } else {
            grp.sync();
            warp_odd_mix(pl, vb, s.r.power, odd_table, grp);
            grp.sync();
            for (int c = t; c < s.d / 8; c += T) {  // points 8c .. 8c + 7 from their planes
                int i = pl.point(8 * c), n = 8 * c - i * pl.odd, at = pl.at(i, n);
                uint16_t e[8];
#pragma unroll
                for (int u = 0; u < 8; ++u) {
                    e[u] = __half_as_ushort(vb[at]);
                    if (++n == pl.odd)
                        n = 0, at = vswz(++i);
                    else
                        at += pl.pitch;
                }
                *reinterpret_cast<uint4*>(out + 8 * c) =
                    make_uint4(e[0] | (e[1] << 16), e[2] | (e[3] << 16), e[4] | (e[5] << 16), e[6] | (e[7] << 16));
            }
        }
        grp.sync();  // v read before the next row's gather writes it
    }
    cp_async_wait_all();
}

}  // namespace

int64_t side_rows_group_bytes(const SideRows& s, const PackedMatMulParams& decode) {
    return 2 * static_cast<int64_t>(side_z_halves(s) + rows_v_halves(s)) + 4 * rows_stage_words(decode);
}
bool side_rows_takes(const SideRows& s, const PackedMatMulParams& decode) {
    return side_on_tensor_cores(s, kOddMmaMax) && !(rows_odd(s) > 1 && s.r.power % 16) && s.d % 8 == 0 &&
           device_limits().smem_optin - rows_table_bytes(s) >= side_rows_group_bytes(s, decode);
}
cudaError_t launch_side_rows(const SideRows& s, const __half* z, int64_t ldz, __half* y, int64_t ldy, int64_t rows,
                             cudaStream_t stream, const PackedMatMulParams* dec, int zi) {
    const bool z_ok = dec ? (packed::whole_word_bits(dec->bits) && dec->codes && dec->in_features == s.k_len &&
                             dec->out_features == rows &&
                             static_cast<int64_t>(dec->words_per_row) * packed::codes_per_word(dec->bits) >= s.k_len)
                          : !(ldz % 8 || ldz < round_up(s.k_len, 8) || misaligned16(z) || zi < 1);
    const PackedMatMulParams decode = dec ? *dec : kNoDecode;
    if (!z_ok || !side_rows_takes(s, decode) || ldy % 8 || ldy < s.d || misaligned16(y)) return cudaErrorNotSupported;
    if (rows <= 0) return cudaSuccess;
    const DeviceLimits dev = device_limits();
    const int optin = dev.smem_optin, sms = dev.sms;
    // Rows in flight: one per group of warps, each with its buffers.
    const int group_warps = rows_odd(s) > 1 ? kRowGroupWarps : 1;
    const int64_t per_group = side_rows_group_bytes(s, decode);
    int64_t groups = (optin - rows_table_bytes(s)) / per_group;
    groups = std::min<int64_t>({groups, kSideMaxWarps / group_warps, (rows + sms - 1) / sms});
    if (groups < 1) return cudaErrorNotSupported;
    const size_t bytes = rows_table_bytes(s) + groups * per_group;
    const int64_t grid = std::min<int64_t>(sms, (rows + groups - 1) / groups);
    auto kernel = (!s.has_frame || s.f.kp <= 64) ? side_rows_kernel<4> : side_rows_kernel<8>;
    cudaError_t err = allow_smem(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<static_cast<int>(grid), static_cast<int>(groups * group_warps * 32), bytes, stream>>>(
        s, z, ldz, zi, y, ldy, rows, group_warps, decode);
    return cudaGetLastError();
}

}  // namespace dense
}  // namespace fq
