// Thin PyTorch binding of the plugins_trt kernels (the same .cu sources the TensorRT plugins
// build); tensors in, tensors out, parameters into the kernels' structs. Used by
// plugins_trt/runtime/ (KernelLinear, use_kernels) and plugins_trt/harness.py.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "fq_kernels.h"
#include "recipe.h"

namespace {

void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

fq::DType dtype_of(const torch::Tensor& x) {
    if (x.scalar_type() == torch::kHalf) return fq::DType::kFloat16;
    if (x.scalar_type() == torch::kFloat) return fq::DType::kFloat32;
    throw std::invalid_argument("fq kernels take float16 or float32 activations");
}

// The name of a layer path value (fq::kLayerPathNames), "unknown" for another value.
const char* layer_path_name(int64_t path) {
    for (const auto& entry : fq::kLayerPathNames)
        if (static_cast<int64_t>(entry.path) == path) return entry.name;
    return "unknown";
}

// Every layer path, name -> value (fq::kLayerPathNames): what harness.PATHS is built from.
std::map<std::string, int64_t> layer_paths() {
    std::map<std::string, int64_t> out;
    for (const auto& entry : fq::kLayerPathNames) out[entry.name] = static_cast<int64_t>(entry.path);
    return out;
}

void require_cuda(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda() && t.is_contiguous(), name, " must be a contiguous CUDA tensor");
}

// rotation: [signs (f32), dct (f32)] + [dim, power, odd]
fq::RotationParams rotation_params(const std::vector<torch::Tensor>& t, const std::vector<int64_t>& i) {
    fq::RotationParams p;
    p.dim = static_cast<int>(i.at(0));
    p.power = static_cast<int>(i.at(1));
    p.odd = static_cast<int>(i.at(2));
    p.signs = t.at(0).data_ptr<float>();
    p.dct = t.at(1).data_ptr<float>();
    return p;
}

// frame: [gather_index (i32), gather_weight (f32), synth_bin (i32), synth_weight (f32), dft (f16),
// dft_t (f16)] + [k, rho_c, d_c, kp]
fq::FrameParams frame_params(const std::vector<torch::Tensor>& t, const std::vector<int64_t>& i) {
    fq::FrameParams p;
    p.k = static_cast<int>(i.at(0));
    p.rho_c = static_cast<int>(i.at(1));
    p.d_c = static_cast<int>(i.at(2));
    p.kp = static_cast<int>(i.at(3));
    p.gather_index = t.at(0).data_ptr<int32_t>();
    p.gather_weight = t.at(1).data_ptr<float>();
    p.synth_bin = t.at(2).data_ptr<int32_t>();
    p.synth_weight = t.at(3).data_ptr<float>();
    p.dft = reinterpret_cast<const __half*>(t.at(4).data_ptr<at::Half>());
    p.dft_t = reinterpret_cast<const __half*>(t.at(5).data_ptr<at::Half>());
    return p;
}

// matmul: [codes (i32), scale (f16), zero (f16)] + [bits, in_features, out_features]
fq::PackedMatMulParams matmul_params(const std::vector<torch::Tensor>& t, const std::vector<int64_t>& i) {
    fq::PackedMatMulParams p;
    p.bits = static_cast<int>(i.at(0));
    p.in_features = static_cast<int>(i.at(1));
    p.out_features = static_cast<int>(i.at(2));
    p.words_per_row = static_cast<int>(t.at(0).size(1));
    TORCH_CHECK(t.at(0).size(0) == p.out_features, "packed codes must have out_features rows");
    TORCH_CHECK(p.words_per_row == fq::packed::words_per_row(p.in_features, p.bits),
                "packed codes width does not match");
    p.codes = reinterpret_cast<const uint32_t*>(t.at(0).data_ptr<int32_t>());
    p.scale = reinterpret_cast<const __half*>(t.at(1).data_ptr<at::Half>());
    p.zero = reinterpret_cast<const __half*>(t.at(2).data_ptr<at::Half>());
    return p;
}

torch::Tensor rotation(torch::Tensor x, std::vector<torch::Tensor> tables, std::vector<int64_t> ints, bool transpose) {
    require_cuda(x, "x");
    auto p = rotation_params(tables, ints);
    TORCH_CHECK(x.size(-1) == p.dim, "rotation of size ", p.dim, " got last axis ", x.size(-1));
    auto y = torch::empty_like(x);
    check(fq::launch_rotation(p, x.data_ptr(), y.data_ptr(), x.numel() / p.dim, dtype_of(x), transpose,
                              c10::cuda::getCurrentCUDAStream()),
          "rotation");
    return y;
}

