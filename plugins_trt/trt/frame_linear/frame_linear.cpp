// FQFrameLinear: the whole FrameQuant layer in one node, x, packed codes, scale, zero, bias (fp32)
// -> y (README.md beside this file).
//
// Its path follows the harness' automatic choice (fq::auto_layer_path): the single-launch layer for
// one row, three launches otherwise, and, built with cuBLAS, for fp16 the gemm path from
// kPackedGemmMinRows rows and the dense form from dense_min_rows rows. The tables, the
// single-launch layer's barrier word and the cuBLAS / cuBLASLt handles are made in onShapeChange
// (never inside a captured enqueue); a clone shares the tables and makes its own barrier and
// handles. Weights at run time, from the environment variable FQ_TRT_WEIGHTS when the plugin is
// created (the engine file is the same either way): "packed" (default; the paths above read the
// packed codes at every call) or "dense" (fp16 layers: W_hat built in fp16 by the first enqueue into
// a buffer the plugin keeps, then one cuBLASLt GEMM per call; fp32 layers keep the packed paths).
#include <algorithm>
#include <cstdlib>

#include "../plugin_base.h"
#include "recipe.h"

#ifdef FQ_WITH_CUBLAS
#include <cublasLt.h>
#include <cublas_v2.h>
#endif

namespace fq {
namespace trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

// FQ_TRT_WEIGHTS: "packed" (or unset) or "dense"; anything else is refused when the plugin is made.
bool dense_weights_from_env() {
    char const* mode = std::getenv("FQ_TRT_WEIGHTS");
    if (mode == nullptr || std::string(mode).empty() || std::string(mode) == "packed") return false;
    if (std::string(mode) == "dense") return true;
    throw std::invalid_argument(std::string("FQ_TRT_WEIGHTS must be packed or dense, not ") + mode);
}

class FQFrameLinearPlugin : public FQPlugin<FQFrameLinearPlugin> {
public:
    static constexpr char const* kName = "FQFrameLinear";
    static constexpr FieldSpec kFields[] = {
        {"in_dim"},      {"out_dim"},       {"rotate_in"},  {"seed_in"},
        {"frame_in_k"},  {"frame_in_rho"},  {"rotate_out"}, {"seed_out"},
        {"frame_out_k"}, {"frame_out_rho"}, {"bits"},       {"layout_version", packed::kLayoutVersion}};
    static constexpr int kInputs = 5;

    explicit FQFrameLinearPlugin(std::vector<int32_t> values);
    FQFrameLinearPlugin(FQFrameLinearPlugin const& other)
        : FQPlugin(other),
          dense_at_opt_(other.dense_at_opt_),
          dense_weights_(other.dense_weights_),
          tactic_(other.tactic_),
          params_(other.params_) {}  // barrier, handles and the dense mode's weight: the clone makes its own
    FQFrameLinearPlugin& operator=(FQFrameLinearPlugin const&) = delete;
    ~FQFrameLinearPlugin() override;

    int64_t output_width() const { return field("out_dim"); }
    bool format_ok(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs) const {
        if (pos == 4)
            return inOut[pos].desc.format == TensorFormat::kLINEAR && inOut[pos].desc.type == DataType::kFLOAT;
        return packed_input_ok(pos, inOut, nbInputs);  // x, codes, scale, zero; y follows x
    }
    void on_shape_change(PluginTensorDesc const* in, int32_t nbInputs) {
        if (nbInputs != 5) throw std::invalid_argument("expects 5 inputs (x, packed_codes, scale, zero, bias)");
        prepare(in[0].type, leading_rows(in[0].dims));
    }
    void run(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void* workspace,
             cudaStream_t stream);

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    // Tactics: where the profile's opt shape takes the dense form, tactic t (1..kDenseGemmChoices)
    // runs its GEMM with entry t - 1 of cuBLASLt's heuristic list, and TensorRT times them there
    // (0, the default: the list's first entry). Other paths ignore the tactic.
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                            int32_t nbOutputs) noexcept override;
    int32_t getNbTactics() noexcept override { return dense_at_opt_ ? kDenseGemmChoices : 0; }
    int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override;
    int32_t setTactic(int32_t tactic) noexcept override;
    // Layers that differ only in their rotation seeds run the same kernels for the same time, so
    // the builder may time one and reuse it (TensorRT adds the I/O shapes and formats itself).
    char const* getTimingCacheID() noexcept override;

private:
    using Path = LayerPath;
    Path path_for(DataType type, int64_t rows) const;
    FrameLinearParams shape_params() const;  // sizes only, no table pointers
    size_t workspace_for(DataType type, int64_t rows) const;
    void prepare(DataType type, int64_t rows);  // what path_for(type, rows) needs

