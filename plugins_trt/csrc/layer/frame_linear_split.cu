// The spread decode layer: y = R_out T_out D_hat T_in^T R_in^T x + bias for a few rows, in one
// launch of many small blocks with two grid barriers, so that no step runs on a single block.
//
// Rotations are split along their power axis: index i = h * p_lo + i_lo (h < n_hi), so that
// H_power = H_{n_hi} kron H_{p_lo}, and a rotation chunk (fixed h: p_lo * odd consecutive
// entries) of H x is H_{p_lo} applied to the *fold* sum_h' (-1)^popc(h & h') x[chunk h'].
// Frame analysis and synthesis are banded, so every step needs only a few chunks:
//
//   phase 1  block (column group gc, row group gr): fold x into the rotation chunks under the
//            frame runs of its columns, finish R_in^T there, frame-analyse those runs (c, fp16,
//            shared memory), multiply its slab of codes (copied to shared memory with cp.async
//            while it does all that) and write per-group partial sums of z;
//   -- grid barrier --
//   phase 2  block h < n_hi(out): z of the frame runs under output chunk h (sum of the groups'
//            partials, a fixed order), inverse DFTs, synthesis of chunk h, diag(signs) and
//            H_{p_lo}; writes W (fp32, workspace);
//   -- grid barrier --
//   phase 3  block h: folds W into output chunk h (H_{n_hi}), the odd factor, 1/sqrt(power),
//            bias; writes y.
//
// Every block reads only what its chunk needs, and the codes stream over all SMs at once.
#include <algorithm>

#include "device/async_copy.cuh"
#include "device/codes.cuh"
#include "device/grid_sync.cuh"
#include "device/launch.cuh"
#include "device/rotation.cuh"
#include "device/rows.cuh"
#include "device/trace.cuh"
#include "device/walsh_hadamard.cuh"
#include "ops/packed_tile.cuh"

