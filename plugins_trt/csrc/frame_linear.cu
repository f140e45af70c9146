// One FrameQuant layer y = R_out T_out D_hat T_in^T R_in^T x + bias.
//
// The layer is three steps: a prologue per row (R_in^T then the frame analysis T_in^T, in shared
// memory), the packed matmul z = D_hat c, and an epilogue per row (frame synthesis T_out, R_out,
// bias). The unfused path launches them one by one; the gemm path (gemm_cublas.cpp) swaps the
// matmul for a dequantize + cuBLAS GEMM; the fused path runs all three in one cooperative launch:
//
//   phase 0  every block prefetches its share of the codes into L2;
//   phase A  block t < rows runs the prologue of token t into c (fp16, workspace);
//   -- grid barrier --
//   phase B  split-K packed GEMV over all warps of the grid: warp items (16-row tile, chunk range
//            s), each writes its scaled partial sums to z_s (fp32, workspace);
//   -- grid barrier --
//   phase C  block t < rows runs the epilogue of token t on z = sum_s z_s (a fixed order, so
//            repeated launches give identical results).
//
// At a few rows every step is latency-bound, so the row functions issue their global loads in
// batches (common.cuh) and phase B spreads the matmul over every SM.
#include <algorithm>

#include "common.cuh"
#include "packed_matmul.cuh"