torch::Tensor frame(torch::Tensor x, std::vector<torch::Tensor> tables, std::vector<int64_t> ints, bool analysis) {
    require_cuda(x, "x");
    auto p = frame_params(tables, ints);
    const int64_t in = analysis ? p.d() : p.num_vectors(), out = analysis ? p.num_vectors() : p.d();
    TORCH_CHECK(x.size(-1) == in, "frame transform expects last axis ", in, ", got ", x.size(-1));
    auto shape = x.sizes().vec();
    shape.back() = out;
    auto y = torch::empty(shape, x.options());
    check(fq::launch_frame(p, x.data_ptr(), y.data_ptr(), x.numel() / in, dtype_of(x), analysis,
                           c10::cuda::getCurrentCUDAStream()),
          "frame");
    return y;
}

// gemm: the dequantize + cuBLAS form (fp16 only), as the TensorRT plugin runs it for many rows.
torch::Tensor packed_matmul(torch::Tensor x, std::vector<torch::Tensor> tables, std::vector<int64_t> ints, bool gemm) {
    require_cuda(x, "x");
    auto p = matmul_params(tables, ints);
    TORCH_CHECK(x.size(-1) == p.in_features, "packed matmul expects last axis ", p.in_features);
    auto shape = x.sizes().vec();
    shape.back() = p.out_features;
    auto z = torch::empty(shape, x.options());
    const int64_t rows = x.numel() / p.in_features;
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (gemm) {
        TORCH_CHECK(x.scalar_type() == torch::kHalf, "the cuBLAS packed matmul takes float16 activations");
        auto ws = torch::empty({static_cast<int64_t>(fq::packed_matmul_gemm_workspace_bytes(p, rows))},
                               x.options().dtype(torch::kUInt8));
        check(fq::launch_packed_matmul_gemm(p, x.data_ptr(), z.data_ptr(), rows, ws.data_ptr(),
                                            at::cuda::getCurrentCUDABlasHandle(), stream),
              "packed_matmul_gemm");
    } else {
        check(fq::launch_packed_matmul(p, x.data_ptr(), z.data_ptr(), rows, dtype_of(x), stream), "packed_matmul");
    }
    return z;
}

torch::Tensor dequantize(std::vector<torch::Tensor> tables, std::vector<int64_t> ints) {
    auto p = matmul_params(tables, ints);
    auto out = torch::empty({p.out_features, p.in_features}, tables.at(0).options().dtype(torch::kHalf));
    check(fq::launch_dequantize(p, reinterpret_cast<__half*>(out.data_ptr<at::Half>()),
                                c10::cuda::getCurrentCUDAStream()),
          "dequantize");
    return out;
}

// Layer: tables = rot_in(2) + frame_in(6) + matmul(3) + frame_out(6) + rot_out(2) + [bias] (absent
// parts hold empty placeholders); ints = flags(4) + rot_in(3) + frame_in(4) + matmul(3) +
// frame_out(4) + rot_out(3).
fq::FrameLinearParams layer_params(const std::vector<torch::Tensor>& t, const std::vector<int64_t>& i) {
    fq::FrameLinearParams p;
    p.has_rotation_in = i.at(0);
    p.has_frame_in = i.at(1);
    p.has_frame_out = i.at(2);
    p.has_rotation_out = i.at(3);
    auto slice = [](const auto& v, size_t a, size_t n) {
        return std::vector<typename std::decay_t<decltype(v)>::value_type>(v.begin() + a, v.begin() + a + n);
    };
    if (p.has_rotation_in) p.rotation_in = rotation_params(slice(t, 0, 2), slice(i, 4, 3));
    if (p.has_frame_in) p.frame_in = frame_params(slice(t, 2, 6), slice(i, 7, 4));
    p.matmul = matmul_params(slice(t, 8, 3), slice(i, 11, 3));
    if (p.has_frame_out) p.frame_out = frame_params(slice(t, 11, 6), slice(i, 14, 4));
    if (p.has_rotation_out) p.rotation_out = rotation_params(slice(t, 17, 2), slice(i, 18, 3));
    if (t.size() > 19 && t.at(19).numel()) p.bias = t.at(19).data_ptr<float>();
    return p;
}