    bool dense_at_opt_ = false;   // configurePlugin: the profile's opt row count takes the dense form
    bool dense_weights_ = false;  // FQ_TRT_WEIGHTS=dense
    void* weight_ = nullptr;      // dense mode: W^T and the fp16 bias (dense_weight_bytes)
    bool weight_built_ = false;
    int32_t tactic_ = 0;
    std::string timing_id_;
    FrameLinearParams params_{};  // with the table pointers once the tables are uploaded
    unsigned int* barrier_ = nullptr;
    void* cublas_ = nullptr;    // cublasHandle_t
    void* cublaslt_ = nullptr;  // cublasLtHandle_t
};

FQFrameLinearPlugin::FQFrameLinearPlugin(std::vector<int32_t> values) : FQPlugin(std::move(values)) {
    check_packed_fields(field("bits"), field("layout_version"));
    for (char const* side : {"in", "out"}) {
        const std::string s(side);
        const int dim = field((s + "_dim").c_str()), k = field(("frame_" + s + "_k").c_str());
        const int rho = field(("frame_" + s + "_rho").c_str()), rotate = field(("rotate_" + s).c_str());
        if (dim < 1) throw std::invalid_argument(s + "_dim must be positive");
        if (rotate != 0 && rotate != 1) throw std::invalid_argument("rotate_" + s + " must be 0 or 1");
        if ((k == 0) != (rho == 0))
            throw std::invalid_argument("frame_" + s + "_k and _rho must both be 0 or both positive");
        if (k != 0 && !tff_exists(k, rho, dim))
            throw std::invalid_argument("no tight fusion frame for the " + s + " side's (k, rho, dim)");
        if (k > kMaxFrameBlock) throw std::invalid_argument("frame k above the kernels' limit of 64");
    }
    const FrameLinearParams p = shape_params();
    if (p.matmul.in_features % 2) throw std::invalid_argument("K_in must be even (the packed matmul reads pairs)");
    dense_weights_ = dense_weights_from_env();
}

FQFrameLinearPlugin::~FQFrameLinearPlugin() {
    if (barrier_) cudaFree(barrier_);
    if (weight_) cudaFree(weight_);
#ifdef FQ_WITH_CUBLAS
    if (cublas_) cublasDestroy(static_cast<cublasHandle_t>(cublas_));
    if (cublaslt_) cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt_));
#endif
}

FrameLinearParams FQFrameLinearPlugin::shape_params() const {
    FrameLinearParams p;
    auto side = [this](char const* s, bool& has_rotation, RotationParams& r, bool& has_frame, FrameParams& f) {
        const std::string n(s);
        const int dim = field((n + "_dim").c_str()), k = field(("frame_" + n + "_k").c_str());
        has_rotation = field(("rotate_" + n).c_str()) == 1;
        if (has_rotation) r = rotation_shape(dim);
        has_frame = k != 0;
        if (has_frame) f = frame_shape(k, field(("frame_" + n + "_rho").c_str()), dim);
        return has_frame ? f.num_vectors() : dim;
    };
    p.matmul.in_features = side("in", p.has_rotation_in, p.rotation_in, p.has_frame_in, p.frame_in);
    p.matmul.out_features = side("out", p.has_rotation_out, p.rotation_out, p.has_frame_out, p.frame_out);
    p.matmul.bits = field("bits");
    p.matmul.words_per_row = packed::words_per_row(p.matmul.in_features, p.matmul.bits);
    return p;
}

FQFrameLinearPlugin::Path FQFrameLinearPlugin::path_for(DataType type, int64_t rows) const {
#ifdef FQ_WITH_CUBLAS
    constexpr bool kWithCublas = true;
#else
    constexpr bool kWithCublas = false;
#endif
    // Sizes from the prepared params (enqueue runs after onShapeChange), else from the fields: no
    // field lookups on every enqueue.
    const FrameLinearParams p = params_.matmul.in_features != 0 ? params_ : shape_params();
    if (dense_weights_ && kWithCublas && type == DataType::kHALF) return Path::kDenseWeights;
    return auto_layer_path(rows, type == DataType::kHALF ? DType::kFloat16 : DType::kFloat32, p.in_dim(), p.out_dim(),
                           p.matmul.out_features, kWithCublas);
}