namespace fq {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSplits = 8;  // split-K parts of the fused layer's matmul (workspace z_s)

// ---- the per-row steps (one thread block per row) ----------------------------------------

__host__ __device__ inline int imax(int a, int b) { return a > b ? a : b; }

// Shared floats of the prologue: u (padded row), tmp (rotation with an odd factor), DFT table.
__host__ __device__ inline int prologue_floats(const FrameLinearParams& p) {
    const int d = p.in_dim();
    const int tmp = (p.has_rotation_in && p.rotation_in.odd > 1) ? round4(d) : 0;
    return padded_floats(imax(d, p.matmul.in_features)) + tmp + (p.has_frame_in ? dft_floats(p.frame_in.kp) : 0);
}
// Shared floats of the epilogue: runs (frame synthesis, reused as rotation tmp), v, DFT^T table.
__host__ __device__ inline int epilogue_floats(const FrameLinearParams& p) {
    const int d = p.out_dim();
    return round4(imax(p.matmul.out_features, d)) + padded_floats(d) +
           (p.has_frame_out ? dft_floats(p.frame_out.kp) : 0);
}

struct PrologueSmem {
    float* u;
    float* tmp;
    __half* dft;
    const __half* odd_mma = nullptr;  // set by the many-row kernel (block_rotate)
    bool spread = true;               // DftItems; the many-row kernel clears it
    __device__ PrologueSmem(const FrameLinearParams& p, float* base) {
        const int d = imax(p.in_dim(), p.matmul.in_features);
        u = base;
        tmp = u + padded_floats(d);
        dft = reinterpret_cast<__half*>(tmp + ((p.has_rotation_in && p.rotation_in.odd > 1) ? round4(p.in_dim()) : 0));
    }
};

struct EpilogueSmem {
    float* runs;
    float* v;
    __half* dft_t;
    const __half* odd_mma = nullptr;  // set by the many-row kernel (block_rotate)
    bool spread = true;               // DftItems; the many-row kernel clears it
    __device__ EpilogueSmem(const FrameLinearParams& p, float* base) {
        runs = base;
        v = runs + round4(imax(p.matmul.out_features, p.out_dim()));
        dft_t = reinterpret_cast<__half*>(v + padded_floats(p.out_dim()));
    }
};

// c_row = T_in^T R_in^T x_row (CT: the type of c). The DFT table is already in s.dft.
template <typename T, typename CT>
__device__ void prologue_row(const FrameLinearParams& p, const T* x_row, CT* c_row, const PrologueSmem& s) {
    __syncthreads();  // the previous row is done with s.u
    load_row(x_row, p.in_dim(), s.u);
    FQ_STAMP(3);
    if (p.has_rotation_in) block_rotate(p.rotation_in, s.u, s.tmp, true, false, s.odd_mma);
    else __syncthreads();
    FQ_STAMP(4);
    if (p.has_frame_in) block_frame_analysis<CT>(p.frame_in, s.u, c_row, s.dft, s.spread);
    else store_row(c_row, p.matmul.in_features, s.u);
    FQ_STAMP(5);
}

// y_row = R_out T_out z + bias, z[i] = zload(i). The DFT^T table is already in s.dft_t.
// kShared: the synthesis tables, sign bits and DCT of p are in shared memory (bias is not).
template <bool kShared = false, int KS = kMaxKSteps, typename ZLoad, typename T>
__device__ void epilogue_row(const FrameLinearParams& p, ZLoad zload, T* y_row, const EpilogueSmem& s) {
    __syncthreads();  // the previous row is done with s.v and s.runs
    const int d = p.out_dim();
    // Staged tables with both steps: the rotation's signs and scale go with the synthesis.
    const bool fold = kShared && p.has_frame_out && p.has_rotation_out;
    SignFold signs;
    if (fold) signs = {reinterpret_cast<const uint32_t*>(p.rotation_out.signs), rotation_fold_scale(p.rotation_out, false)};
    if (p.has_frame_out) {
        block_frame_synthesis<kShared, KS>(p.frame_out, zload, s.runs, s.v, s.dft_t, s.spread, signs);
        FQ_STAMP(34);
    } else {
        for (int base = threadIdx.x; base < d; base += kBatch * blockDim.x) {
            float r[kBatch];
#pragma unroll
            for (int b = 0; b < kBatch; ++b) r[b] = base + b * blockDim.x < d ? zload(base + b * blockDim.x) : 0.f;
#pragma unroll
            for (int b = 0; b < kBatch; ++b)
                if (base + b * blockDim.x < d) s.v[sp(base + b * blockDim.x)] = r[b];
        }
        __syncthreads();
    }
    if (p.has_rotation_out) block_rotate<kShared>(p.rotation_out, s.v, s.runs, false, false, s.odd_mma, fold);
    FQ_STAMP(35);
    store_row(y_row, d, s.v, 1.f, p.bias);
    FQ_STAMP(36);
}

// ---- the many-row prologue and epilogue kernels ---------------------------------------------
//
// Rows in a grid-stride loop, one row at a time per block. Where shared memory allows
// (kStaged), a block copies the layer's tables (sign bits, DCT, frame gathers) into shared
// memory once, and the next row's input streams in by cp.async while the current one is
// transformed: no step of a row then waits on global memory but the epilogue's bias (read
// through L1; staging it too would leave one 4096-wide epilogue block per SM instead of two).
// Otherwise tables and rows are read from global memory (batched loads, common.cuh).

// Shared-memory layout (float offsets) of the staged tables and the two row buffers after the
// prologue's or epilogue's own buffers; `words`: 4-byte words of one buffered row.
struct RowStage {
    int signs = 0, dct = 0, idx = 0, weight = 0, buf = 0, words = 0, buf_floats = 0, total = 0;
};

// The many-row kernels mix the odd factor on tensor cores where odd_on_mma; its fp16 table
// follows the prologue's or epilogue's own buffers (staged or not).
__host__ __device__ inline int odd_mma_region(bool has, const RotationParams& r) {
    return has && odd_on_mma(r.power, r.odd) ? round4(odd_mma_floats(r.odd)) : 0;
}
__host__ __device__ inline int prologue_rows_floats(const FrameLinearParams& p) {
    return prologue_floats(p) + odd_mma_region(p.has_rotation_in, p.rotation_in);
}
__host__ __device__ inline int epilogue_rows_floats(const FrameLinearParams& p) {
    return epilogue_floats(p) + odd_mma_region(p.has_rotation_out, p.rotation_out);
}
// The table into place (no barrier) and s.odd_mma pointing at it, where the rotation takes it.
template <typename S>
__device__ inline void stage_odd_mma(S& s, float* at, bool has, const RotationParams& r, bool transpose) {
    if (!odd_mma_region(has, r)) return;
    stage_odd_mma_table(reinterpret_cast<__half*>(at), r.dct, r.odd, transpose);
    s.odd_mma = reinterpret_cast<const __half*>(at);
}

// `tables`: the frame tables too (else they stay in global memory, read through L1).
__host__ __device__ inline RowStage prologue_stage(const FrameLinearParams& p, int elem_bytes, bool tables) {
    RowStage r;
    int at = prologue_rows_floats(p);
    const int d = p.in_dim();
    if (p.has_rotation_in) {
        r.signs = at, at += round4((d + 31) / 32);
        if (p.rotation_in.odd > 1 && !odd_mma_region(true, p.rotation_in))
            r.dct = at, at += round4(p.rotation_in.odd * p.rotation_in.odd);
    }
    if (p.has_frame_in && tables) {
        const int n = p.frame_in.rho_c * p.frame_in.k;
        r.idx = at, at += round4(n);
        r.weight = at, at += round4(n);
    }
    r.words = d * elem_bytes / 4;
    r.buf_floats = round4(r.words);
    r.buf = at, at += 2 * r.buf_floats;
    r.total = at;
    return r;
}

__host__ __device__ inline RowStage epilogue_stage(const FrameLinearParams& p, int elem_bytes, bool tables) {
    RowStage r;
    int at = epilogue_rows_floats(p);
    const int d = p.out_dim();
    if (p.has_frame_out && tables) {
        r.idx = at, at += round4(2 * p.frame_out.d_c);
        r.weight = at, at += round4(2 * p.frame_out.d_c);
    }
    if (p.has_rotation_out) {
        r.signs = at, at += round4((d + 31) / 32);
        if (p.rotation_out.odd > 1 && !odd_mma_region(true, p.rotation_out))
            r.dct = at, at += round4(p.rotation_out.odd * p.rotation_out.odd);
    }
    r.words = p.matmul.out_features * elem_bytes / 4;
    r.buf_floats = round4(r.words);
    r.buf = at, at += 2 * r.buf_floats;
    r.total = at;
    return r;
}

// Staged rows are copied as whole 4-byte words: the row length and stride must allow it.
inline bool stageable_rows(const void* base, int64_t len, int64_t stride, int elem_bytes) {
    return (len * elem_bytes) % 4 == 0 && (stride * elem_bytes) % 4 == 0 &&
           (reinterpret_cast<uintptr_t>(base) & 3) == 0;
}

template <typename T, bool kStaged, int KS = kMaxKSteps, int THREADS = kThreads>
__global__ void __launch_bounds__(THREADS, kStaged ? 2 * kThreads / THREADS : 1)
    prologue_kernel(FrameLinearParams p, const T* __restrict__ x, T* c, int64_t ldc, int64_t rows, bool tables) {
    extern __shared__ __align__(16) float smem[];
    PrologueSmem s(p, smem);
    s.spread = false;
    stage_odd_mma(s, smem + prologue_floats(p), p.has_rotation_in, p.rotation_in, true);
    const int d = p.in_dim();
    if constexpr (!kStaged) {
        if (p.has_frame_in) load_dft(p.frame_in.dft, s.dft, p.frame_in.kp);
        for (int64_t row = blockIdx.x; row < rows; row += gridDim.x)
            prologue_row(p, x + row * d, c + row * ldc, s);
    } else {
        const RowStage st = prologue_stage(p, sizeof(T), tables);
        FrameLinearParams q = p;  // table pointers into shared memory
        if (p.has_rotation_in) {
            stage_sign_bits(reinterpret_cast<uint32_t*>(smem + st.signs), p.rotation_in.signs, d);
            q.rotation_in.signs = smem + st.signs;  // bits
            if (st.dct) {
                stage_words(smem + st.dct, p.rotation_in.dct, p.rotation_in.odd * p.rotation_in.odd);
                q.rotation_in.dct = smem + st.dct;
            }
        }
        if (st.idx) {
            const int n = p.frame_in.rho_c * p.frame_in.k;
            stage_words(smem + st.idx, p.frame_in.gather_index, n);
            stage_words(smem + st.weight, p.frame_in.gather_weight, n);
            q.frame_in.gather_index = reinterpret_cast<const int32_t*>(smem + st.idx);
            q.frame_in.gather_weight = smem + st.weight;
        }
        auto buf = [&](int i) { return smem + st.buf + i * st.buf_floats; };
        const bool fold = p.has_rotation_in && p.has_frame_in;
        const SignFold signs = fold ? SignFold{reinterpret_cast<const uint32_t*>(q.rotation_in.signs),
                                               rotation_fold_scale(p.rotation_in, true)}
                                    : SignFold{};
        if (blockIdx.x < rows) stage_words(buf(0), x + blockIdx.x * d, st.words);
        cp_async_commit();
        if (p.has_frame_in) load_dft(p.frame_in.dft, s.dft, p.frame_in.kp);
        int b = 0;
        for (int64_t row = blockIdx.x; row < rows; row += gridDim.x, b ^= 1) {
            const int64_t next = row + gridDim.x;
            // buf(b ^ 1) was last read before the previous row's first barrier.
            if (next < rows) stage_words(buf(b ^ 1), x + next * d, st.words);
            cp_async_commit();
            cp_async_wait<1>();  // this row (and, at first, the tables) arrived
            __syncthreads();     // ... for every thread; the previous row is done with s.u
            const T* xr = reinterpret_cast<const T*>(buf(b));
            for (int i = threadIdx.x; i < d; i += blockDim.x) s.u[sp(i)] = to_float(xr[i]);
            // With both steps, the rotation's signs and scale go with the analysis' gathers.
            if (p.has_rotation_in) block_rotate<true>(q.rotation_in, s.u, s.tmp, true, false, s.odd_mma, fold);
            else __syncthreads();
            if (p.has_frame_in) block_frame_analysis<T, true, KS>(q.frame_in, s.u, c + row * ldc, s.dft, false, signs);
            else store_row(c + row * ldc, p.matmul.in_features, s.u);
        }
        cp_async_wait_all();
    }
}

template <typename T, bool kStaged, int KS = kMaxKSteps, int THREADS = kThreads>
__global__ void __launch_bounds__(THREADS, kStaged ? 2 * kThreads / THREADS : 1)
    epilogue_kernel(FrameLinearParams p, const T* __restrict__ z, int64_t ldz, T* y, int64_t rows, bool tables) {
    extern __shared__ __align__(16) float smem[];
    EpilogueSmem s(p, smem);
    s.spread = false;
    stage_odd_mma(s, smem + epilogue_floats(p), p.has_rotation_out, p.rotation_out, false);
    const int d = p.out_dim();
    if constexpr (!kStaged) {
        if (p.has_frame_out) load_dft(p.frame_out.dft_t, s.dft_t, p.frame_out.kp);
        for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
            const T* zr = z + row * ldz;
            epilogue_row(p, [zr](int i) { return to_float(__ldg(zr + i)); }, y + row * d, s);
        }
    } else {
        const RowStage st = epilogue_stage(p, sizeof(T), tables);
        FrameLinearParams q = p;  // table pointers into shared memory
        if (st.idx) {
            stage_words(smem + st.idx, p.frame_out.synth_bin, 2 * p.frame_out.d_c);
            stage_words(smem + st.weight, p.frame_out.synth_weight, 2 * p.frame_out.d_c);
            q.frame_out.synth_bin = reinterpret_cast<const int32_t*>(smem + st.idx);
            q.frame_out.synth_weight = smem + st.weight;
        }
        if (p.has_rotation_out) {
            stage_sign_bits(reinterpret_cast<uint32_t*>(smem + st.signs), p.rotation_out.signs, d);
            q.rotation_out.signs = smem + st.signs;  // bits
            if (st.dct) {
                stage_words(smem + st.dct, p.rotation_out.dct, p.rotation_out.odd * p.rotation_out.odd);
                q.rotation_out.dct = smem + st.dct;
            }
        }
        auto buf = [&](int i) { return smem + st.buf + i * st.buf_floats; };
        if (blockIdx.x < rows) stage_words(buf(0), z + blockIdx.x * ldz, st.words);
        cp_async_commit();
        if (p.has_frame_out) load_dft(p.frame_out.dft_t, s.dft_t, p.frame_out.kp);
        int b = 0;
        for (int64_t row = blockIdx.x; row < rows; row += gridDim.x, b ^= 1) {
            const int64_t next = row + gridDim.x;
            // buf(b ^ 1) was last read before a barrier of the previous row.
            if (next < rows) stage_words(buf(b ^ 1), z + next * ldz, st.words);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const T* zr = reinterpret_cast<const T*>(buf(b));
            epilogue_row<true, KS>(q, [zr](int i) { return to_float(zr[i]); }, y + row * d, s);
        }
        cp_async_wait_all();
    }
}