namespace fq {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kFoldTerms = 32;   // chunks per rotation (fewer when power < 32)
constexpr int kMaxGroups = 32;   // column groups of the matmul: partial sums per row of z
constexpr int kBlocksPerSm = 2;  // phase 1 grid target

struct Chunks {
    int n_hi, p_lo, len;
};
__host__ __device__ inline Chunks chunks_of(const RotationParams& r) {
    const int n_hi = r.power < kFoldTerms ? r.power : kFoldTerms;
    return {n_hi, r.power / n_hi, (r.power / n_hi) * r.odd};
}

// Launch geometry and shared-memory carve-up, computed alike on host and device.
struct SplitPlan {
    int cpb, groups;      // code chunks per column group, column groups
    int tpb, row_groups;  // 16-row tiles per row group, row groups
    int cols_b, words_b;  // columns (codes) and words of one column group
    int stride;           // shared words per code row (padded against bank conflicts)
    int max_runs_in;      // frame runs under one column group
    int max_band;         // rotation chunks under them
    int max_runs_out;     // frame runs under one output chunk
    int rows;
    // phase 1 (float offsets): staged x, gathers, DFT, odd factor, signs, scale, zero; work arrays
    int off_x, off_gi, off_gw, off_dft, off_dct, off_sgn, off_scale, off_zero;
    int off_band, off_tmp, off_scratch, off_bins, off_c, off_codes;
    // phases 2 and 3: work arrays (over phase 1's), then their tables (staged at the start)
    int off_z, off_runs, off_v, off_tmp3, off_scratch3;
    int nj_max, off_bin0, off_bin1, off_w0, off_w1, off_sgn3, off_bias, off_dft3, off_dct3;
    int floats;
};

__host__ __device__ inline int cdiv(int a, int b) { return (a + b - 1) / b; }
// Shared row pitch (words) of a staged kp x kp fp16 DFT table: one word more than a row, so that
// the threads of a warp, one table row each, read distinct banks.
__host__ __device__ inline int dft_pitch(const FrameParams& f) { return f.kp / 2 + 1; }

// The DFT table (kp x kp halves, rows of kp / 2 words) into shared rows dft_pitch words apart.
__device__ inline void stage_dft(float* dst, const __half* table, const FrameParams& f) {
    const int row_words = f.kp / 2, pitch = dft_pitch(f);
    for (int i = threadIdx.x; i < f.kp * row_words; i += blockDim.x)
        cp_async4(dst + (i / row_words) * pitch + i % row_words, reinterpret_cast<const uint32_t*>(table) + i);
}

// target: phase 1 blocks wanted (at most that many are planned); elem: bytes of an activation.
template <int BITS>
__host__ __device__ inline SplitPlan make_plan(const FrameLinearParams& p, int rows, int target, int elem) {
    using L = CodeLayout<BITS>;
    SplitPlan s{};
    s.rows = rows;
    const int nchunks = cdiv(p.matmul.words_per_row, L::kChunkWords);
    s.cpb = cdiv(nchunks, kMaxGroups);
    s.groups = cdiv(nchunks, s.cpb);
    const int ntiles = cdiv(p.matmul.out_features, 16);
    int rg = target / s.groups;
    rg = rg < 1 ? 1 : (rg > ntiles ? ntiles : rg);
    s.tpb = cdiv(ntiles, rg);
    s.row_groups = cdiv(ntiles, s.tpb);
    s.words_b = s.cpb * L::kChunkWords;
    s.cols_b = s.words_b * L::kCodesPerWord;
    // Shared row stride: 4 rows of 8-byte lane loads (2 of 16-byte) hit distinct banks when the
    // stride is 8 or 24 (16) modulo 32 words.
    s.stride = s.words_b;
    while (L::kLaneWords == 2 ? (s.stride % 32 != 8 && s.stride % 32 != 24) : (s.stride % 32 != 16)) s.stride += 2;
    const FrameParams& fi = p.frame_in;
    const FrameParams& fo = p.frame_out;
    const int two_k_in = 2 * fi.k;
    s.max_runs_in = cdiv(s.cols_b, two_k_in) + 1;
    const Chunks ci = chunks_of(p.rotation_in), co = chunks_of(p.rotation_out);
    // the runs of a group span at most max_runs_in * k complex columns (each run at most k)
    s.max_band = cdiv(2 * s.max_runs_in * fi.k, ci.len) + 1;
    // runs under len_out reals: each run advances by at least floor(d_c / rho_c) - 2 columns
    const int adv = fo.d_c / fo.rho_c - 2;
    const int runs_out = cdiv(co.len, 2) / (adv < 1 ? 1 : adv) + 3;
    s.max_runs_out = runs_out < fo.rho_c ? runs_out : fo.rho_c;
    const int odd_in = p.rotation_in.odd, odd_out = p.rotation_out.odd;
    // clang-format off: one line per buffer, its offset and its size
    int o = 0;
    s.off_x = o;       o += round4(cdiv(p.in_dim() * elem, 4));
    s.off_gi = o;      o += round4(s.max_runs_in * fi.k);
    s.off_gw = o;      o += round4(s.max_runs_in * fi.k);
    s.off_dft = o;     o += round4(fi.kp * dft_pitch(fi));
    s.off_dct = o;     o += odd_in > 1 ? round4(odd_in * odd_in) : 0;
    s.off_sgn = o;     o += round4(s.max_band * ci.len);
    s.off_scale = o;   o += s.tpb * 8;
    s.off_zero = o;    o += s.tpb * 8;
    s.off_band = o;    o += s.max_band * padded_floats(ci.len);
    s.off_tmp = o;     o += odd_in > 1 ? round4(ci.len) : 0;
    s.off_scratch = o; o += kThreads;
    s.off_bins = o;    o += round4(s.max_runs_in * two_k_in);
    s.off_c = o;       o += round4(cdiv(rows * s.cols_b, 2));
    s.off_codes = o;   o += round4(s.tpb * 16 * s.stride);
    const int front1 = o;
    o = 0;
    s.off_z = o;        o += round4(s.max_runs_out * 2 * fo.k);
    s.off_runs = o;     o += round4(s.max_runs_out * 2 * fo.k);
    s.off_v = o;        o += padded_floats(co.len);
    s.off_tmp3 = o;     o += odd_out > 1 ? round4(co.len) : 0;
    s.off_scratch3 = o; o += kThreads;
    o = o > front1 ? o : front1;
    s.nj_max = co.len / 2 + 1;
    s.off_bin0 = o;  o += round4(s.nj_max);
    s.off_bin1 = o;  o += round4(s.nj_max);
    s.off_w0 = o;    o += round4(s.nj_max);
    s.off_w1 = o;    o += round4(s.nj_max);
    s.off_sgn3 = o;  o += round4(co.len);
    s.off_bias = o;  o += round4(co.len);
    s.off_dft3 = o;  o += round4(fo.kp * dft_pitch(fo));
    s.off_dct3 = o;  o += odd_out > 1 ? round4(odd_out * odd_out) : 0;
    // clang-format on
    s.floats = o;
    return s;
}

// dst_c[sp(t)] = sum_h' (-1)^popc(h & h') src(h' * len + t) for the chunks h = h0 .. h0 + n - 1
// (dst_c = dst + (h - h0) * pitch), t < len. scratch: kThreads floats. Ends with a barrier.
template <typename Load>
__device__ void fold_chunks(Load src, const Chunks& ck, int h0, int n, float* dst, int pitch, float* scratch) {
    const int len = ck.len, n_hi = ck.n_hi;
    const int parts = max(1, min(n_hi, static_cast<int>(blockDim.x) / len));  // threads per output
    const int per = cdiv(n_hi, parts);
    for (int c = 0; c < n; ++c) {
        const int h = h0 + c;
        float* out = dst + c * pitch;
        for (int item = threadIdx.x; item < len * parts; item += blockDim.x) {
            const int t = item % len, part = item / len;
            const int a = part * per, b = min(n_hi, a + per);
            float acc = 0.f;
#pragma unroll 16
            for (int hh = a; hh < b; ++hh) {
                const float v = src(hh * len + t);
                acc += (__popc(h & hh) & 1) ? -v : v;
            }
            if (parts == 1)
                out[sp(t)] = acc;
            else
                scratch[part * len + t] = acc;
        }
        if (parts > 1) {
            __syncthreads();
            for (int t = threadIdx.x; t < len; t += blockDim.x) {
                float acc = 0.f;
                for (int q = 0; q < parts; ++q) acc += scratch[q * len + t];
                out[sp(t)] = acc;
            }
            __syncthreads();  // scratch is reused by the next chunk
        }
    }
    __syncthreads();
}

// Phase 1, block (column group gc, row group gr): fold x into the rotation chunks under the frame
// runs of its columns, finish R_in^T there, frame-analyse those runs (c, fp16, shared memory),
// multiply its slab of codes (copied to shared memory with cp.async while it does all that) and
// write its column group's partial sums of z.
template <int BITS, typename T>
__device__ __forceinline__ void split_phase1(const FrameLinearParams& p, const SplitPlan& s, const T* x, float* smem,
                                             int (&band)[2], float* zpart) {
    using L = CodeLayout<BITS>;
    const int rows = s.rows;
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features, wpr = p.matmul.words_per_row;
    const FrameParams& fi = p.frame_in;
    const Chunks ci = chunks_of(p.rotation_in);
    const int gc = blockIdx.x % s.groups, gr = blockIdx.x / s.groups;
    const int w_begin = gc * s.words_b, w_end = min(wpr, w_begin + s.words_b);
    const int col0 = w_begin * L::kCodesPerWord, ncols = min(K_in - col0, s.cols_b);
    const int t0 = gr * s.tpb, ntiles = min(cdiv(K_out, 16), t0 + s.tpb) - t0;
    const int row_begin = t0 * 16, row_end = min(K_out, (t0 + ntiles) * 16);
    const int two_k = 2 * fi.k;
    const int q0 = col0 / two_k, q1 = min(fi.rho_c, cdiv(col0 + ncols, two_k));
    const int in_words = p.in_dim() * static_cast<int>(sizeof(T)) / 4;
    const int* gi = reinterpret_cast<const int*>(smem + s.off_gi);
    const float* gw = smem + s.off_gw;
    const T* xs = reinterpret_cast<const T*>(smem + s.off_x);
    const __half* dft = reinterpret_cast<const __half*>(smem + s.off_dft);
    const float* sgn = smem + s.off_sgn;

    // 1a. group A: x (token 0), the gathers of runs [q0, q1), the DFT table, the odd factor
    stage_words(smem + s.off_x, x, in_words);
    stage_words(smem + s.off_gi, fi.gather_index + q0 * fi.k, (q1 - q0) * fi.k);
    stage_words(smem + s.off_gw, fi.gather_weight + q0 * fi.k, (q1 - q0) * fi.k);
    stage_dft(smem + s.off_dft, fi.dft, fi);
    if (p.rotation_in.odd > 1) stage_words(smem + s.off_dct, p.rotation_in.dct, p.rotation_in.odd * p.rotation_in.odd);
    cp_async_commit();
    if (threadIdx.x == 0) {
        band[0] = fi.d_c;
        band[1] = -1;
    }
    cp_async_wait<0>();
    __syncthreads();
    FQ_STAMP(1);

    // 1b. the rotation chunks under runs [q0, q1)
    {
        int lo = fi.d_c, hi = -1;
        for (int e = threadIdx.x; e < (q1 - q0) * fi.k; e += blockDim.x) {
            if (gw[e] != 0.f) {
                lo = min(lo, gi[e]);
                hi = max(hi, gi[e]);
            }
        }
        if (hi >= 0) {
            atomicMin(&band[0], lo);
            atomicMax(&band[1], hi);
        }
    }
    __syncthreads();
    const int h_lo = band[1] < 0 ? 0 : (2 * band[0]) / ci.len;
    const int nband = band[1] < 0 ? 0 : (2 * band[1] + 1) / ci.len - h_lo + 1;
    if (nband > s.max_band) __trap();  // the plan's bound is wrong: stop rather than overrun

    // group C: the signs of those chunks; group B: the codes slab, scale and zero rows
    stage_words(smem + s.off_sgn, p.rotation_in.signs + h_lo * ci.len, nband * ci.len);
    cp_async_commit();
    uint32_t* scodes = reinterpret_cast<uint32_t*>(smem + s.off_codes);
    {
        const int pairs = (w_end - w_begin) / 2;  // words_per_row is a multiple of bits >= 2
        const int n = (row_end - row_begin) * pairs;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const int r = i / pairs, w = 2 * (i % pairs);
            cp_async8(scodes + r * s.stride + w,
                      p.matmul.codes + static_cast<int64_t>(row_begin + r) * wpr + w_begin + w);
        }
    }
    stage_words(smem + s.off_scale, p.matmul.scale + row_begin, (row_end - row_begin) / 2);
    stage_words(smem + s.off_zero, p.matmul.zero + row_begin, (row_end - row_begin) / 2);
    cp_async_commit();
    FQ_STAMP(2);