// An output tensor for x's rows (x on CUDA, its last axis the layer's input width).
torch::Tensor layer_output(const torch::Tensor& x, const fq::FrameLinearParams& p) {
    require_cuda(x, "x");
    TORCH_CHECK(x.size(-1) == p.in_dim(), "layer expects last axis ", p.in_dim());
    auto shape = x.sizes().vec();
    shape.back() = p.out_dim();
    return torch::empty(shape, x.options());
}

// One layer through `path` (an fq::LayerPath value, harness.PATHS): rows up to kFusedMaxRows for
// the fused and cooperative kernels, kDecodeRows for the decode and split kernels, one row for the
// gemv kernel; fp16 only for the gemm and dense paths. The dense-at-load mode has its own calls
// (build_dense_weight, dense_weight_linear).
torch::Tensor frame_linear(torch::Tensor x, std::vector<torch::Tensor> tables, std::vector<int64_t> ints, int64_t path,
                           torch::Tensor barrier, int64_t gemm_choice) {
    auto p = layer_params(tables, ints);
    auto y = layer_output(x, p);
    const int64_t rows = x.numel() / p.in_dim();
    auto stream = c10::cuda::getCurrentCUDAStream();
    auto workspace = [&](size_t bytes) {
        return torch::empty({static_cast<int64_t>(bytes)}, x.options().dtype(torch::kUInt8));
    };
    auto* bar = reinterpret_cast<unsigned int*>(barrier.data_ptr<int32_t>());
    auto at_most = [&](int64_t most) {
        if (rows > most)
            throw std::invalid_argument("layer path " + std::string(layer_path_name(path)) + " takes at most " +
                                        std::to_string(most) + " rows, got " + std::to_string(rows));
    };
    using fq::LayerPath;
    switch (static_cast<LayerPath>(path)) {
        case LayerPath::kFused: {
            TORCH_CHECK(rows <= fq::kFusedMaxRows, "the fused layer takes at most ", fq::kFusedMaxRows, " rows");
            auto ws = workspace(fq::frame_linear_workspace_bytes(p, rows));
            check(fq::launch_frame_linear_fused(p, x.data_ptr(), y.data_ptr(), rows, dtype_of(x), ws.data_ptr(), bar,
                                                stream),
                  "frame_linear_fused");
            break;
        }
        case LayerPath::kGemv: {
            if (rows != 1)
                throw std::invalid_argument("the gemv layer path takes one row, got " + std::to_string(rows));
            auto ws = workspace(fq::frame_linear_workspace_bytes(p, rows));
            check(fq::launch_frame_linear_gemv(p, x.data_ptr(), y.data_ptr(), rows, dtype_of(x), ws.data_ptr(), bar,
                                               stream),
                  "frame_linear_gemv");
            break;
        }
        case LayerPath::kDecode:
        case LayerPath::kCooperative:
        case LayerPath::kSplit: {
            const auto which = static_cast<LayerPath>(path);
            at_most(which == LayerPath::kCooperative ? fq::kFusedMaxRows : fq::kDecodeRows);
            auto ws = workspace(fq::frame_linear_workspace_bytes(p, rows));
            auto launch = which == LayerPath::kDecode        ? fq::launch_frame_linear_decode
                          : which == LayerPath::kCooperative ? fq::launch_frame_linear_cooperative
                                                             : fq::launch_frame_linear_split;
            check(launch(p, x.data_ptr(), y.data_ptr(), rows, dtype_of(x), ws.data_ptr(), bar, stream),
                  layer_path_name(path));
            break;
        }
        case LayerPath::kThreeLaunches: {
            auto ws = workspace(fq::frame_linear_workspace_bytes(p, rows));
            check(fq::launch_frame_linear_unfused(p, x.data_ptr(), y.data_ptr(), rows, dtype_of(x), ws.data_ptr(),
                                                  stream),
                  "frame_linear_unfused");
            break;
        }
        case LayerPath::kGemm: {
            TORCH_CHECK(x.scalar_type() == torch::kHalf, "the cuBLAS path takes float16 activations");
            auto ws = workspace(fq::frame_linear_gemm_workspace_bytes(p, rows));
            check(fq::launch_frame_linear_gemm(p, x.data_ptr(), y.data_ptr(), rows, ws.data_ptr(),
                                               at::cuda::getCurrentCUDABlasHandle(), stream),
                  "frame_linear_gemm");
            break;
        }
        case LayerPath::kDense: {
            TORCH_CHECK(x.scalar_type() == torch::kHalf, "the dense path takes float16 activations");
            auto ws = workspace(fq::frame_linear_dense_workspace_bytes(p));
            check(fq::launch_frame_linear_dense(p, x.data_ptr(), y.data_ptr(), rows, ws.data_ptr(),
                                                at::cuda::getCurrentCUDABlasLtHandle(), stream,
                                                static_cast<int>(gemm_choice)),
                  "frame_linear_dense");
            break;
        }
        case LayerPath::kDenseWeights:
            TORCH_CHECK(false, "the dense-weights mode runs through build_dense_weight and dense_weight_linear");
        default: TORCH_CHECK(false, "unknown layer path ", path);
    }
    return y;
}