// Threads of a staged block for many rows of d values: narrow rows take 64 so that they do not
// leave most warps of a block idle at every barrier (768: 48 Walsh-Hadamard cosets, 14 frame
// blocks); H100, 12608 rows: the 768x768 gemm layer 595 -> 344 us. With 128 threads for
// 3072-wide rows as well, the 768x3072 layer went 1178 -> 1222 us (its 768-wide prologue at 64
// included), so rows wider than 1024 keep 256. (launch_rows keeps 256 for rows few enough to run
// at once.)
inline int row_threads(int d) { return d <= 1024 ? 64 : kThreads; }

// The staged kernel instance for (k-steps of registers, threads).
template <typename T> auto prologue_instance(bool ks4, int threads) {
    switch (threads) {
        case 64: return ks4 ? prologue_kernel<T, true, 4, 64> : prologue_kernel<T, true, kMaxKSteps, 64>;
        case 2 * kThreads:
            return ks4 ? prologue_kernel<T, true, 4, 2 * kThreads> : prologue_kernel<T, true, kMaxKSteps, 2 * kThreads>;
        default: return ks4 ? prologue_kernel<T, true, 4> : prologue_kernel<T, true>;
    }
}
template <typename T> auto epilogue_instance(bool ks4, int threads) {
    switch (threads) {
        case 64: return ks4 ? epilogue_kernel<T, true, 4, 64> : epilogue_kernel<T, true, kMaxKSteps, 64>;
        case 2 * kThreads:
            return ks4 ? epilogue_kernel<T, true, 4, 2 * kThreads> : epilogue_kernel<T, true, kMaxKSteps, 2 * kThreads>;
        default: return ks4 ? epilogue_kernel<T, true, 4> : epilogue_kernel<T, true>;
    }
}