    float* ub = smem + s.off_band;
    const int pitch = padded_floats(ci.len);
    float* bins = smem + s.off_bins;
    __half* cl = reinterpret_cast<__half*>(smem + s.off_c);
    const float norm_in = rsqrtf(static_cast<float>(p.rotation_in.power));
    for (int tok = 0; tok < rows; ++tok) {
        if (tok > 0) {  // the next token's x (waits for the codes as well)
            __syncthreads();
            stage_words(smem + s.off_x, x + static_cast<int64_t>(tok) * p.in_dim(), in_words);
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();
        }
        // 1c. u = R_in^T x on the band: fold (H_{n_hi}), odd factor, H_{p_lo}, signs / sqrt(power)
        fold_chunks([xs](int i) { return to_float(xs[i]); }, ci, h_lo, nband, ub, pitch, smem + s.off_scratch);
        FQ_STAMP(3);
        for (int c = 0; c < nband; ++c) {
            float* u = ub + c * pitch;
            if (p.rotation_in.odd > 1)
                block_odd_mix<true>(u, smem + s.off_tmp, ci.p_lo, p.rotation_in.odd, smem + s.off_dct, true, 1.f);
            block_fwht(u, ci.p_lo, p.rotation_in.odd);
        }
        if (tok == 0) cp_async_wait<1>();  // the signs (group C); the codes may still be in flight
        __syncthreads();
        for (int e = threadIdx.x; e < nband * ci.len; e += blockDim.x) {
            const int c = e / ci.len, t = e % ci.len;
            ub[c * pitch + sp(t)] *= sgn[e] * norm_in;
        }
        __syncthreads();
        FQ_STAMP(4);
        // 1d. frame analysis of runs [q0, q1): bins, then the DFT of each run
        for (int e = threadIdx.x; e < (q1 - q0) * fi.k; e += blockDim.x) {
            const float w = gw[e];
            float re = 0.f, im = 0.f;
            if (w != 0.f) {
                const int r = 2 * gi[e] - h_lo * ci.len;  // (2j + 1 may start the next chunk)
                re = ub[(r / ci.len) * pitch + sp(r % ci.len)] * w;
                im = ub[((r + 1) / ci.len) * pitch + sp((r + 1) % ci.len)] * w;
            }
            bins[2 * e] = re;
            bins[2 * e + 1] = im;
        }
        __syncthreads();
        for (int o = threadIdx.x; o < s.cols_b; o += blockDim.x) {
            const int col = col0 + o;
            float acc = 0.f;
            if (o < ncols) {
                const int run = col / two_k - q0, l = col % two_k;
                const __half2* m = reinterpret_cast<const __half2*>(dft) + l * dft_pitch(fi);
                const float* b = bins + run * two_k;
#pragma unroll 4
                for (int t = 0; t < fi.k; ++t) {
                    const float2 mm = __half22float2(m[t]);
                    acc = fmaf(mm.x, b[2 * t], fmaf(mm.y, b[2 * t + 1], acc));
                }
            }
            cl[tok * s.cols_b + o] = __float2half_rn(acc);
        }
        FQ_STAMP(5);
    }
    cp_async_wait<0>();
    __syncthreads();
    FQ_STAMP(6);

