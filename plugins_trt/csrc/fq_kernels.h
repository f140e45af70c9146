// CUDA kernels of the FrameQuant ops: parameters and launchers.
//
// Free of TensorRT and PyTorch types: the TensorRT plugins (plugins_trt/trt/) and the PyTorch
// harness (plugins_trt/torch_ext/) are two thin callers of these launchers. Tables (signs, DCT,
// frame gathers, DFT) are device pointers made from the recipes of recipe.h. The packed codes
// follow packed_layout.h. Every launcher returns the cudaError_t of its launch; none synchronizes.
// docs/kernels.md describes the kernels and why each path is taken where it is.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>

#include "host_device.h"
#include "packed_layout.h"

namespace fq {

enum class DType : int { kFloat32 = 0, kFloat16 = 1 };

// Workspace parts start 256 bytes apart (the alignment cudaMalloc gives and cuBLAS assumes).
inline size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// R = (H_power kron C_odd) diag(signs), dim = power * odd (fq_export.rotations).
struct RotationParams {
    int dim = 0, power = 0, odd = 0;
    const float* signs = nullptr;  // [dim]
    const float* dct = nullptr;    // [odd * odd], row-major orthonormal DCT-II
};

// Real (k, rho, d) tight fusion frame (fq_export.frames), applied as gather + per-block DFT.
struct FrameParams {
    int k = 0, rho_c = 0, d_c = 0;          // complex block width, number of blocks (rho/2), d/2
    int kp = 0;                             // 2k rounded up to a multiple of 16 (tensor-core k-steps)
    const int32_t* gather_index = nullptr;  // [rho_c * k]
    const float* gather_weight = nullptr;   // [rho_c * k]
    const int32_t* synth_bin = nullptr;     // [2 * d_c]
    const float* synth_weight = nullptr;    // [2 * d_c]
    const __half* dft = nullptr;            // [kp * kp] realified DFT M, zero-padded, row-major
    const __half* dft_t = nullptr;          // [kp * kp] M^T
    FQ_HD int d() const { return 2 * d_c; }
    FQ_HD int num_vectors() const { return 2 * rho_c * k; }
};

// D_hat = scale * (codes - zero) row-wise; codes in the packed layout of packed_layout.h.
struct PackedMatMulParams {
    int bits = 2;
    int in_features = 0;              // columns of D_hat (K_in)
    int out_features = 0;             // rows of D_hat (K_out)
    int words_per_row = 0;            // packed::words_per_row(in_features, bits)
    const uint32_t* codes = nullptr;  // [out_features * words_per_row]
    const __half* scale = nullptr;    // [out_features]
    const __half* zero = nullptr;     // [out_features]
};

// One FrameQuant linear layer: y = R_out T_out D_hat T_in^T R_in^T x + bias.
struct FrameLinearParams {
    bool has_rotation_in = false, has_frame_in = false, has_rotation_out = false, has_frame_out = false;
    RotationParams rotation_in, rotation_out;
    FrameParams frame_in, frame_out;
    PackedMatMulParams matmul;
    const float* bias = nullptr;  // [out dim] or null
    FQ_HD int in_dim() const { return has_frame_in ? frame_in.d() : matmul.in_features; }
    FQ_HD int out_dim() const { return has_frame_out ? frame_out.d() : matmul.out_features; }
};

// y = R x (transpose = false) or R^T x, on rows of length dim; x and y may alias.
cudaError_t launch_rotation(const RotationParams& p, const void* x, void* y, int64_t rows, DType dtype, bool transpose,
                            cudaStream_t stream);

// analysis (c = T^T u, (rows, d) -> (rows, K)) or synthesis (v = T z, (rows, K) -> (rows, d)).
cudaError_t launch_frame(const FrameParams& p, const void* in, void* out, int64_t rows, DType dtype, bool analysis,
                         cudaStream_t stream);

// z = x @ D_hat^T: x (rows, in_features) -> z (rows, out_features). Small and large row counts
// take different kernels; bits = 3 takes a plain CUDA-core kernel.
cudaError_t launch_packed_matmul(const PackedMatMulParams& p, const void* x, void* z, int64_t rows, DType dtype,
                                 cudaStream_t stream);

// Dense fp16 D_hat (out_features, in_features), for the dequantize-then-GEMM path and tests;
// the _ld form writes rows `ld` halves apart (ld >= in_features; columns beyond are left as is).
cudaError_t launch_dequantize(const PackedMatMulParams& p, __half* out, cudaStream_t stream);
cudaError_t launch_dequantize_ld(const PackedMatMulParams& p, __half* out, int64_t ld, cudaStream_t stream);

// The fused single-launch layer for rows <= kFusedMaxRows: for one row the gemv kernel (below)
// where the layer takes it, else the spread decode kernel for wide layers, else the decode kernel
// up to kDecodeAutoRows rows where it fits, else one cooperative launch in three phases separated
// by grid barriers (see frame_linear.cu).
// `workspace` holds frame_linear_workspace_bytes(p, rows) bytes; `barrier` is one uint32 that is
// zero before the first use and is left valid for the next.
constexpr int kFusedMaxRows = 16;
size_t frame_linear_workspace_bytes(const FrameLinearParams& p, int64_t rows);
cudaError_t launch_frame_linear_fused(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                      void* workspace, unsigned int* barrier, cudaStream_t stream);
cudaError_t launch_frame_linear_cooperative(const FrameLinearParams& p, const void* x, void* y, int64_t rows,
                                            DType dtype, void* workspace, unsigned int* barrier, cudaStream_t stream);

// The decode layer for rows <= kDecodeRows (launch_frame_linear_fused takes it for those rows):
// one ordinary launch; each block computes the prologue itself, multiplies its slice of the codes
// from shared memory, and the last block to finish runs the epilogue. `counter` is the fused
// layer's `barrier` word (its low 31 bits are zero between launches). cudaErrorNotSupported
// where a block's slice of the codes, every token's coefficients and the row buffers do not fit
// in shared memory.
constexpr int kDecodeRows = 8;
// launch_frame_linear_fused takes the decode kernel up to this many rows: from two rows on, every
// block repeating the prologue costs more than the cooperative kernel's grid barriers.
constexpr int kDecodeAutoRows = 1;
cudaError_t launch_frame_linear_decode(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                       void* workspace, unsigned int* counter, cudaStream_t stream);

// The spread decode layer for rows <= kDecodeRows: one launch of about two blocks per SM with two
// grid barriers; every block folds the input into the few rotation chunks under its frame runs,
// analyses them and multiplies its slab of the codes; then each output rotation chunk is
// synthesized and rotated by its own block (frame_linear_split.cu). Needs both rotations and both
// frames, and all blocks resident at once: cudaErrorNotSupported otherwise. `workspace` holds
// frame_linear_workspace_bytes(p, rows); `barrier` as for the fused layer.
// launch_frame_linear_fused takes it first up to kSplitAutoRows rows for layers with
// max(in dim, out dim) > kSplitMinDim: there the decode kernel's single-block epilogue (or its second
// wave of blocks) dominates; up to 4096 the two are even.
constexpr int kSplitAutoRows = 1;
constexpr int kSplitMinDim = 4096;
size_t frame_linear_split_workspace_bytes(const FrameLinearParams& p, int64_t rows);
cudaError_t launch_frame_linear_split(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                      void* workspace, unsigned int* barrier, cudaStream_t stream);

// The one-row layer for latency (frame_linear_gemv.cu): one launch of at most one block per SM,
// every block running the prologue while its equal share of the codes streams in, the last block
// to finish running the epilogue from tables, z and bias copied to shared memory at once.
// launch_frame_linear_fused takes it first for one row. cudaErrorNotSupported for rotations with
// an odd factor, frame blocks wider than 64 or layers whose share does not fit in shared memory.
// `workspace` holds frame_linear_gemv_workspace_bytes(p) (frame_linear_workspace_bytes(p, 1)
// covers it); `counter` as for the decode layer.
size_t frame_linear_gemv_workspace_bytes(const FrameLinearParams& p);
cudaError_t launch_frame_linear_gemv(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                     void* workspace, unsigned int* counter, cudaStream_t stream);

// The layer in three launches (any row count): prologue c = T_in^T R_in^T x, packed matmul
// z = D_hat c, epilogue y = R_out T_out z + bias. `workspace` as for the fused layer.
cudaError_t launch_frame_linear_unfused(const FrameLinearParams& p, const void* x, void* y, int64_t rows, DType dtype,
                                        void* workspace, cudaStream_t stream);

// The prologue and epilogue launches on their own; c and z rows are ldc / ldz elements apart.
cudaError_t launch_layer_prologue(const FrameLinearParams& p, const void* x, void* c, int64_t ldc, int64_t rows,
                                  DType dtype, cudaStream_t stream);
cudaError_t launch_layer_epilogue(const FrameLinearParams& p, const void* z, int64_t ldz, void* y, int64_t rows,
                                  DType dtype, cudaStream_t stream);

// Many rows, fp16 (gemm_cublas.cpp, links cuBLAS): prologue, D_hat decoded to fp16 in the
// workspace, cuBLAS GEMM (fp32 accumulation) on K_in and K_out rounded up to 64 (zero padding),
// epilogue.
// `cublas_handle` is a cublasHandle_t; its stream is set to `stream`.
constexpr int kGemmAlign = 64;
size_t frame_linear_gemm_workspace_bytes(const FrameLinearParams& p, int64_t rows);
cudaError_t launch_frame_linear_gemm(const FrameLinearParams& p, const void* x, void* y, int64_t rows, void* workspace,
                                     void* cublas_handle, cudaStream_t stream);

// The layer's dense effective weight, transposed: W^T = (P_out D_hat P_in^T)^T (in dim x out dim,
// fp16, row-major), built in `workspace` (effective_weight_workspace_bytes(p)) from the codes and
// tables (effective_weight.cu); *w_t points at it inside the workspace. The same weight as the
// layer's five steps, rounded to fp16 between its steps. kAuto transforms slabs of 8 of the
// weight's rows or columns at a time where the sides allow it (see effective_weight.cu), kRows
// always one row at a time, with a transpose between the sides (the tests prove both).
enum class WeightBuild : int { kAuto = 0, kRows = 1 };
size_t effective_weight_workspace_bytes(const FrameLinearParams& p);
cudaError_t launch_effective_weight(const FrameLinearParams& p, void* workspace, __half** w_t, cudaStream_t stream,
                                    WeightBuild build = WeightBuild::kAuto);

// Many rows, fp16, dense form (gemm_cublas.cpp, links cuBLASLt): W^T built in the workspace as
// above, then y = x W^T + bias as one cuBLASLt GEMM with the bias in its epilogue. Its cost is
// the GEMM of the dense layer plus a row-count-independent build (K_out + in dim transformed
// rows), so it wins over the gemm path from a row count of the order of the layer's width
// (dense_min_rows). `cublaslt_handle` is a cublasLtHandle_t.
size_t frame_linear_dense_workspace_bytes(const FrameLinearParams& p);
// Rows from which the dense form takes over from the gemm path (the automatic choice of the
// harness and of the FQFrameLinear plugin). The gemm path transforms every row twice (n and m
// values); the dense form transforms K_out rows of n values and n rows of m values once per call.
// With a transform's cost proportional to its width they balance at n (K_out + m) / (n + m) rows
// (the measured crossovers are in docs/kernels.md).
inline int64_t dense_min_rows(int64_t n, int64_t m, int64_t k_out) { return (n * (k_out + m) + n + m - 1) / (n + m); }
// The dense form's GEMM is entry `gemm_choice` of cuBLASLt's heuristic list for it (at most
// kDenseGemmChoices entries, its own ranking first; 0 its first pick, an index past the list's end
// its last entry): the FQFrameLinear plugin offers the entries to TensorRT as tactics, the harness
// times them. frame_linear_dense_gemm_choices: the list's length for these buffers and rows.
constexpr int kDenseGemmChoices = 8;
cudaError_t launch_frame_linear_dense(const FrameLinearParams& p, const void* x, void* y, int64_t rows, void* workspace,
                                      void* cublaslt_handle, cudaStream_t stream, int gemm_choice = 0);
int frame_linear_dense_gemm_choices(const FrameLinearParams& p, const void* x, const void* y, int64_t rows,
                                    void* workspace, void* cublaslt_handle);

// Dense-at-load mode (gemm_cublas.cpp): the dense form's weight built once and kept, so every call
// is the dense layer's cuBLASLt GEMM alone. `weight` (dense_weight_bytes(p), 256-byte aligned)
// holds W^T (in dim x out dim, fp16) and then the fp16 bias; build_dense_weight fills it (its
// `workspace`: effective_weight_workspace_bytes(p)), launch_dense_weight_gemm runs
// y = x W^T + bias with entry `gemm_choice` of cuBLASLt's list (its `workspace`:
// dense_weight_gemm_workspace_bytes()). fp16 activations only.
size_t dense_weight_bytes(const FrameLinearParams& p);
size_t dense_weight_gemm_workspace_bytes();
cudaError_t build_dense_weight(const FrameLinearParams& p, void* weight, void* workspace, cudaStream_t stream);
cudaError_t launch_dense_weight_gemm(const FrameLinearParams& p, const void* weight, const void* x, void* y,
                                     int64_t rows, void* workspace, void* cublaslt_handle, cudaStream_t stream,
                                     int gemm_choice = 0);

// The packed matmul of many fp16 rows on cuBLAS (gemm_cublas.cpp): D_hat decoded to fp16 in the
// workspace, rows copied into K-padded buffers where K_in or K_out is not a multiple of 64, one
// cuBLAS GEMM. The FQPackedMatMul plugin takes it from kPackedGemmMinRows rows where the library
// was built with cuBLAS (from there the tensor-core GEMM outruns the packed kernel's decoding).
constexpr int64_t kPackedGemmMinRows = 64;
size_t packed_matmul_gemm_workspace_bytes(const PackedMatMulParams& p, int64_t rows);
cudaError_t launch_packed_matmul_gemm(const PackedMatMulParams& p, const void* x, void* z, int64_t rows,
                                      void* workspace, void* cublas_handle, cudaStream_t stream);

// Every way a whole layer runs, each with its one name: the values and names are the harness'
// (harness.PATHS, built from kLayerPathNames through the PyTorch binding's layer_paths()).
enum class LayerPath : int {
    kFused = 1,          // "fused": launch_frame_linear_fused (gemv, split, decode or cooperative)
    kThreeLaunches = 2,  // "kernels": launch_frame_linear_unfused
    kGemm = 3,           // "gemm": launch_frame_linear_gemm
    kDecode = 4,         // "decode": launch_frame_linear_decode
    kCooperative = 5,    // "cooperative": launch_frame_linear_cooperative
    kSplit = 6,          // "split": launch_frame_linear_split
    kDense = 7,          // "dense": launch_frame_linear_dense
    kGemv = 8,           // "gemv": launch_frame_linear_gemv
    // "dense-weights": the dense-at-load mode (build_dense_weight once, then launch_dense_weight_gemm),
    // taken for fp16 at every row count where the FQFrameLinear plugin runs with FQ_TRT_WEIGHTS=dense.
    kDenseWeights = 9,
};
struct LayerPathName {
    LayerPath path;
    const char* name;
};
constexpr LayerPathName kLayerPathNames[] = {
    {LayerPath::kFused, "fused"},
    {LayerPath::kThreeLaunches, "kernels"},
    {LayerPath::kGemm, "gemm"},
    {LayerPath::kDecode, "decode"},
    {LayerPath::kCooperative, "cooperative"},
    {LayerPath::kSplit, "split"},
    {LayerPath::kDense, "dense"},
    {LayerPath::kGemv, "gemv"},
    {LayerPath::kDenseWeights, "dense-weights"},
};

// The path a whole layer takes where its caller leaves the choice to the library (the harness'
// KernelLinear and the FQFrameLinear plugin, so that both take the same one): the single-launch
// layer for one row; three launches for 2 to kPackedGemmMinRows - 1 rows, for fp32 and without
// cuBLAS; else the gemm path, and the dense form from dense_min_rows rows (docs/kernels.md has the
// measurements behind each threshold).
inline LayerPath auto_layer_path(int64_t rows, DType dtype, int64_t n, int64_t m, int64_t k_out, bool with_cublas) {
    if (rows <= 1) return LayerPath::kFused;
    if (dtype != DType::kFloat16 || rows < kPackedGemmMinRows || !with_cublas) return LayerPath::kThreeLaunches;
    return rows >= dense_min_rows(n, m, k_out) ? LayerPath::kDense : LayerPath::kGemm;
}

// out[i] = (half) in[i]: the plugin's fp32 scale/zero inputs (exact: they are fp16 values).
cudaError_t launch_half_from_float(const float* in, __half* out, int n, cudaStream_t stream);

#ifdef FQ_TRACE
// Profiling builds: the %globaltimer stamps (ns) of frame_linear.cu's kernels (FQ_STAMP slots).
cudaError_t read_trace(unsigned long long* host, int n);
cudaError_t read_trace_split(unsigned long long* host, int n);  // frame_linear_split.cu's
cudaError_t read_trace_gemv(unsigned long long* host, int n);   // frame_linear_gemv.cu's
#endif

// Shared memory each kernel needs (bytes), for callers that check device limits.
size_t rotation_smem_bytes(const RotationParams& p);

}  // namespace fq