// The staged kernel where the device's shared memory holds it (with the frame tables, else
// without) and rows can be copied by words; else the plain one. Staged blocks run `threads`
// threads (row_threads) for more rows than two 256-thread blocks per SM take at once, else 256
// (then a row's latency is the kernel's time: 768x768 layer in three launches at M = 1, 18.1 us
// with 256 threads, 26.7 with 64), except that a block that leaves room for no second one per SM
// runs 512 (11008-wide rows: the 8 warps of one 256-thread block per SM left it latency-bound).
// `pick(threads)` gives the staged kernel (one kernel serves with and without staged tables).
template <typename Pick, typename KPlain, typename Stage, typename... Args>
cudaError_t launch_rows(Pick pick, KPlain plain, Stage stage_floats, size_t plain_bytes, bool stageable, int threads,
                        int64_t rows, cudaStream_t stream, Args... args) {
    const DeviceLimits dev = device_limits();
    const int optin = dev.smem_optin, per_sm = dev.smem_per_sm, sms = dev.sms;
    if (rows <= 2 * static_cast<int64_t>(sms)) threads = kThreads;
    for (const bool tables : {true, false}) {
        const size_t bytes = sizeof(float) * stage_floats(tables);
        if (!stageable || bytes > static_cast<size_t>(optin)) continue;
        const bool wide = 2 * (bytes + 1024) > static_cast<size_t>(per_sm);  // one block per SM
        const int block = wide ? 2 * kThreads : threads;
        auto kernel = pick(block);
        if (allow_smem(kernel, bytes) != cudaSuccess) {
            cudaGetLastError();  // not sticky; clear it
            continue;
        }
        kernel<<<row_grid(kernel, block, bytes, rows), block, bytes, stream>>>(args..., tables);
        return cudaGetLastError();
    }
    const cudaError_t err = allow_smem(plain, plain_bytes);
    if (err != cudaSuccess) return err;
    plain<<<row_grid(plain, kThreads, plain_bytes, rows), kThreads, plain_bytes, stream>>>(args..., false);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_prologue_typed(const FrameLinearParams& p, const T* x, T* c, int64_t ldc, int64_t rows,
                                  cudaStream_t stream) {
    const bool ok = stageable_rows(x, p.in_dim(), p.in_dim(), sizeof(T));
    // Frames of k <= 32 (most: fq_export prefers 32) take the kernel with 4 k-steps of registers.
    const bool ks4 = !p.has_frame_in || p.frame_in.kp <= 64;
    auto pick = [ks4](int threads) { return prologue_instance<T>(ks4, threads); };
    auto stage = [&p](bool tables) { return prologue_stage(p, sizeof(T), tables).total; };
    return launch_rows(pick, prologue_kernel<T, false>, stage, sizeof(float) * prologue_rows_floats(p), ok,
                       row_threads(p.in_dim()), rows, stream, p, x, c, ldc, rows);
}

template <typename T>
cudaError_t launch_epilogue_typed(const FrameLinearParams& p, const T* z, int64_t ldz, T* y, int64_t rows,
                                  cudaStream_t stream) {
    const bool ok = stageable_rows(z, p.matmul.out_features, ldz, sizeof(T));
    const bool ks4 = !p.has_frame_out || p.frame_out.kp <= 64;
    auto pick = [ks4](int threads) { return epilogue_instance<T>(ks4, threads); };
    auto stage = [&p](bool tables) { return epilogue_stage(p, sizeof(T), tables).total; };
    return launch_rows(pick, epilogue_kernel<T, false>, stage, sizeof(float) * epilogue_rows_floats(p), ok,
                       row_threads(p.out_dim()), rows, stream, p, z, ldz, y, rows);
}

// ---- the fused layer -----------------------------------------------------------------------

struct CoherentAct {  // frame coefficients written earlier in the same launch: read through L2
    const __half* c;
    int rows, cols;
    __device__ __forceinline__ uint32_t operator()(int tok, int k) const {
        if (tok >= rows || k >= cols) return 0u;
        return __ldcg(reinterpret_cast<const unsigned int*>(c + static_cast<int64_t>(tok) * cols + k));
    }
};

__device__ __forceinline__ void prefetch_l2(const void* ptr) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr));
}