    // 1e. partial z of this column group: warps take the row tiles in turn
    PackedMatMulParams lp = p.matmul;
    lp.words_per_row = s.stride;
    const __half* szero = reinterpret_cast<const __half*>(smem + s.off_zero);
    const __half* sscale = reinterpret_cast<const __half*>(smem + s.off_scale);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const RowAct act{cl, rows, s.cols_b, ncols};  // this column group's c
    float* zp = zpart + static_cast<int64_t>(gc) * rows * K_out;
    for (int lt = warp; lt < ntiles; lt += kWarps) {
        const int row0 = (t0 + lt) * 16;
        float acc[1][4], xsum[1];
        warp_packed_tile<BITS, 1, 2, true>(lp, row0, act, 0, 0, s.cpb, acc, xsum, 0, scodes, row_begin);
        apply_zero<1>(p.matmul, row0, acc, xsum, szero, row_begin);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = row0 + g + 8 * (i >> 1), tok = 2 * q + (i & 1);
            if (row < K_out && tok < rows)
                zp[static_cast<int64_t>(tok) * K_out + row] = __half2float(sscale[row - row_begin]) * acc[0][i];
        }
    }
    FQ_STAMP(7);
}

// Phase 2, block h < n_hi(out): z of the frame runs under output chunk h (sum of the groups'
// partials, a fixed order), inverse DFTs, synthesis of chunk h, diag(signs) and H_{p_lo}; writes
// W (fp32, workspace). The chunk's synthesis tables were staged at the start (bin0 .. w1).
struct SplitChunk {  // output chunk h of phases 2 and 3: its points e0 .. e0 + co.len, coordinates j_first ..
    int h, e0, j_first, nj;
    const int *bin0, *bin1;  // its synthesis tables, staged in shared memory
    const float *w0, *w1;
};
__device__ __forceinline__ void split_phase2(const FrameLinearParams& p, const SplitPlan& s, float* smem,
                                             const float* zpart, float* wbuf, const Chunks& co, const SplitChunk& ch) {
    const int rows = s.rows, K_out = p.matmul.out_features;
    const FrameParams& fo = p.frame_out;
    const int e0 = ch.e0, j_first = ch.j_first, nj = ch.nj;
    const int *bin0 = ch.bin0, *bin1 = ch.bin1;
    const float *w0 = ch.w0, *w1 = ch.w1;
    const int two_k = 2 * fo.k;
    float* zs = smem + s.off_z;
    float* runs = smem + s.off_runs;
    float* v = smem + s.off_v;
    const __half* dft_t = reinterpret_cast<const __half*>(smem + s.off_dft3);
    const float* sgn = smem + s.off_sgn3;
    const int q_lo = bin0[0] / fo.k;
    int q_hi = bin0[nj - 1] / fo.k;
    if (w1[nj - 1] != 0.f) q_hi = max(q_hi, bin1[nj - 1] / fo.k);
    const int nr = q_hi - q_lo + 1;
    if (nr > s.max_runs_out) __trap();
    const int zr0 = q_lo * two_k, nz = min(K_out, (q_hi + 1) * two_k) - zr0;
    const int64_t gstride = static_cast<int64_t>(rows) * K_out;
    for (int tok = 0; tok < rows; ++tok) {
        __syncthreads();  // the previous token is done with zs, runs, v
        const float* zt = zpart + static_cast<int64_t>(tok) * K_out + zr0;
        for (int r = threadIdx.x; r < nz; r += blockDim.x) {
            float acc = 0.f;
            for (int g0 = 0; g0 < s.groups; g0 += 16) {  // 16 groups' loads in flight at once
                float part[16];
#pragma unroll
                for (int gg = 0; gg < 16; ++gg)
                    part[gg] = g0 + gg < s.groups ? __ldcg(zt + (g0 + gg) * gstride + r) : 0.f;
#pragma unroll
                for (int gg = 0; gg < 16; ++gg) acc += part[gg];
            }
            zs[r] = acc;
        }
        __syncthreads();
        FQ_STAMP(9);
        // inverse DFT of each run: runs[m] = sum_l M^T[m, l] z[l]
        for (int o = threadIdx.x; o < nr * two_k; o += blockDim.x) {
            const int run = o / two_k, m = o % two_k;
            const __half2* mt = reinterpret_cast<const __half2*>(dft_t) + m * dft_pitch(fo);
            const float* zz = zs + run * two_k;
            const int lim = min(two_k, nz - run * two_k);
            float acc = 0.f;
#pragma unroll 4
            for (int t = 0; t < fo.k; ++t) {
                const float2 mm = __half22float2(mt[t]);
                const float a = 2 * t < lim ? zz[2 * t] : 0.f, b = 2 * t + 1 < lim ? zz[2 * t + 1] : 0.f;
                acc = fmaf(mm.x, a, fmaf(mm.y, b, acc));
            }
            runs[o] = acc;
        }
        __syncthreads();
        // synthesis of chunk h, then diag(signs) of R_out
        for (int t = threadIdx.x; t < co.len; t += blockDim.x) {
            const int e = e0 + t, j = (e >> 1) - j_first, part = e & 1;
            float val = w0[j] * runs[2 * (bin0[j] - q_lo * fo.k) + part];
            if (w1[j] != 0.f) val += w1[j] * runs[2 * (bin1[j] - q_lo * fo.k) + part];
            v[sp(t)] = val * sgn[t];
        }
        __syncthreads();
        block_fwht(v, co.p_lo, p.rotation_out.odd);
        float* wt = wbuf + static_cast<int64_t>(tok) * p.out_dim() + e0;
        for (int t = threadIdx.x; t < co.len; t += blockDim.x) wt[t] = v[sp(t)];
    }
    __syncthreads();
    FQ_STAMP(10);
}