size_t FQFrameLinearPlugin::workspace_for(DataType type, int64_t rows) const {
    const FrameLinearParams p = shape_params();
    size_t bytes = narrowed_bytes(p.matmul.out_features);
    switch (path_for(type, rows)) {
        case Path::kFused:
        case Path::kThreeLaunches: return bytes + frame_linear_workspace_bytes(p, rows);
#ifdef FQ_WITH_CUBLAS
        case Path::kGemm: return bytes + frame_linear_gemm_workspace_bytes(p, rows);
        case Path::kDense: return bytes + frame_linear_dense_workspace_bytes(p);
        case Path::kDenseWeights:
            return bytes + std::max(effective_weight_workspace_bytes(p), dense_weight_gemm_workspace_bytes());
#endif
        default: break;  // paths that auto_layer_path does not take
    }
    return bytes;
}

void FQFrameLinearPlugin::prepare(DataType type, int64_t rows) {
    if (!tables_ || params_.matmul.in_features == 0) {
        FrameLinearParams p = shape_params();
        auto tables = std::make_shared<DeviceTables>();
        if (p.has_rotation_in) p.rotation_in = upload_rotation(*tables, field("in_dim"), field("seed_in"));
        if (p.has_frame_in)
            p.frame_in = upload_frame(*tables, field("frame_in_k"), field("frame_in_rho"), field("in_dim"));
        if (p.has_frame_out)
            p.frame_out = upload_frame(*tables, field("frame_out_k"), field("frame_out_rho"), field("out_dim"));
        if (p.has_rotation_out) p.rotation_out = upload_rotation(*tables, field("out_dim"), field("seed_out"));
        params_ = p;
        tables_ = tables;
    }
    const Path path = path_for(type, rows);
    if (path == Path::kFused && !barrier_) {
        void* word = nullptr;
        if (cudaMalloc(&word, sizeof(unsigned int)) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
        barrier_ = static_cast<unsigned int*>(word);
        if (cudaMemset(barrier_, 0, sizeof(unsigned int)) != cudaSuccess) throw std::runtime_error("cudaMemset failed");
    }
#ifdef FQ_WITH_CUBLAS
    if (path == Path::kGemm && !cublas_) {
        cublasHandle_t handle = nullptr;
        if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
        cublas_ = handle;
    }
    if (path == Path::kDenseWeights && !weight_) {
        if (cudaMalloc(&weight_, dense_weight_bytes(params_)) != cudaSuccess)
            throw std::runtime_error("cudaMalloc failed");
        weight_built_ = false;
    }
    if ((path == Path::kDense || path == Path::kDenseWeights) && !cublaslt_) {
        cublasLtHandle_t handle = nullptr;
        if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasLtCreate failed");
        cublaslt_ = handle;
    }
#endif
}

int32_t FQFrameLinearPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                             DynamicPluginTensorDesc const*, int32_t) noexcept {
    if (nbInputs < 1) return 1;
    // The builder times tactics at the profile's opt shape: tactics only where that shape takes
    // the dense form (the profile's maximum where no opt shape is given).
    const nvinfer1::Dims& tuned = in[0].opt.nbDims == in[0].max.nbDims && in[0].opt.nbDims > 0 ? in[0].opt : in[0].max;
    const Path tuned_path = path_for(in[0].desc.type, std::max<int64_t>(1, leading_rows(tuned)));
    dense_at_opt_ = tuned_path == Path::kDense || tuned_path == Path::kDenseWeights;
    return 0;
}

int32_t FQFrameLinearPlugin::getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept {
    if (tactics == nullptr || nbTactics > getNbTactics()) return 1;
    for (int32_t t = 0; t < nbTactics; ++t) tactics[t] = t + 1;
    return 0;
}

int32_t FQFrameLinearPlugin::setTactic(int32_t tactic) noexcept {
    if (tactic < 0 || tactic > kDenseGemmChoices) return 1;
    tactic_ = tactic;
    return 0;
}