template <int BITS, int NT, typename T>
__global__ void __launch_bounds__(kThreads)
    fused_frame_linear_kernel(FrameLinearParams p, const T* __restrict__ x, T* y, int rows, __half* cbuf,
                              float* zbuf, int splits, int per, unsigned int* barrier) {
    extern __shared__ float smem[];
    const PrologueSmem sa(p, smem);
    const EpilogueSmem sc(p, smem + round4(imax(prologue_floats(p), p.matmul.out_features)));
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features;
    const int gtid = blockIdx.x * blockDim.x + threadIdx.x, gthreads = gridDim.x * blockDim.x;

    // Phase 0: codes towards L2 (the matmul needs them only after the barrier).
    {
        const char* codes = reinterpret_cast<const char*>(p.matmul.codes);
        const int64_t bytes = static_cast<int64_t>(K_out) * p.matmul.words_per_row * 4;
        for (int64_t off = static_cast<int64_t>(gtid) * 128; off < bytes; off += static_cast<int64_t>(gthreads) * 128)
            prefetch_l2(codes + off);
    }

    // Phase A: c = T_in^T R_in^T x, one block per token; the same blocks load the epilogue's table.
    if (blockIdx.x < rows) {
        if (p.has_frame_in) load_dft(p.frame_in.dft, sa.dft, p.frame_in.kp);
        if (p.has_frame_out) load_dft(p.frame_out.dft_t, sc.dft_t, p.frame_out.kp);
    }
    for (int tok = blockIdx.x; tok < rows; tok += gridDim.x)
            prologue_row(p, x + static_cast<int64_t>(tok) * p.in_dim(), cbuf + static_cast<int64_t>(tok) * K_in, sa);
    grid_barrier(barrier);

    // Phase B: z_s = scale * (codes - zero) c over chunk range s, (tile, s) items over all warps.
    {
        using L = CodeLayout<BITS>;
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
        const int nchunks = (p.matmul.words_per_row + L::kChunkWords - 1) / L::kChunkWords;
        const int ntiles = (K_out + 15) / 16;
        const int total_warps = gridDim.x * kWarps;
        const CoherentAct act{cbuf, rows, K_in};
        for (int item = blockIdx.x * kWarps + warp; item < ntiles * splits; item += total_warps) {
            const int tile = item / splits, split = item % splits;
            const int row0 = tile * 16, c0 = split * per, c1 = min(nchunks, c0 + per);
            float* zs = zbuf + static_cast<int64_t>(split) * rows * K_out;
            float acc[NT][4], xs[NT];
            // One chunk loaded at a time: batching 4 measured slower (packed_small, H100).
            warp_packed_tile<BITS, NT>(p.matmul, row0, act, 0, c0, c1, acc, xs, -1);
            apply_zero<NT>(p.matmul, row0, acc, xs);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = row0 + g + 8 * (i >> 1);
                if (row >= K_out) continue;
                const float scale = __half2float(p.matmul.scale[row]);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int tok = nt * 8 + 2 * q + (i & 1);
                    if (tok < rows) zs[static_cast<int64_t>(tok) * K_out + row] = scale * acc[nt][i];
                }
            }
        }
    }
    grid_barrier(barrier);

    // Phase C: y = R_out T_out z + bias, one block per token.
    const int64_t split_stride = static_cast<int64_t>(rows) * K_out;
    float* zsum = smem;  // the prologue's space, free after phase A
    for (int tok = blockIdx.x; tok < rows; tok += gridDim.x) {
        const float* z = zbuf + static_cast<int64_t>(tok) * K_out;
        __syncthreads();  // the previous token's epilogue is done with zsum
        for (int base = threadIdx.x; base < K_out; base += kBatch * blockDim.x) {
            float part[kMaxSplits][kBatch];  // every load in flight at once
#pragma unroll
            for (int sp_ = 0; sp_ < kMaxSplits; ++sp_)
#pragma unroll
                for (int b = 0; b < kBatch; ++b) {
                    const int i = base + b * blockDim.x;
                    part[sp_][b] = (sp_ < splits && i < K_out) ? __ldcg(z + sp_ * split_stride + i) : 0.f;
                }
#pragma unroll
            for (int b = 0; b < kBatch; ++b) {
                float v = 0.f;
#pragma unroll
                for (int sp_ = 0; sp_ < kMaxSplits; ++sp_) v += part[sp_][b];
                if (base + b * blockDim.x < K_out) zsum[base + b * blockDim.x] = v;
            }
        }
        __syncthreads();
        epilogue_row(p, [zsum](int i) { return zsum[i]; }, y + static_cast<int64_t>(tok) * p.out_dim(), sc);
    }
}