// Phase 3, block h: folds W into output chunk h (H_{n_hi}), the odd factor, 1/sqrt(power), bias;
// writes y.
template <typename T>
__device__ __forceinline__ void split_phase3(const FrameLinearParams& p, const SplitPlan& s, float* smem,
                                             const float* wbuf, T* y, const Chunks& co, int h, int e0) {
    const int rows = s.rows;
    float* v = smem + s.off_v;
    const float* bias = smem + s.off_bias;
    const float norm = rsqrtf(static_cast<float>(p.rotation_out.power));
    for (int tok = 0; tok < rows; ++tok) {
        __syncthreads();
        const float* wt = wbuf + static_cast<int64_t>(tok) * p.out_dim();
        fold_chunks([wt](int i) { return __ldcg(wt + i); }, co, h, 1, v, 0, smem + s.off_scratch3);
        FQ_STAMP(12);
        float scale = norm;
        if (p.rotation_out.odd > 1) {
            block_odd_mix<true>(v, smem + s.off_tmp3, co.p_lo, p.rotation_out.odd, smem + s.off_dct3, false, norm);
            scale = 1.f;
        }
        T* yt = y + static_cast<int64_t>(tok) * p.out_dim() + e0;
        for (int t = threadIdx.x; t < co.len; t += blockDim.x)
            yt[t] = from_float<T>(v[sp(t)] * scale + (p.bias ? bias[t] : 0.f));
    }
    __syncthreads();
    FQ_STAMP(13);
}