char const* FQFrameLinearPlugin::getTimingCacheID() noexcept {
    try {
        std::string id;
        for (size_t i = 0; i < field_names_.size() && i < values_.size(); ++i)
            if (field_names_[i].rfind("seed", 0) != 0) id += field_names_[i] + "=" + std::to_string(values_[i]) + ";";
        if (dense_weights_) id += "weights=dense;";
        timing_id_ = id;
        return timing_id_.c_str();
    } catch (std::exception const&) {
        return nullptr;  // no timing cache for this plugin
    }
}

size_t FQFrameLinearPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                             DynamicPluginTensorDesc const*, int32_t) const noexcept {
    if (nbInputs < 1) return 0;
    try {
        // Each path's workspace grows with the rows and the path changes with them: the largest
        // is at the profile's maximum or at the last row count of a lower path.
        const DataType type = inputs[0].desc.type;
        const int64_t most = std::max<int64_t>(1, leading_rows(inputs[0].max));
        const FrameLinearParams p = shape_params();
        const int64_t dense = dense_min_rows(p.in_dim(), p.out_dim(), p.matmul.out_features);
        size_t bytes = 0;
        for (int64_t rows :
             {most, std::min<int64_t>(most, kPackedGemmMinRows - 1), std::min<int64_t>(most, dense - 1), int64_t{1}})
            if (rows >= 1) bytes = std::max(bytes, workspace_for(type, rows));
        return bytes;
    } catch (std::exception const& e) {
        log_error(std::string("FQFrameLinear: ") + e.what());
        return 0;
    }
}

void FQFrameLinearPlugin::run(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
                              void* workspace, cudaStream_t stream) {
    if (!tables_) throw std::runtime_error("tables not uploaded (onShapeChange did not run)");
    FrameLinearParams p = params_;
    bind_packed_inputs(p.matmul, inputDesc, inputs, workspace, stream);
    if (inputDesc[4].dims.nbDims != 1 || inputDesc[4].dims.d[0] != p.out_dim())
        throw std::invalid_argument("bias must have shape (out_dim,)");
    p.bias = static_cast<float const*>(inputs[4]);
    const int64_t k_out = p.matmul.out_features;
    void* ws = static_cast<char*>(workspace) + narrowed_bytes(k_out);
    const int64_t rows = leading_rows(inputDesc[0].dims);
    const DType dtype = dtype_of(inputDesc[0].type);
    cudaError_t err = cudaSuccess;
    switch (path_for(inputDesc[0].type, rows)) {
        case Path::kFused:
            if (!barrier_) throw std::runtime_error("no barrier word (onShapeChange did not run)");
            err = launch_frame_linear_fused(p, inputs[0], outputs[0], rows, dtype, ws, barrier_, stream);
            break;
        case Path::kThreeLaunches:
            err = launch_frame_linear_unfused(p, inputs[0], outputs[0], rows, dtype, ws, stream);
            break;
#ifdef FQ_WITH_CUBLAS
        case Path::kGemm:
            if (!cublas_) throw std::runtime_error("no cuBLAS handle (onShapeChange did not run)");
            err = launch_frame_linear_gemm(p, inputs[0], outputs[0], rows, ws, cublas_, stream);
            break;
        case Path::kDense:
            if (!cublaslt_) throw std::runtime_error("no cuBLASLt handle (onShapeChange did not run)");
            err = launch_frame_linear_dense(p, inputs[0], outputs[0], rows, ws, cublaslt_, stream,
                                            tactic_ > 0 ? tactic_ - 1 : 0);
            break;
        case Path::kDenseWeights:
            if (!cublaslt_ || !weight_) throw std::runtime_error("no dense weight buffer (onShapeChange did not run)");
            if (!weight_built_) {  // once: the codes are constant inputs of the engine
                err = build_dense_weight(p, weight_, ws, stream);
                weight_built_ = err == cudaSuccess;
            }
            if (err == cudaSuccess)
                err = launch_dense_weight_gemm(p, weight_, inputs[0], outputs[0], rows, ws, cublaslt_, stream,
                                               tactic_ > 0 ? tactic_ - 1 : 0);
            break;
#endif
        default: throw std::logic_error("a path this build does not take");
    }
    check(err);
}

}  // namespace

nvinfer1::IPluginCreatorInterface* frame_linear_creator() {
    static FQPluginCreator<FQFrameLinearPlugin> creator;
    return &creator;
}

}  // namespace trt
}  // namespace fq