template <int BITS, int NT, typename T>
cudaError_t launch_fused(const FrameLinearParams& p, const T* x, T* y, int rows, void* workspace,
                         unsigned int* barrier, cudaStream_t stream) {
    auto kernel = fused_frame_linear_kernel<BITS, NT, T>;
    const size_t smem = sizeof(float) * (round4(std::max(prologue_floats(p), p.matmul.out_features)) + epilogue_floats(p));
    cudaError_t err = allow_smem(kernel, smem);
    if (err != cudaSuccess) return err;
    const int sms = device_limits().sms;
    int per_sm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
    if (err != cudaSuccess) return err;
    if (per_sm < 1) return cudaErrorInvalidConfiguration;
    // Co-resident blocks only (grid barriers); two per SM at most, which keeps the barriers short.
    const int grid = std::max(1, std::min(per_sm, 2) * sms);
    // Phase B: split each tile's chunks so that the (tile, split) items cover all warps.
    using L2 = CodeLayout<BITS>;
    const int nchunks = (p.matmul.words_per_row + L2::kChunkWords - 1) / L2::kChunkWords;
    const int ntiles = (p.matmul.out_features + 15) / 16;
    const int want = std::max(1, std::min({nchunks, kMaxSplits, grid * kWarps / ntiles}));
    int per = (nchunks + want - 1) / want;
    int splits = (nchunks + per - 1) / per;
    __half* cbuf = static_cast<__half*>(workspace);
    const size_t c_bytes = align256(sizeof(__half) * rows * p.matmul.in_features);
    float* zbuf = reinterpret_cast<float*>(static_cast<char*>(workspace) + c_bytes);
    FrameLinearParams params = p;
    void* args[] = {&params, &x, &y, &rows, &cbuf, &zbuf, &splits, &per, &barrier};
    return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), dim3(grid), dim3(kThreads), args, smem, stream);
}

// ---- the decode layer: rows <= kDecodeRows, one launch without grid barriers ----------------
//
// Every block computes the (small) prologue of all tokens itself into shared memory while its
// slice of the codes streams global -> shared with cp.async; its warps then multiply that slice
// (split-K inside the block, a fixed summation order) and write z. The last block to finish
// (an atomic counter) runs the epilogue. One launch, no grid-wide wait, no activation traffic.
// (Copying the layer's tables to shared memory at the start as well was measured slower on the
// H100: 33.0 against 29.1 us for 4096x4096 at M = 1.)

constexpr int kDecodeThreads = 512;
constexpr int kDecodeWarps = kDecodeThreads / 32;

// Shared floats of the decode kernel with `tiles` 16-row tiles per block:
// [codes | c | prologue or split-K partials], the epilogue reusing it all.
__host__ __device__ inline int decode_code_floats(const FrameLinearParams& p, int tiles) {
    return round4(tiles * 16 * p.matmul.words_per_row);
}
__host__ __device__ inline int decode_c_floats(const FrameLinearParams& p, int rows) {
    return round4((rows * p.matmul.in_features + 1) / 2);
}
__host__ __device__ inline int decode_floats(const FrameLinearParams& p, int rows, int tiles) {
    const int front = decode_code_floats(p, tiles) + decode_c_floats(p, rows) +
                      imax(prologue_floats(p), kDecodeWarps * 128);
    return imax(front, epilogue_floats(p));
}