template <int BITS, typename T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    split_frame_linear_kernel(FrameLinearParams p, SplitPlan s, const T* __restrict__ x, T* y, float* zpart,
                              float* wbuf, unsigned int* barrier) {
    extern __shared__ __align__(16) float smem[];
    __shared__ int band[2];
    const FrameParams& fo = p.frame_out;
    const Chunks co = chunks_of(p.rotation_out);
    const int active1 = s.groups * s.row_groups;
    const bool later = blockIdx.x < co.n_hi;  // runs phases 2 and 3 (output chunk h)
    const int h = blockIdx.x;
    const int e0 = h * co.len, j_first = e0 / 2, nj = (e0 + co.len - 1) / 2 - j_first + 1;
    FQ_STAMP(0);

    // Every table a block needs is copied to shared memory up front (cp.async): a chain of
    // dependent global loads costs about a microsecond per link. First phase 2/3's (group P).
    int* bin0 = reinterpret_cast<int*>(smem + s.off_bin0);
    int* bin1 = reinterpret_cast<int*>(smem + s.off_bin1);
    float* w0 = smem + s.off_w0;
    float* w1 = smem + s.off_w1;
    if (later) {
        stage_words(bin0, fo.synth_bin + j_first, nj);
        stage_words(bin1, fo.synth_bin + fo.d_c + j_first, nj);
        stage_words(w0, fo.synth_weight + j_first, nj);
        stage_words(w1, fo.synth_weight + fo.d_c + j_first, nj);
        stage_words(smem + s.off_sgn3, p.rotation_out.signs + e0, co.len);
        if (p.bias) stage_words(smem + s.off_bias, p.bias + e0, co.len);
        stage_dft(smem + s.off_dft3, fo.dft_t, fo);
        if (p.rotation_out.odd > 1)
            stage_words(smem + s.off_dct3, p.rotation_out.dct, p.rotation_out.odd * p.rotation_out.odd);
    }
    cp_async_commit();

    if (blockIdx.x < active1) split_phase1<BITS>(p, s, x, smem, band, zpart);
    cp_async_wait<0>();  // group P (blocks without phase 1 work)
    // Every block arrives; only the blocks of phases 2 and 3 wait (the rest are done).
    grid_barrier(barrier, gridDim.x, later, true);
    if (!later) return;
    FQ_STAMP(8);
    split_phase2(p, s, smem, zpart, wbuf, co, SplitChunk{h, e0, j_first, nj, bin0, bin1, w0, w1});
    grid_barrier(barrier, co.n_hi, true, true);
    FQ_STAMP(11);
    split_phase3(p, s, smem, wbuf, y, co, h, e0);
}

