// The one-row layer in one launch, built for latency (M = 1, the decode step of an LLM).
//
// Every block of one wave (at most one per SM) runs the whole prologue c = T_in^T R_in^T x in
// shared memory while its share of the codes streams in by cp.async; the codes are split evenly
// over the blocks by (16-row tile, chunk) units, so a tile may be shared by two neighbouring blocks
// (the block holding the tile's first chunk writes partial slot 0 of z, the other slot 1). The
// last block to finish (an atomic counter) runs the epilogue z -> y with its tables, z and the bias
// copied to shared memory in one round trip.
//
// Against the decode kernel (frame_linear_decode.cu), which has the same shape: every SM gets an
// equal share of the codes, the tables go to shared memory by cp.async ahead of the codes, 768
// threads (1024 spilled), and fewer instructions: one warp per copied row in 16-byte pieces, the
// activations' B fragments built once per block (build_frags) instead of two loads and two permutes
// per k16 step. Rotations with an odd factor (768, 11008, ...) take the other kernels
// (cudaErrorNotSupported here). docs/kernels.md has its timings and trace.
#include <algorithm>
#include <type_traits>

#include "device/async_copy.cuh"
#include "device/codes.cuh"
#include "device/convert.cuh"
#include "device/frame_transform.cuh"
#include "device/grid_sync.cuh"
#include "device/launch.cuh"
#include "device/mma.cuh"
#include "device/rows.cuh"
#include "device/trace.cuh"
#include "device/walsh_hadamard.cuh"