template <int BITS, typename T>
__global__ void __launch_bounds__(kDecodeThreads, 1)
    decode_frame_linear_kernel(FrameLinearParams p, const T* __restrict__ x, T* y, int rows, float* zbuf,
                               int tiles_per_block, unsigned int* counter) {
    extern __shared__ __align__(16) float smem[];
    __shared__ float xsum[kDecodeRows];
    __shared__ float xpart[kDecodeWarps][kDecodeRows];
    using L = CodeLayout<BITS>;
    const int K_in = p.matmul.in_features, K_out = p.matmul.out_features, wpr = p.matmul.words_per_row;
    const int ntiles = (K_out + 15) / 16;
    const int t0 = blockIdx.x * tiles_per_block, nt_b = min(ntiles, t0 + tiles_per_block) - t0;
    const int row_begin = t0 * 16, row_end = min(K_out, (t0 + nt_b) * 16);
    uint32_t* scodes = reinterpret_cast<uint32_t*>(smem);
    __half* c = reinterpret_cast<__half*>(smem + decode_code_floats(p, tiles_per_block));
    float* work = smem + decode_code_floats(p, tiles_per_block) + decode_c_floats(p, rows);
    FQ_STAMP(0);

    // 1. This block's codes (contiguous rows) towards shared memory, in flight during step 2.
    {
        const uint32_t* src = p.matmul.codes + static_cast<int64_t>(row_begin) * wpr;
        const int n = (row_end - row_begin) * wpr, n16 = n / 4;  // 16-row tiles start 16-byte aligned
        for (int i = threadIdx.x; i < n16; i += blockDim.x) cp_async16(scodes + 4 * i, src + 4 * i);
        for (int i = 4 * n16 + threadIdx.x; i < n; i += blockDim.x) scodes[i] = __ldg(src + i);
    }
    cp_async_commit();
    FQ_STAMP(1);

    // 2. c = T_in^T R_in^T x for every token (each block alike).
    const PrologueSmem sa(p, work);
    if (p.has_frame_in) load_dft(p.frame_in.dft, sa.dft, p.frame_in.kp);
    FQ_STAMP(2);
    for (int tok = 0; tok < rows; ++tok)
        prologue_row(p, x + static_cast<int64_t>(tok) * p.in_dim(), c + tok * K_in, sa);
    cp_async_wait_all();
    __syncthreads();
    FQ_STAMP(6);

    // 3. Activation sums (for the zero points), once per token rather than in every tile.
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    {
        float part[kDecodeRows];
#pragma unroll
        for (int t = 0; t < kDecodeRows; ++t) part[t] = 0.f;
        for (int i = threadIdx.x; i < K_in / 2; i += blockDim.x) {
#pragma unroll
            for (int t = 0; t < kDecodeRows; ++t) {
                if (t < rows) {
                    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(c + t * K_in + 2 * i));
                    part[t] += v.x + v.y;
                }
            }
        }
#pragma unroll
        for (int t = 0; t < kDecodeRows; ++t) {
            float v = part[t];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) xpart[warp][t] = v;
        }
    }

    // 4. Split-K over the block's warps: warp w takes tile w / S, chunk range w % S.
    const int S = imax(1, kDecodeWarps / nt_b);
    const int nchunks = (wpr + L::kChunkWords - 1) / L::kChunkWords, per = (nchunks + S - 1) / S;
    const int lt = warp / S, split = warp % S;
    float* red = work;  // the prologue's space is free now
    if (lt < nt_b) {
        float acc[1][4], xs[1];
        const int row0 = (t0 + lt) * 16, c0 = min(nchunks, split * per), c1 = min(nchunks, c0 + per);
        // xs_tile = 1 (no such tile with NT = 1): the sums come from step 3.
        warp_packed_tile<BITS, 1, 1, true>(p.matmul, row0, RowAct{c, rows, K_in, K_in}, 0, c0, c1, acc, xs, 1, scodes,
                                           row_begin);
#pragma unroll
        for (int i = 0; i < 4; ++i) red[warp * 128 + i * 32 + lane] = acc[0][i];
    }
    FQ_STAMP(7);
    __syncthreads();
    if (threadIdx.x < rows) {
        float v = 0.f;
        for (int w = 0; w < kDecodeWarps; ++w) v += xpart[w][threadIdx.x];
        xsum[threadIdx.x] = v;
    }
    __syncthreads();
    // z[tok, row] = scale * (sum_s partial_s - zero * xsum[tok]), in split order; D layout:
    // row g + 8 (i >> 1), token 2 q + (i & 1), lane 4 g + q.
    const int brows = nt_b * 16;
    for (int e = threadIdx.x; e < rows * brows; e += blockDim.x) {
        const int tok = e / brows, r = e % brows, row = row_begin + r;
        if (row >= K_out) continue;
        const int tile = r >> 4, rr = r & 15;
        const int idx = ((rr >> 3) * 2 + (tok & 1)) * 32 + (rr & 7) * 4 + (tok >> 1);
        float sum = 0.f;
        for (int s_ = 0; s_ < S; ++s_) sum += red[(tile * S + s_) * 128 + idx];
        zbuf[static_cast<int64_t>(tok) * K_out + row] =
            __half2float(p.matmul.scale[row]) * (sum - __half2float(p.matmul.zero[row]) * xsum[tok]);
    }

    // 5. The last block to arrive runs the epilogue.
    FQ_STAMP(8);
    if (!last_block_arrives(counter)) return;
    FQ_STAMP(32);
    const EpilogueSmem sc(p, smem);
    if (p.has_frame_out) load_dft(p.frame_out.dft_t, sc.dft_t, p.frame_out.kp);
    FQ_STAMP(33);
    for (int tok = 0; tok < rows; ++tok) {
        const float* z = zbuf + static_cast<int64_t>(tok) * K_out;
        epilogue_row(p, [z](int i) { return __ldcg(z + i); }, y + static_cast<int64_t>(tok) * p.out_dim(), sc);
    }
}