// Length of cuBLASLt's heuristic list for the dense form's GEMM on x (fp16, rows x in dim).
int64_t dense_gemm_choices(torch::Tensor x, std::vector<torch::Tensor> tables, std::vector<int64_t> ints) {
    TORCH_CHECK(x.scalar_type() == torch::kHalf, "the dense path takes float16 activations");
    auto p = layer_params(tables, ints);
    auto y = layer_output(x, p);
    const int64_t rows = x.numel() / p.in_dim();
    auto ws = torch::empty({static_cast<int64_t>(fq::frame_linear_dense_workspace_bytes(p))},
                           x.options().dtype(torch::kUInt8));
    return fq::frame_linear_dense_gemm_choices(p, x.data_ptr(), y.data_ptr(), rows, ws.data_ptr(),
                                               at::cuda::getCurrentCUDABlasLtHandle());
}

// W^T = (P_out D_hat P_in^T)^T, (in dim, out dim) fp16, as the dense path builds it.
torch::Tensor effective_weight(std::vector<torch::Tensor> tables, std::vector<int64_t> ints, bool by_rows) {
    auto p = layer_params(tables, ints);
    auto opts = tables.at(0).options();
    auto ws = torch::empty({static_cast<int64_t>(fq::effective_weight_workspace_bytes(p))}, opts.dtype(torch::kUInt8));
    auto w_t = torch::empty({p.in_dim(), p.out_dim()}, opts.dtype(torch::kHalf));
    auto stream = c10::cuda::getCurrentCUDAStream();
    __half* built = nullptr;
    check(fq::launch_effective_weight(p, ws.data_ptr(), &built, stream,
                                      by_rows ? fq::WeightBuild::kRows : fq::WeightBuild::kAuto),
          "effective_weight");
    check(cudaMemcpyAsync(w_t.data_ptr(), built, w_t.nbytes(), cudaMemcpyDeviceToDevice, stream),
          "effective_weight copy");
    return w_t;
}

// Dense-at-load mode: the weight buffer (W^T and the fp16 bias, fq::dense_weight_bytes) built once.
torch::Tensor build_dense_weight(std::vector<torch::Tensor> tables, std::vector<int64_t> ints) {
    auto p = layer_params(tables, ints);
    auto opts = tables.at(0).options().dtype(torch::kUInt8);
    auto ws = torch::empty({static_cast<int64_t>(fq::effective_weight_workspace_bytes(p))}, opts);
    auto weight = torch::empty({static_cast<int64_t>(fq::dense_weight_bytes(p))}, opts);
    check(fq::build_dense_weight(p, weight.data_ptr(), ws.data_ptr(), c10::cuda::getCurrentCUDAStream()),
          "build_dense_weight");
    return weight;
}

// y = x W^T + bias on a weight buffer from build_dense_weight: one cuBLASLt GEMM (fp16).
torch::Tensor dense_weight_linear(torch::Tensor x, torch::Tensor weight, std::vector<torch::Tensor> tables,
                                  std::vector<int64_t> ints, int64_t gemm_choice) {
    TORCH_CHECK(x.scalar_type() == torch::kHalf, "the dense-weight mode takes float16 activations");
    auto p = layer_params(tables, ints);
    TORCH_CHECK(weight.numel() == static_cast<int64_t>(fq::dense_weight_bytes(p)), "weight buffer of the wrong size");
    auto y = layer_output(x, p);
    const int64_t rows = x.numel() / p.in_dim();
    auto ws =
        torch::empty({static_cast<int64_t>(fq::dense_weight_gemm_workspace_bytes())}, x.options().dtype(torch::kUInt8));
    check(fq::launch_dense_weight_gemm(p, weight.data_ptr(), x.data_ptr(), y.data_ptr(), rows, ws.data_ptr(),
                                       at::cuda::getCurrentCUDABlasLtHandle(), c10::cuda::getCurrentCUDAStream(),
                                       static_cast<int>(gemm_choice)),
          "dense_weight_linear");
    return y;
}