namespace fq {
namespace {

using namespace detail;

constexpr int kGemvThreads = 768;
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int kGemvPieces = 2;  // tiles one warp's run of units may touch

// How the codes are split: units (16-row tile, chunk of kChunkWords words), tile-major; block b
// takes units [b * per_block, (b + 1) * per_block).
struct GemvSplit {
    int ntiles = 0, nchunks = 0, per_block = 0, grid = 0;
};

template <int BITS> GemvSplit gemv_split(const PackedMatMulParams& m, int sms) {
    using L = CodeLayout<BITS>;
    GemvSplit s;
    s.ntiles = (m.out_features + 15) / 16;
    s.nchunks = (m.words_per_row + L::kChunkWords - 1) / L::kChunkWords;
    s.grid = std::min(sms, s.ntiles);
    const int64_t total = static_cast<int64_t>(s.ntiles) * s.nchunks;
    s.per_block = static_cast<int>((total + s.grid - 1) / s.grid);
    s.grid = static_cast<int>((total + s.per_block - 1) / s.per_block);
    return s;
}

// Shared-memory layout in bytes. Front (every block): codes | c | work, where work holds the
// prologue's u, input signs, DFT table and gather tables, and later c's B fragments and the warps'
// partial sums.
// Back (the last block, from offset 0 over the front): z slots | runs | v | DFT^T | synthesis
// tables | output signs | bias.
struct GemvSmem {
    int codes = 0, c = 0, frag = 0, u = 0, signs_in = 0, dft = 0, gidx = 0, gw = 0, red = 0, front = 0;
    int z = 0, runs = 0, v = 0, dft_t = 0, sbin = 0, sw = 0, signs_out = 0, bias = 0, back = 0;
    int c_len = 0;  // c's halves, zero-padded to whole chunks (build_frags reads them all)
    template <int BITS> __host__ __device__ static GemvSmem of(const FrameLinearParams& p, const GemvSplit& split) {
        using L = CodeLayout<BITS>;
        GemvSmem l;
        const int n = p.in_dim(), m = p.out_dim(), K_in = p.matmul.in_features, K_out = p.matmul.out_features;
        l.c_len = split.nchunks * L::kChunkWords * L::kCodesPerWord;
        const int frag_bytes = 32 * split.nchunks * L::kSteps;  // build_frags: 8 bytes per lane and k16 step
        // A block holds at most per_block / nchunks + 2 parts, each of 16 rows padded by up to 3 words
        // (the kernel's pitch).
        const int parts = split.per_block / split.nchunks + 2;
        l.c = round16(4 * 16 * (L::kChunkWords * split.per_block + 4 * parts));
        l.u = l.c + round16(2 * (K_in > l.c_len ? K_in : l.c_len));
        l.signs_in = l.u + 4 * padded_floats(n > K_in ? n : K_in);
        l.dft = l.signs_in + round16(p.has_rotation_in ? 4 * n : 0);
        l.gidx = l.dft + (p.has_frame_in ? 4 * dft_floats(p.frame_in.kp) : 0);
        const int gn = p.has_frame_in ? p.frame_in.rho_c * p.frame_in.k : 0;
        l.gw = l.gidx + round16(4 * gn);
        const int prologue_end = l.gw + round16(4 * gn);
        l.frag = l.u;  // over the prologue's space once the analysis is done
        l.red = l.frag + round16(frag_bytes);
        const int red_end = l.red + 4 * kGemvWarps * kGemvPieces * 16;
        l.front = prologue_end > red_end ? prologue_end : red_end;

        l.runs = round16(4 * 2 * K_out);
        l.v = l.runs + round16(4 * (K_out > m ? K_out : m));
        l.dft_t = l.v + 4 * padded_floats(m);
        l.sbin = l.dft_t + (p.has_frame_out ? 4 * dft_floats(p.frame_out.kp) : 0);
        const int sn = p.has_frame_out ? 2 * p.frame_out.d_c : 0;
        l.sw = l.sbin + round16(4 * sn);
        l.signs_out = l.sw + round16(4 * sn);
        l.bias = l.signs_out + round16(p.has_rotation_out ? 4 * m : 0);
        l.back = l.bias + round16(p.bias ? 4 * m : 0);
        return l;
    }
    __host__ __device__ int bytes() const { return front > back ? front : back; }
};

// The B fragments of one row of activations, in the order one lane of a quad reads them:
// frag[(chunk * 4 + q) * kSteps + s] holds lane q's (b0, b1) of k16 step s of that chunk, i.e.
// the pairs (c[k], c[k + kPairStride]) and (c[k + 1], c[k + 1 + kPairStride]) that
// warp_packed_tile (packed_matmul.cuh) builds from two loads and two permutes per step.
template <int BITS> __device__ inline void build_frags(const __half* c, uint2* frag, int nchunks) {
    using L = CodeLayout<BITS>;
    for (int i = threadIdx.x; i < nchunks * 4 * L::kSteps; i += blockDim.x) {
        const int step = i % L::kSteps, q = (i / L::kSteps) & 3, chunk = i / (4 * L::kSteps);
        const int lw = step / L::kStepsPerWord, sub = step % L::kStepsPerWord;
        const int k = (chunk * L::kChunkWords + q * L::kLaneWords + lw) * L::kCodesPerWord + 2 * sub;
        const uint32_t u0 = *reinterpret_cast<const uint32_t*>(c + k);
        const uint32_t u1 = *reinterpret_cast<const uint32_t*>(c + k + L::kPairStride);
        frag[i] = make_uint2(prmt(u0, u1, 0x5410), prmt(u0, u1, 0x7632));
    }
}

// acc += the 16 rows of a part (rows `pitch` words apart, the first `rows` valid) times one row
// of activations over chunks [c0, c1) of the part, on tensor cores (mma D layout: token 0 in
// lanes 4 g, acc[0] row g, acc[2] row g + 8). `frag`: build_frags of the part's first chunk;
// only lanes with g = 0 feed activations (the B column of token 0), the others zeros.
template <int BITS>
__device__ __forceinline__ void gemv_tile(const uint32_t* part, int pitch, int rows, const uint4* frag, int c0, int c1,
                                          float acc[4]) {
    using L = CodeLayout<BITS>;
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const bool v0 = g < rows, v1 = g + 8 < rows, feeds = g == 0;
    const uint32_t* p0 = part + (v0 ? g : 0) * pitch;
    const uint32_t* p1 = part + (v1 ? g + 8 : 0) * pitch;
    for (int c = c0; c < c1; ++c) {
        const int w0 = c * L::kChunkWords + q * L::kLaneWords;
        uint32_t wa[L::kLaneWords], wb[L::kLaneWords];
        if constexpr (L::kLaneWords == 2) {
            const uint2 x0 = v0 ? *reinterpret_cast<const uint2*>(p0 + w0) : make_uint2(0u, 0u);
            const uint2 x1 = v1 ? *reinterpret_cast<const uint2*>(p1 + w0) : make_uint2(0u, 0u);
            wa[0] = x0.x;
            wa[1] = x0.y;
            wb[0] = x1.x;
            wb[1] = x1.y;
        } else {
            const uint4 x0 = v0 ? *reinterpret_cast<const uint4*>(p0 + w0) : make_uint4(0u, 0u, 0u, 0u);
            const uint4 x1 = v1 ? *reinterpret_cast<const uint4*>(p1 + w0) : make_uint4(0u, 0u, 0u, 0u);
            wa[0] = x0.x;
            wa[1] = x0.y;
            wa[2] = x0.z;
            wa[3] = x0.w;
            wb[0] = x1.x;
            wb[1] = x1.y;
            wb[2] = x1.z;
            wb[3] = x1.w;
        }
        const uint4* f = frag + (c * 4 + q) * (L::kSteps / 2);
#pragma unroll
        for (int s2 = 0; s2 < L::kSteps / 2; ++s2) {
            const uint4 fb = feeds ? f[s2] : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int s = 2 * s2 + h, lw = s / L::kStepsPerWord, sh = 2 * BITS * (s % L::kStepsPerWord);
                const uint32_t a[4] = {decode_pair<BITS>(wa[lw], sh), decode_pair<BITS>(wb[lw], sh),
                                       decode_pair<BITS>(wa[lw], sh + BITS), decode_pair<BITS>(wb[lw], sh + BITS)};
                mma16816(acc, a, h ? fb.z : fb.x, h ? fb.w : fb.y);
            }
        }
    }
}

// This block's units and the tiles they fall in. Tile t's part holds chunks [part_a(t), part_b(t))
// and starts at word offset part_off(t) of the block's codes in shared memory; only the first and
// last tile can be partial, the ones between hold every chunk. A part's rows are
// pitch(t) = (part_b(t) - part_a(t)) * CW + pad words apart, pad = wpr % 4: row r of a part then
// starts at the same offset modulo 4 words as its codes in global memory (part offsets are multiples
// of 16 rows), so that both sides of the 16-byte copies are aligned.
template <int BITS> struct GemvBlock {
    static constexpr int CW = CodeLayout<BITS>::kChunkWords;
    int nch, u0, u1, t_first, t_last, a_first, b_last, pad;
    __device__ __forceinline__ GemvBlock(const GemvSplit& split, int wpr) {
        nch = split.nchunks;
        u0 = blockIdx.x * split.per_block;
        u1 = min(split.ntiles * nch, u0 + split.per_block);
        t_first = u0 / nch, t_last = (u1 - 1) / nch;
        a_first = u0 - t_first * nch, b_last = u1 - t_last * nch;
        pad = wpr % 4;
    }
    __device__ __forceinline__ int part_a(int t) const { return t == t_first ? a_first : 0; }
    __device__ __forceinline__ int part_b(int t) const { return t == t_last ? b_last : nch; }
    __device__ __forceinline__ int pitch(int t) const { return (part_b(t) - part_a(t)) * CW + pad; }
    __device__ __forceinline__ int part_off(int t) const {
        return t == t_first ? 0 : 16 * ((nch - a_first) * CW + pad) + 16 * (t - t_first - 1) * (nch * CW + pad);
    }
};

// Phase 1: the prologue's tables towards shared memory (cp.async group 0; fin's gather tables then
// point there), x into registers where it fits (xr, one 16-byte load per thread; returns whether it
// did), then the block's codes (group 1). The codes go one warp per row of the block's parts (rows
// 16 apart in tile order) in 16-byte pieces, with a head and a tail of 8 or 4 bytes where the row
// is not 16-byte aligned in global memory (4-byte pieces throughout took the threads longer to start).
template <int BITS, typename T>
__device__ __forceinline__ bool gemv_start_copies(const FrameLinearParams& p, const GemvSmem& lay,
                                                  const GemvBlock<BITS>& blk, const T* x, unsigned char* gsmem,
                                                  FrameParams& fin, uint4& xr) {
    constexpr int CW = GemvBlock<BITS>::CW;
    const int n = p.in_dim(), K_out = p.matmul.out_features, wpr = p.matmul.words_per_row;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* signs_in = reinterpret_cast<float*>(gsmem + lay.signs_in);
    __half* dft = reinterpret_cast<__half*>(gsmem + lay.dft);
    if (p.has_rotation_in) stage_words(signs_in, p.rotation_in.signs, n);
    if (p.has_frame_in) {
        const int gn = fin.rho_c * fin.k;
        int32_t* gidx = reinterpret_cast<int32_t*>(gsmem + lay.gidx);
        float* gw = reinterpret_cast<float*>(gsmem + lay.gw);
        stage_words(gidx, fin.gather_index, gn);
        stage_words(gw, fin.gather_weight, gn);
        load_dft_async(fin.dft, dft, fin.kp);
        fin.gather_index = gidx;
        fin.gather_weight = gw;
    }
    cp_async_commit();
    // x in flight while the codes are started.
    constexpr int V = 16 / sizeof(T);
    const bool x_reg =
        n % V == 0 && n / V <= static_cast<int>(blockDim.x) && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
    if (x_reg && static_cast<int>(threadIdx.x) < n / V) xr = __ldg(reinterpret_cast<const uint4*>(x) + threadIdx.x);
    uint32_t* scodes = reinterpret_cast<uint32_t*>(gsmem + lay.codes);
    const int total_rows = min(16 * (blk.t_last + 1), K_out) - 16 * blk.t_first;
    for (int rr = warp; rr < total_rows; rr += kGemvWarps) {
        const int t = blk.t_first + (rr >> 4), r = rr & 15;
        const int w_begin = blk.part_a(t) * CW, words = min(blk.part_b(t) * CW, wpr) - w_begin;
        uint32_t* dst = scodes + blk.part_off(t) + r * blk.pitch(t);
        const uint32_t* src = p.matmul.codes + static_cast<int64_t>(t * 16 + r) * wpr + w_begin;
        // Both sides agree modulo 16 bytes unless the codes tensor itself starts unaligned.
        const uintptr_t at = reinterpret_cast<uintptr_t>(src);
        if (((at ^ static_cast<uintptr_t>(__cvta_generic_to_shared(dst))) & 15) == 0) {
            const int head = min(words, static_cast<int>((4 - (at >> 2)) & 3));
            const int tail = (words - head) & 3, end = words - tail;
            if (lane < head) cp_async4(dst + lane, src + lane);
            for (int k = head + 4 * lane; k < end; k += 128) cp_async16(dst + k, src + k);
            if (lane < tail) cp_async4(dst + end + lane, src + end + lane);
        } else {
            for (int k = lane; k < words; k += 32) cp_async4(dst + k, src + k);
        }
    }
    cp_async_commit();
    return x_reg;
}

// Phase 2: c = T_in^T R_in^T x (R^T x = signs * H x / sqrt(power)), c in fp16, zero-padded to
// whole chunks for build_frags. Ends with the codes in shared memory and a barrier.
template <int BITS, typename T, int KS>
__device__ __forceinline__ void gemv_prologue(const FrameLinearParams& p, const GemvSmem& lay, const T* x, bool x_reg,
                                              const uint4& xr, const FrameParams& fin, unsigned char* gsmem) {
    const int n = p.in_dim(), K_in = p.matmul.in_features;
    __half* c = reinterpret_cast<__half*>(gsmem + lay.c);
    float* u = reinterpret_cast<float*>(gsmem + lay.u);
    const float* signs_in = reinterpret_cast<const float*>(gsmem + lay.signs_in);
    const __half* dft = reinterpret_cast<const __half*>(gsmem + lay.dft);
    constexpr int V = 16 / sizeof(T);
    if (!x_reg) {
        load_row(x, n, u);
    } else if (static_cast<int>(threadIdx.x) < n / V) {
        const T* xv = reinterpret_cast<const T*>(&xr);
#pragma unroll
        for (int e = 0; e < V; ++e) u[sp(threadIdx.x * V + e)] = to_float(xv[e]);
    }
    for (int i = K_in + threadIdx.x; i < lay.c_len; i += blockDim.x) c[i] = __float2half_rn(0.f);
    cp_async_wait<1>();
    __syncthreads();
    FQ_STAMP(2);
    if (p.has_rotation_in) {
        block_fwht(u, p.rotation_in.power, 1);
        const float norm = rsqrtf(static_cast<float>(p.rotation_in.power));
        for (int i = threadIdx.x; i < n; i += blockDim.x) u[sp(i)] *= signs_in[i] * norm;
        __syncthreads();
    }
    FQ_STAMP(3);
    if (p.has_frame_in) {
        block_frame_analysis<__half, true, KS>(fin, u, c, dft, true, {}, 2);
    } else {
        for (int i = threadIdx.x; i < K_in; i += blockDim.x) c[i] = __float2half_rn(u[sp(i)]);
    }
    cp_async_wait<0>();
    __syncthreads();
}

// Phase 3: the activation sum (for the zero points, per warp into xpart), the B fragments, and the
// block's units, split evenly over its warps: each warp's partial sums of at most kGemvPieces
// tiles into the `red` area, the tile of each piece into piece_tile (-1: none). Ends with a barrier.
template <int BITS>
__device__ __forceinline__ void gemv_matmul(const FrameLinearParams& p, const GemvSmem& lay, const GemvBlock<BITS>& blk,
                                            unsigned char* gsmem, float* xpart, int* piece_tile) {
    using L = CodeLayout<BITS>;
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features, nch = blk.nch;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const __half* c = reinterpret_cast<const __half*>(gsmem + lay.c);
    const uint32_t* scodes = reinterpret_cast<const uint32_t*>(gsmem + lay.codes);
    uint2* frag = reinterpret_cast<uint2*>(gsmem + lay.frag);  // the prologue's space is free now
    build_frags<BITS>(c, frag, nch);
    {
        float part = 0.f;
        for (int i = threadIdx.x; i < K_in / 2; i += blockDim.x) {
            const float2 v = __half22float2(reinterpret_cast<const __half2*>(c)[i]);
            part += v.x + v.y;
        }
        for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        if (lane == 0) xpart[warp] = part;
    }
    __syncthreads();
    float* red = reinterpret_cast<float*>(gsmem + lay.red);
    const int per_warp = (blk.u1 - blk.u0 + kGemvWarps - 1) / kGemvWarps;
    const int w0 = min(blk.u1, blk.u0 + warp * per_warp), w1 = min(blk.u1, w0 + per_warp);
    int unit = w0;
#pragma unroll
    for (int piece = 0; piece < kGemvPieces; ++piece) {
        int tile = -1;
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        if (unit < w1) {
            tile = unit / nch;
            const int a = blk.part_a(tile), end = min(w1, (tile + 1) * nch);
            gemv_tile<BITS>(scodes + blk.part_off(tile), blk.pitch(tile), min(16, K_out - tile * 16),
                            reinterpret_cast<const uint4*>(frag) + a * 4 * (L::kSteps / 2), unit - tile * nch - a,
                            end - tile * nch - a, acc);
            unit = end;
        }
        // D layout: lane 4 g + q holds rows g (acc[0]) and g + 8 (acc[2]) of token 2 q.
        if ((lane & 3) == 0) {
            red[(warp * kGemvPieces + piece) * 16 + (lane >> 2)] = acc[0];
            red[(warp * kGemvPieces + piece) * 16 + 8 + (lane >> 2)] = acc[2];
        }
        if (lane == 0) piece_tile[warp * kGemvPieces + piece] = tile;
    }
    __syncthreads();
}

// Phase 4: each row of the block's tiles: the warps' partial sums in warp order, scaled, into its
// slot of z (slot 1 zeroed by a block that holds the whole tile).
template <int BITS>
__device__ __forceinline__ void gemv_write_z(const FrameLinearParams& p, const GemvSmem& lay,
                                             const GemvBlock<BITS>& blk, const unsigned char* gsmem, const float* xpart,
                                             const int* piece_tile, float* zbuf) {
    const int K_out = p.matmul.out_features;
    const float* red = reinterpret_cast<const float*>(gsmem + lay.red);
    float xsum = 0.f;
    for (int w = 0; w < kGemvWarps; ++w) xsum += xpart[w];
    const int brows = (blk.t_last - blk.t_first + 1) * 16;
    for (int e = threadIdx.x; e < brows; e += blockDim.x) {
        const int tile = blk.t_first + e / 16, r = e % 16, row = tile * 16 + r;
        if (row >= K_out) continue;
        float sum = 0.f;
        for (int s = 0; s < kGemvWarps * kGemvPieces; ++s)
            if (piece_tile[s] == tile) sum += red[s * 16 + r];
        const bool first = blk.part_a(tile) == 0;
        if (first) sum -= __half2float(p.matmul.zero[row]) * xsum;
        zbuf[(first ? 0 : K_out) + row] = __half2float(p.matmul.scale[row]) * sum;
        if (first && blk.part_b(tile) == blk.nch) zbuf[K_out + row] = 0.f;
    }
}

// Phase 5, the last block only: z (both slots), the synthesis tables, the output signs and the bias
// into shared memory in one round trip of cp.async copies, then y = R_out T_out z + bias,
// R v = H (signs * v) / sqrt(power).
template <typename T, int KS>
__device__ __forceinline__ void gemv_epilogue(const FrameLinearParams& p, const GemvSmem& lay, unsigned char* gsmem,
                                              const float* zbuf, T* y) {
    const int m = p.out_dim(), K_out = p.matmul.out_features;
    float* zs = reinterpret_cast<float*>(gsmem + lay.z);
    float* runs = reinterpret_cast<float*>(gsmem + lay.runs);
    float* v = reinterpret_cast<float*>(gsmem + lay.v);
    float* signs_out = reinterpret_cast<float*>(gsmem + lay.signs_out);
    float* bias = reinterpret_cast<float*>(gsmem + lay.bias);
    FrameParams fout = p.frame_out;
    int32_t* sbin = reinterpret_cast<int32_t*>(gsmem + lay.sbin);
    float* sw = reinterpret_cast<float*>(gsmem + lay.sw);
    // z's 16-byte pieces go through L2 only (cp.async.cg): other blocks wrote it.
    stage_words(zs, zbuf, 2 * K_out);
    if (p.has_frame_out) {
        stage_words(sbin, fout.synth_bin, 2 * fout.d_c);
        stage_words(sw, fout.synth_weight, 2 * fout.d_c);
        load_dft_async(fout.dft_t, reinterpret_cast<__half*>(gsmem + lay.dft_t), fout.kp);
        fout.synth_bin = sbin;
        fout.synth_weight = sw;
    }
    if (p.has_rotation_out) stage_words(signs_out, p.rotation_out.signs, m);
    if (p.bias) stage_words(bias, p.bias, m);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    for (int i = threadIdx.x; i < K_out; i += blockDim.x) zs[i] += zs[K_out + i];
    __syncthreads();
    FQ_STAMP(33);

    if (p.has_frame_out) {
        block_frame_synthesis<true, KS>(
            fout, [zs](int i) { return zs[i]; }, runs, v, reinterpret_cast<const __half*>(gsmem + lay.dft_t), true, {},
            2);
    } else {
        for (int i = threadIdx.x; i < m; i += blockDim.x) v[sp(i)] = zs[i];
        __syncthreads();
    }
    FQ_STAMP(34);
    float norm = 1.f;
    if (p.has_rotation_out) {
        for (int i = threadIdx.x; i < m; i += blockDim.x) v[sp(i)] *= signs_out[i];
        __syncthreads();
        block_fwht(v, p.rotation_out.power, 1);
        norm = rsqrtf(static_cast<float>(p.rotation_out.power));
    }
    FQ_STAMP(35);
    for (int i = threadIdx.x; i < m; i += blockDim.x) y[i] = from_float<T>(v[sp(i)] * norm + (p.bias ? bias[i] : 0.f));
    FQ_STAMP(36);
}

template <int BITS, typename T, int KS>
__global__ void __launch_bounds__(kGemvThreads, 1)
    gemv_frame_linear_kernel(FrameLinearParams p, const T* __restrict__ x, T* __restrict__ y, float* zbuf,
                             GemvSplit split, unsigned int* counter) {
    extern __shared__ __align__(16) unsigned char gsmem[];
    __shared__ int piece_tile[kGemvWarps * kGemvPieces];
    __shared__ float xpart[kGemvWarps];
    const GemvSmem lay = GemvSmem::of<BITS>(p, split);
    const GemvBlock<BITS> blk(split, p.matmul.words_per_row);
    FQ_STAMP(0);
    FrameParams fin = p.frame_in;
    uint4 xr = make_uint4(0u, 0u, 0u, 0u);
    const bool x_reg = gemv_start_copies<BITS>(p, lay, blk, x, gsmem, fin, xr);
    FQ_STAMP(1);
    gemv_prologue<BITS, T, KS>(p, lay, x, x_reg, xr, fin, gsmem);
    FQ_STAMP(4);
    gemv_matmul<BITS>(p, lay, blk, gsmem, xpart, piece_tile);
    FQ_STAMP(5);
    gemv_write_z<BITS>(p, lay, blk, gsmem, xpart, piece_tile, zbuf);
    FQ_STAMP(6);
    if (!last_block_arrives(counter)) return;
    FQ_STAMP(32);
    gemv_epilogue<T, KS>(p, lay, gsmem, zbuf, y);
}

bool gemv_supported(const FrameLinearParams& p) {
    if (p.has_rotation_in && p.rotation_in.odd != 1) return false;
    if (p.has_rotation_out && p.rotation_out.odd != 1) return false;
    if (p.has_frame_in && p.frame_in.kp > 16 * kMaxKSteps) return false;
    if (p.has_frame_out && p.frame_out.kp > 16 * kMaxKSteps) return false;
    return p.matmul.in_features % 2 == 0;
}

template <int BITS, typename T, int KS>
cudaError_t launch_gemv(const FrameLinearParams& p, const T* x, T* y, void* workspace, unsigned int* counter,
                        cudaStream_t stream) {
    const DeviceLimits dev = device_limits();
    const GemvSplit split = gemv_split<BITS>(p.matmul, dev.sms);
    // A warp's run of units must touch at most kGemvPieces tiles.
    if ((split.per_block + kGemvWarps - 1) / kGemvWarps > split.nchunks) return cudaErrorNotSupported;
    auto kernel = gemv_frame_linear_kernel<BITS, T, KS>;
    cudaFuncAttributes attr{};
    cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
    if (err != cudaSuccess) return err;
    const size_t smem = GemvSmem::of<BITS>(p, split).bytes();
    if (smem + attr.sharedSizeBytes > static_cast<size_t>(dev.smem_optin)) return cudaErrorNotSupported;
    err = allow_smem(kernel, smem);
    if (err != cudaSuccess) return err;
    kernel<<<split.grid, kGemvThreads, smem, stream>>>(p, x, y, static_cast<float*>(workspace), split, counter);
    return cudaGetLastError();
}

template <int BITS, typename T>
cudaError_t launch_gemv_ks(const FrameLinearParams& p, const T* x, T* y, void* ws, unsigned int* counter,
                           cudaStream_t stream) {
    const int kp = std::max(p.has_frame_in ? p.frame_in.kp : 0, p.has_frame_out ? p.frame_out.kp : 0);
    if (kp <= 64) return launch_gemv<BITS, T, 4>(p, x, y, ws, counter, stream);
    return launch_gemv<BITS, T, kMaxKSteps>(p, x, y, ws, counter, stream);
}

}  // namespace

size_t frame_linear_gemv_workspace_bytes(const FrameLinearParams& p) {
    return sizeof(float) * 2 * static_cast<size_t>(p.matmul.out_features);
}

cudaError_t launch_frame_linear_gemv(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                     void* workspace, unsigned int* counter, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows != 1) return cudaErrorInvalidValue;
    if (!gemv_supported(p)) return cudaErrorNotSupported;
    return with_act_type(dtype, x, y, [&](auto* xt, auto* yt) -> cudaError_t {
        using T = std::remove_const_t<std::remove_pointer_t<decltype(xt)>>;
        switch (p.matmul.bits) {
            case 2: return launch_gemv_ks<2, T>(p, xt, yt, workspace, counter, stream);
            case 4: return launch_gemv_ks<4, T>(p, xt, yt, workspace, counter, stream);
            case 8: return launch_gemv_ks<8, T>(p, xt, yt, workspace, counter, stream);
            default: return cudaErrorNotSupported;
        }
    });
}

#ifdef FQ_TRACE
cudaError_t read_trace_gemv(unsigned long long* host, int n) {
    return cudaMemcpyFromSymbol(host, detail::g_trace, sizeof(unsigned long long) * (n < 64 ? n : 64));
}
#endif

}  // namespace fq