// cudaErrorNotSupported when the layer does not fit the decode kernel (shared memory), or, with
// one_wave, when it would take more blocks than SMs (each later wave repeats the prologue).
template <int BITS, typename T>
cudaError_t launch_decode(const FrameLinearParams& p, const T* x, T* y, int rows, void* workspace,
                          unsigned int* counter, bool one_wave, cudaStream_t stream) {
    auto kernel = decode_frame_linear_kernel<BITS, T>;
    const DeviceLimits dev = device_limits();
    const int sms = dev.sms, optin = dev.smem_optin;
    cudaFuncAttributes attr{};
    cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
    if (err != cudaSuccess) return err;
    const size_t limit = static_cast<size_t>(optin) - attr.sharedSizeBytes;
    const int ntiles = (p.matmul.out_features + 15) / 16;
    const int want = (ntiles + sms - 1) / sms;  // one block per SM where shared memory allows
    int tiles = want;
    while (tiles > 0 && sizeof(float) * decode_floats(p, rows, tiles) > limit) --tiles;
    if (tiles == 0 || (one_wave && tiles < want)) return cudaErrorNotSupported;
    const size_t smem = sizeof(float) * decode_floats(p, rows, tiles);
    err = allow_smem(kernel, smem);
    if (err != cudaSuccess) return err;
    const int grid = (ntiles + tiles - 1) / tiles;
    kernel<<<grid, kDecodeThreads, smem, stream>>>(p, x, y, rows, static_cast<float*>(workspace), tiles, counter);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode_typed(const FrameLinearParams& p, const T* x, T* y, int rows, void* ws, unsigned int* bar,
                                bool one_wave, cudaStream_t stream) {
    switch (p.matmul.bits) {
        case 2: return launch_decode<2, T>(p, x, y, rows, ws, bar, one_wave, stream);
        case 4: return launch_decode<4, T>(p, x, y, rows, ws, bar, one_wave, stream);
        case 8: return launch_decode<8, T>(p, x, y, rows, ws, bar, one_wave, stream);
        default: return cudaErrorNotSupported;
    }
}

template <typename T>
cudaError_t launch_fused_typed(const FrameLinearParams& p, const T* x, T* y, int rows, void* ws, unsigned int* bar,
                               cudaStream_t stream) {
    const bool two = rows > 8;
    switch (p.matmul.bits) {
        case 2: return two ? launch_fused<2, 2, T>(p, x, y, rows, ws, bar, stream) : launch_fused<2, 1, T>(p, x, y, rows, ws, bar, stream);
        case 4: return two ? launch_fused<4, 2, T>(p, x, y, rows, ws, bar, stream) : launch_fused<4, 1, T>(p, x, y, rows, ws, bar, stream);
        case 8: return two ? launch_fused<8, 2, T>(p, x, y, rows, ws, bar, stream) : launch_fused<8, 1, T>(p, x, y, rows, ws, bar, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

size_t frame_linear_workspace_bytes(const FrameLinearParams& p, int64_t rows) {
    const size_t fused = align256(sizeof(__half) * rows * p.matmul.in_features) +
                         sizeof(float) * kMaxSplits * rows * p.matmul.out_features;
    const size_t unfused = align256(sizeof(float) * rows * p.matmul.in_features) + sizeof(float) * rows * p.matmul.out_features;
    const size_t split = rows <= kDecodeRows ? frame_linear_split_workspace_bytes(p, rows) : 0;
    const size_t gemv = rows == 1 ? frame_linear_gemv_workspace_bytes(p) : 0;
    return std::max({fused, unfused, split, gemv});
}

// The decode kernel; `one_wave`: refuse (cudaErrorNotSupported) rather than run more blocks than SMs.
static cudaError_t decode_any(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype, void* workspace,
                       unsigned int* counter, bool one_wave, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kDecodeRows) return cudaErrorInvalidValue;
    return with_act_type(dtype, x, y, [&](auto* xt, auto* yt) {
        return launch_decode_typed(p, xt, yt, static_cast<int>(rows), workspace, counter, one_wave, stream);
    });
}

cudaError_t launch_frame_linear_fused(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                      void* workspace, unsigned int* barrier, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kFusedMaxRows) return cudaErrorInvalidValue;
    if (rows == 1) {
        const cudaError_t err = launch_frame_linear_gemv(p, x, y, rows, dtype, workspace, barrier, stream);
        if (err != cudaErrorNotSupported) return err;
        cudaGetLastError();  // not sticky; clear it
    }
    if (rows <= kSplitAutoRows && std::max(p.in_dim(), p.out_dim()) > kSplitMinDim) {
        const cudaError_t err = launch_frame_linear_split(p, x, y, rows, dtype, workspace, barrier, stream);
        if (err != cudaErrorNotSupported) return err;
        cudaGetLastError();  // not sticky; clear it
    }
    if (rows <= kDecodeAutoRows) {
        // One wave only: a second wave of blocks repeats the prologue (11008x4096 at M = 1 on the
        // H100: 126 us against 98 for the cooperative kernel).
        const cudaError_t err = decode_any(p, x, y, rows, dtype, workspace, barrier, true, stream);
        if (err != cudaErrorNotSupported) return err;
        cudaGetLastError();  // not sticky; clear it
    }
    return launch_frame_linear_cooperative(p, x, y, rows, dtype, workspace, barrier, stream);
}

cudaError_t launch_frame_linear_cooperative(const FrameLinearParams& p, const void* x, void* y, int64_t rows,
                                            DType dtype, void* workspace, unsigned int* barrier, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (rows > kFusedMaxRows) return cudaErrorInvalidValue;
    return with_act_type(dtype, x, y, [&](auto* xt, auto* yt) {
        return launch_fused_typed(p, xt, yt, static_cast<int>(rows), workspace, barrier, stream);
    });
}

cudaError_t launch_frame_linear_decode(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                       void* workspace, unsigned int* counter, cudaStream_t stream) {
    return decode_any(p, x, y, rows, dtype, workspace, counter, false, stream);
}

cudaError_t launch_layer_prologue(const FrameLinearParams& p, const void* x, void* c, int64_t ldc, int64_t rows,
                                  DType dtype, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (ldc < p.matmul.in_features) return cudaErrorInvalidValue;
    if (dtype == DType::kFloat16)
        return launch_prologue_typed<__half>(p, static_cast<const __half*>(x), static_cast<__half*>(c), ldc, rows, stream);
    return launch_prologue_typed<float>(p, static_cast<const float*>(x), static_cast<float*>(c), ldc, rows, stream);
}

cudaError_t launch_layer_epilogue(const FrameLinearParams& p, const void* z, int64_t ldz, void* y, int64_t rows,
                                  DType dtype, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (ldz < p.matmul.out_features) return cudaErrorInvalidValue;
    if (dtype == DType::kFloat16)
        return launch_epilogue_typed<__half>(p, static_cast<const __half*>(z), ldz, static_cast<__half*>(y), rows, stream);
    return launch_epilogue_typed<float>(p, static_cast<const float*>(z), ldz, static_cast<float*>(y), rows, stream);
}

cudaError_t launch_frame_linear_unfused(const FrameLinearParams& p, const void* x, void* y, int64_t rows,
                                        DType dtype, void* workspace, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    const size_t elem = dtype == DType::kFloat16 ? 2 : 4;
    char* c = static_cast<char*>(workspace);
    char* z = c + align256(elem * rows * p.matmul.in_features);
    cudaError_t err = launch_layer_prologue(p, x, c, p.matmul.in_features, rows, dtype, stream);
    if (err == cudaSuccess) err = launch_packed_matmul(p.matmul, c, z, rows, dtype, stream);
    if (err == cudaSuccess) err = launch_layer_epilogue(p, z, p.matmul.out_features, y, rows, dtype, stream);
    return err;
}

#ifdef FQ_TRACE
cudaError_t read_trace(unsigned long long* host, int n) {
    return cudaMemcpyFromSymbol(host, detail::g_trace, sizeof(unsigned long long) * (n < 64 ? n : 64));
}
#endif

}  // namespace fq