std::vector<torch::Tensor> frame_tables(int64_t k, int64_t rho, int64_t d) {
    const fq::FrameTables t = fq::make_frame_tables(static_cast<int>(k), static_cast<int>(rho), static_cast<int>(d));
    auto i32 = torch::TensorOptions().dtype(torch::kInt32);
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto gi =
        torch::from_blob(const_cast<int32_t*>(t.gather_index.data()), {(int64_t)t.gather_index.size()}, i32).clone();
    auto gw =
        torch::from_blob(const_cast<double*>(t.gather_weight.data()), {(int64_t)t.gather_weight.size()}, f64).clone();
    auto sb = torch::from_blob(const_cast<int32_t*>(t.synth_bin.data()), {2, t.d_c}, i32).clone();
    auto sw = torch::from_blob(const_cast<double*>(t.synth_weight.data()), {2, t.d_c}, f64).clone();
    auto dft = torch::from_blob(const_cast<double*>(t.dft.data()), {2 * t.k, 2 * t.k}, f64).clone();
    return {gi, gw, sb, sw, dft};
}

std::vector<torch::Tensor> rotation_tables(int64_t dim, int64_t seed) {
    const fq::RotationTables r = fq::make_rotation_tables(static_cast<int>(dim), static_cast<uint64_t>(seed));
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto signs = torch::from_blob(const_cast<double*>(r.signs.data()), {r.dim}, f64).clone();
    auto dct = torch::from_blob(const_cast<double*>(r.dct.data()), {r.odd, r.odd}, f64).clone();
    return {signs, dct};
}

}  // namespace

#ifdef FQ_TRACE
// kernel: "decode" (frame_linear.cu's stamps), "split" or "gemv".
torch::Tensor read_trace(const std::string& kernel) {
    auto out = torch::zeros({64}, torch::TensorOptions().dtype(torch::kInt64));
    auto* host = reinterpret_cast<unsigned long long*>(out.data_ptr<int64_t>());
    check(kernel == "split"  ? fq::read_trace_split(host, 64)
          : kernel == "gemv" ? fq::read_trace_gemv(host, 64)
                             : fq::read_trace(host, 64),
          "read_trace");
    return out;
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef FQ_TRACE
    m.def("read_trace", &read_trace, pybind11::arg("kernel") = "decode");
#endif
    m.def("rotation", &rotation);
    m.def("frame", &frame);
    m.def("packed_matmul", &packed_matmul);
    m.def("dequantize", &dequantize);
    m.def("frame_linear", &frame_linear, pybind11::arg("x"), pybind11::arg("tables"), pybind11::arg("ints"),
          pybind11::arg("path"), pybind11::arg("barrier"), pybind11::arg("gemm_choice") = 0);
    m.def("dense_gemm_choices", &dense_gemm_choices);
    m.def("effective_weight", &effective_weight);
    m.def("build_dense_weight", &build_dense_weight);
    m.def("dense_weight_linear", &dense_weight_linear);
    m.def("dense_min_rows", &fq::dense_min_rows);
    m.def("layer_paths", &layer_paths);
    // The automatic layer path (fq::auto_layer_path; this extension links cuBLAS) as a PATHS value.
    m.def("auto_path", [](int64_t rows, bool fp16, int64_t n, int64_t m, int64_t k_out) {
        const auto dtype = fp16 ? fq::DType::kFloat16 : fq::DType::kFloat32;
        return static_cast<int>(fq::auto_layer_path(rows, dtype, n, m, k_out, true));
    });
    m.def("frame_tables", &frame_tables);
    m.def("rotation_tables", &rotation_tables);
    m.attr("fused_max_rows") = fq::kFusedMaxRows;
    m.attr("decode_max_rows") = fq::kDecodeRows;
}
