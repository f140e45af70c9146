// The layer's prologue and epilogue over many rows (the three-launch, gemm and dense paths' row
// kernels), and the three-launch layer.
//
// Rows in a grid-stride loop, one row at a time per block. Where shared memory allows
// (kStaged), a block copies the layer's tables (sign bits, DCT, frame gathers) into shared
// memory once, and the next row's input streams in by cp.async while the current one is
// transformed: no step of a row then waits on global memory but the epilogue's bias (read
// through L1; staging it too would leave one 4096-wide epilogue block per SM instead of two).
// Otherwise tables and rows are read from global memory (batched loads, common.cuh).
// Otherwise tables and rows are read from global memory (batched loads, device/rows.cuh).
#include <algorithm>

#include "device/async_copy.cuh"
#include "device/launch.cuh"
#include "layer/layer_rows.cuh"

namespace fq {
namespace {

using namespace layer;

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

// The staged kernels' rows: row r of src (ld apart) is copied into one of two shared buffers by
// cp.async while the block works on the row before it. start() issues the block's first row (one
// cp.async group; the caller may stage tables after it); for_each(body) runs body(row, staged row)
// for the block's rows, after a barrier, so every thread sees the row and the previous body is
// done with the shared memory it used. A buffer is refilled only after the barrier that follows
// its last read.
template <typename T> struct StagedRows {
    const T* src;
    int64_t ld, rows;
    float* buf0;
    int buf_floats, words;
    __device__ float* buf(int i) const { return buf0 + i * buf_floats; }
    __device__ void start() const {
        if (blockIdx.x < rows) stage_words(buf(0), src + blockIdx.x * ld, words);
        cp_async_commit();
    }
    template <typename Body> __device__ void for_each(Body body) const {
        int b = 0;
        for (int64_t row = blockIdx.x; row < rows; row += gridDim.x, b ^= 1) {
            const int64_t next = row + gridDim.x;
            if (next < rows) stage_words(buf(b ^ 1), src + next * ld, words);
            cp_async_commit();
            cp_async_wait<1>();  // this row (and, at first, the tables) arrived
            __syncthreads();     // ... for every thread
            body(row, reinterpret_cast<const T*>(buf(b)));
        }
        cp_async_wait_all();
    }
};

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
        for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) prologue_row(p, x + row * d, c + row * ldc, s);
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
        const bool fold = p.has_rotation_in && p.has_frame_in;
        const SignFold signs = fold ? SignFold{reinterpret_cast<const uint32_t*>(q.rotation_in.signs),
                                               rotation_fold_scale(p.rotation_in, true)}
                                    : SignFold{};
        const StagedRows<T> staged{x, d, rows, smem + st.buf, st.buf_floats, st.words};
        staged.start();
        if (p.has_frame_in) load_dft(p.frame_in.dft, s.dft, p.frame_in.kp);
        staged.for_each([&](int64_t row, const T* xr) {  // the previous row is done with s.u
            for (int i = threadIdx.x; i < d; i += blockDim.x) s.u[sp(i)] = to_float(xr[i]);
            // With both steps, the rotation's signs and scale go with the analysis' gathers.
            if (p.has_rotation_in)
                block_rotate<true>(q.rotation_in, s.u, s.tmp, true, false, s.odd_mma, fold);
            else
                __syncthreads();
            if (p.has_frame_in)
                block_frame_analysis<T, true, KS>(q.frame_in, s.u, c + row * ldc, s.dft, false, signs);
            else
                store_row(c + row * ldc, p.matmul.in_features, s.u);
        });
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
        const StagedRows<T> staged{z, ldz, rows, smem + st.buf, st.buf_floats, st.words};
        staged.start();
        if (p.has_frame_out) load_dft(p.frame_out.dft_t, s.dft_t, p.frame_out.kp);
        staged.for_each([&](int64_t row, const T* zr) {
            epilogue_row<true, KS>(q, [zr](int i) { return to_float(zr[i]); }, y + row * d, s);
        });
    }
}

// Threads of a staged block for many rows of d values: narrow rows take 64 so that they do not
// leave most warps of a block idle at every barrier (768: 48 Walsh-Hadamard cosets, 14 frame
// blocks); rows wider than 1024 keep 256, which fewer threads made slower. (launch_rows keeps 256
// for rows few enough to run at once.)
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
// (then a row's latency is the kernel's time, which more threads shorten), except that a block
// that leaves room for no second one per SM
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

}  // namespace

cudaError_t launch_layer_prologue(const FrameLinearParams& p, const void* x, void* c, int64_t ldc, int64_t rows,
                                  DType dtype, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (ldc < p.matmul.in_features) return cudaErrorInvalidValue;
    if (dtype == DType::kFloat16)
        return launch_prologue_typed<__half>(p, static_cast<const __half*>(x), static_cast<__half*>(c), ldc, rows,
                                             stream);
    return launch_prologue_typed<float>(p, static_cast<const float*>(x), static_cast<float*>(c), ldc, rows, stream);
}

cudaError_t launch_layer_epilogue(const FrameLinearParams& p, const void* z, int64_t ldz, void* y, int64_t rows,
                                  DType dtype, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    if (ldz < p.matmul.out_features) return cudaErrorInvalidValue;
    if (dtype == DType::kFloat16)
        return launch_epilogue_typed<__half>(p, static_cast<const __half*>(z), ldz, static_cast<__half*>(y), rows,
                                             stream);
    return launch_epilogue_typed<float>(p, static_cast<const float*>(z), ldz, static_cast<float*>(y), rows, stream);
}

cudaError_t launch_frame_linear_unfused(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                        void* workspace, cudaStream_t stream) {
    if (rows == 0) return cudaSuccess;
    const size_t elem = dtype == DType::kFloat16 ? 2 : 4;
    char* c = static_cast<char*>(workspace);
    char* z = c + align256(elem * rows * p.matmul.in_features);
    cudaError_t err = launch_layer_prologue(p, x, c, p.matmul.in_features, rows, dtype, stream);
    if (err == cudaSuccess) err = launch_packed_matmul(p.matmul, c, z, rows, dtype, stream);
    if (err == cudaSuccess) err = launch_layer_epilogue(p, z, p.matmul.out_features, y, rows, dtype, stream);
    return err;
}

}  // namespace fq