template <int BITS, typename T>
cudaError_t launch_split(const FrameLinearParams& p, const T* x, T* y, int rows, void* workspace, unsigned int* barrier,
                         cudaStream_t stream) {
    if (!(p.has_rotation_in && p.has_frame_in && p.has_frame_out && p.has_rotation_out)) return cudaErrorNotSupported;
    auto kernel = split_frame_linear_kernel<BITS, T>;
    const DeviceLimits dev = device_limits();
    const int sms = dev.sms, optin = dev.smem_optin;
    int per_sm = 0;
    // Plan for kBlocksPerSm blocks per SM, else for one (a larger slab of codes per block); all
    // blocks must be resident at once (they wait for each other).
    SplitPlan s{};
    size_t smem = 0;
    int grid = 0;
    for (const int target : {kBlocksPerSm * sms, sms}) {
        s = make_plan<BITS>(p, rows, target, static_cast<int>(sizeof(T)));
        smem = sizeof(float) * s.floats;
        if (smem > static_cast<size_t>(optin)) continue;
        cudaError_t err = allow_smem(kernel, smem);
        if (err != cudaSuccess) return err;
        err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
        if (err != cudaSuccess) return err;
        const int blocks = std::max(s.groups * s.row_groups, chunks_of(p.rotation_out).n_hi);
        if (per_sm >= 1 && blocks <= per_sm * sms) {
            grid = blocks;
            break;
        }
    }
    if (grid == 0) return cudaErrorNotSupported;
    float* zpart = static_cast<float*>(workspace);
    float* wbuf = zpart + static_cast<size_t>(kMaxGroups) * rows * p.matmul.out_features;
    kernel<<<grid, kThreads, smem, stream>>>(p, s, x, y, zpart, wbuf, barrier);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_split_typed(const FrameLinearParams& p, const T* x, T* y, int rows, void* ws, unsigned int* bar,
                               cudaStream_t stream) {
    switch (p.matmul.bits) {
        case 2: return launch_split<2, T>(p, x, y, rows, ws, bar, stream);
        case 4: return launch_split<4, T>(p, x, y, rows, ws, bar, stream);
        case 8: return launch_split<8, T>(p, x, y, rows, ws, bar, stream);
        default: return cudaErrorNotSupported;
    }
}

}  // namespace

#ifdef FQ_TRACE
cudaError_t read_trace_split(unsigned long long* host, int n) {
    return cudaMemcpyFromSymbol(host, detail::g_trace, sizeof(unsigned long long) * (n < 64 ? n : 64));
}
#endif

size_t frame_linear_split_workspace_bytes(const FrameLinearParams& p, int64_t rows) {
    return sizeof(float) * rows * (static_cast<size_t>(kMaxGroups) * p.matmul.out_features + p.out_dim());
}

cudaError_t launch_frame_linear_split(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                      void* workspace, unsigned int* barrier, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kDecodeRows) return cudaErrorInvalidValue;
    return with_act_type(dtype, x, y, [&](auto* xt, auto* yt) {
        return launch_split_typed(p, xt, yt, static_cast<int>(rows), workspace, barrier, stream);
    });
}

}  // namespace fq
