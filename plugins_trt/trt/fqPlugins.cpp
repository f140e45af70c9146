// IPluginV3 glue of the FrameQuant ops; see fqPlugins.h and README.md.
#include "fqPlugins.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "recipe.h"

#ifdef FQ_WITH_CUBLAS
#include <cublasLt.h>
#include <cublas_v2.h>
#endif

namespace fq {
namespace trt {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace {
nvinfer1::ILoggerFinder* g_logger_finder = nullptr;  // set by TensorRT through setLoggerFinder

}  // namespace

void g_logger_finder_set(nvinfer1::ILoggerFinder* finder) { g_logger_finder = finder; }

namespace {
void log_error(std::string const& message) {
    nvinfer1::ILogger* logger = g_logger_finder ? g_logger_finder->findLogger() : nullptr;
    if (logger) logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
}

// clone() of every plugin: a copy, or nullptr (logged) where the copy throws.
template <typename Plugin> nvinfer1::IPluginV3* copy_of(Plugin const& plugin) noexcept {
    try {
        return new Plugin(plugin);
    } catch (std::exception const& e) {
        log_error(e.what());
        return nullptr;
    }
}
}  // namespace

DeviceTables::~DeviceTables() {
    for (void* p : buffers) cudaFree(p);
}

template <typename T> T* DeviceTables::upload(std::vector<T> const& host) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(1, host.size() * sizeof(T))) != cudaSuccess)
        throw std::runtime_error("cudaMalloc failed for plugin tables");
    buffers.push_back(p);
    if (!host.empty() && cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess)
        throw std::runtime_error("cudaMemcpy failed for plugin tables");
    return static_cast<T*>(p);
}

namespace {
// The device tables of a rotation or frame recipe (csrc/recipe.h), appended to `tables`; the
// returned parameters point at them.
RotationParams upload_rotation(DeviceTables& tables, int dim, int32_t seed) {
    const RotationTables host = make_rotation_tables(dim, static_cast<uint32_t>(seed));
    RotationParams p;
    p.dim = host.dim;
    p.power = host.power;
    p.odd = host.odd;
    p.signs = tables.upload(std::vector<float>(host.signs.begin(), host.signs.end()));
    p.dct = tables.upload(std::vector<float>(host.dct.begin(), host.dct.end()));
    return p;
}

FrameParams upload_frame(DeviceTables& tables, int k, int rho, int d) {
    const FrameTables host = make_frame_tables(k, rho, d);
    FrameParams p;
    p.k = k;
    p.rho_c = rho / 2;
    p.d_c = d / 2;
    p.kp = (2 * k + 15) / 16 * 16;
    // The realified DFT and its transpose, zero-padded to kp x kp (tensor-core k-steps).
    std::vector<__half> dft(static_cast<size_t>(p.kp) * p.kp, __float2half(0.f)), dft_t(dft);
    for (int r = 0; r < 2 * k; ++r)
        for (int c = 0; c < 2 * k; ++c) {
            const float v = static_cast<float>(host.dft[r * 2 * k + c]);
            dft[r * p.kp + c] = __float2half(v);
            dft_t[c * p.kp + r] = __float2half(v);
        }
    p.gather_index = tables.upload(host.gather_index);
    p.gather_weight = tables.upload(std::vector<float>(host.gather_weight.begin(), host.gather_weight.end()));
    p.synth_bin = tables.upload(host.synth_bin);
    p.synth_weight = tables.upload(std::vector<float>(host.synth_weight.begin(), host.synth_weight.end()));
    p.dft = tables.upload(dft);
    p.dft_t = tables.upload(dft_t);
    return p;
}
}  // namespace

// ---- FQPluginBase ---------------------------------------------------------------------------

FQPluginBase::FQPluginBase(std::string name, std::vector<std::string> field_names, std::vector<int32_t> values)
    : name_(std::move(name)), field_names_(std::move(field_names)), values_(std::move(values)) {}

FQPluginBase::FQPluginBase(FQPluginBase const& other)
    : nvinfer1::IPluginV3(),
      nvinfer1::IPluginV3OneCore(),
      nvinfer1::IPluginV3OneBuild(),
      nvinfer1::IPluginV3OneRuntime(),
      name_(other.name_),
      field_names_(other.field_names_),
      values_(other.values_),
      tables_(other.tables_) {}  // serial_fields_ are rebuilt on demand: they point into *this

nvinfer1::IPluginCapability* FQPluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
    switch (type) {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

int32_t FQPluginBase::field(char const* name) const {
    for (size_t i = 0; i < field_names_.size(); ++i)
        if (field_names_[i] == name) return values_[i];
    throw std::logic_error(std::string("unknown plugin field ") + name);
}

int32_t FQPluginBase::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                         int32_t nbInputs) const noexcept {
    if (nbOutputs != 1 || nbInputs < 1) return 1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t FQPluginBase::configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                                      int32_t) noexcept {
    return 0;
}

int32_t FQPluginBase::onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) noexcept {
    return 0;
}

nvinfer1::IPluginV3* FQPluginBase::attachToContext(nvinfer1::IPluginResourceContext*) noexcept {
    return clone();
}

nvinfer1::PluginFieldCollection const* FQPluginBase::getFieldsToSerialize() noexcept {
    serial_fields_.clear();
    for (size_t i = 0; i < field_names_.size(); ++i)
        serial_fields_.emplace_back(field_names_[i].c_str(), &values_[i], PluginFieldType::kINT32, 1);
    serial_collection_.nbFields = static_cast<int32_t>(serial_fields_.size());
    serial_collection_.fields = serial_fields_.data();
    return &serial_collection_;
}

bool FQPluginBase::activation_format_ok(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs) const {
    auto const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return desc.type == DataType::kHALF || desc.type == DataType::kFLOAT;
    if (pos == nbInputs) return desc.type == inOut[0].desc.type;  // the output follows x
    return false;
}

int64_t FQPluginBase::leading_rows(nvinfer1::Dims const& dims) {
    int64_t rows = 1;
    for (int32_t i = 0; i + 1 < dims.nbDims; ++i) rows *= dims.d[i];
    return rows;
}

int32_t FQPluginBase::copy_with_last(DimsExprs const& in, DimsExprs* out, int64_t last,
                                     nvinfer1::IExprBuilder& builder) {
    if (in.nbDims < 1) return 1;
    out->nbDims = in.nbDims;
    for (int32_t i = 0; i + 1 < in.nbDims; ++i) out->d[i] = in.d[i];
    out->d[in.nbDims - 1] = builder.constant(last);
    return 0;
}

// ---- FQHadamardRotation ---------------------------------------------------------------------

FQHadamardRotationPlugin::FQHadamardRotationPlugin(std::vector<int32_t> values)
    : FQPluginBase("FQHadamardRotation", {"dim", "seed", "transpose"}, std::move(values)) {
    if (field("dim") < 1) throw std::invalid_argument("FQHadamardRotation: dim must be positive");
    if (field("transpose") != 0 && field("transpose") != 1)
        throw std::invalid_argument("FQHadamardRotation: transpose must be 0 or 1");
}

nvinfer1::IPluginV3* FQHadamardRotationPlugin::clone() noexcept { return copy_of(*this); }

int32_t FQHadamardRotationPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                                  DimsExprs* outputs, int32_t nbOutputs,
                                                  nvinfer1::IExprBuilder& builder) noexcept {
    if (nbInputs != 1 || nbOutputs != 1) return 1;
    return copy_with_last(inputs[0], outputs, field("dim"), builder);
}

bool FQHadamardRotationPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                         int32_t nbInputs, int32_t nbOutputs) noexcept {
    return nbInputs == 1 && nbOutputs == 1 && activation_format_ok(pos, inOut, nbInputs);
}

int32_t FQHadamardRotationPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
                                          void const* const* inputs, void* const* outputs, void*,
                                          cudaStream_t stream) noexcept {
    try {
        if (!tables_) {
            auto tables = std::make_shared<DeviceTables>();
            params_ = upload_rotation(*tables, field("dim"), field("seed"));
            tables_ = tables;
        }
        if (params_.signs == nullptr) {  // a clone sharing uploaded tables: recover the pointers
            params_.dim = field("dim");
            params_.power = params_.dim & -params_.dim;
            params_.odd = params_.dim / params_.power;
            params_.signs = static_cast<float const*>(tables_->buffers.at(0));
            params_.dct = static_cast<float const*>(tables_->buffers.at(1));
        }
        const cudaError_t err = launch_rotation(params_, inputs[0], outputs[0], leading_rows(inputDesc[0].dims),
                                                dtype_of(inputDesc[0].type), field("transpose") == 1, stream);
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
        return 0;
    } catch (std::exception const& e) {
        log_error(std::string("FQHadamardRotation: ") + e.what());
        return 1;
    }
}

// ---- FQFrameTransform -----------------------------------------------------------------------

FQFrameTransformPlugin::FQFrameTransformPlugin(std::vector<int32_t> values)
    : FQPluginBase("FQFrameTransform", {"k", "rho", "d", "transpose"}, std::move(values)) {
    if (!tff_exists(field("k"), field("rho"), field("d")))
        throw std::invalid_argument("FQFrameTransform: no tight fusion frame for (k, rho, d)");
    if (field("k") > kMaxFrameBlock)
        throw std::invalid_argument("FQFrameTransform: k above the kernels' limit of 64");
}

nvinfer1::IPluginV3* FQFrameTransformPlugin::clone() noexcept { return copy_of(*this); }

int32_t FQFrameTransformPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                                DimsExprs* outputs, int32_t nbOutputs,
                                                nvinfer1::IExprBuilder& builder) noexcept {
    if (nbInputs != 1 || nbOutputs != 1) return 1;
    const int64_t K = static_cast<int64_t>(field("k")) * field("rho");
    return copy_with_last(inputs[0], outputs, field("transpose") == 1 ? K : field("d"), builder);
}

bool FQFrameTransformPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                       int32_t nbInputs, int32_t nbOutputs) noexcept {
    return nbInputs == 1 && nbOutputs == 1 && activation_format_ok(pos, inOut, nbInputs);
}

int32_t FQFrameTransformPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
                                        void const* const* inputs, void* const* outputs, void*,
                                        cudaStream_t stream) noexcept {
    try {
        if (!tables_ || params_.dft == nullptr) {  // a clone copies both with the plugin
            auto tables = std::make_shared<DeviceTables>();
            params_ = upload_frame(*tables, field("k"), field("rho"), field("d"));
            tables_ = tables;
        }
        const cudaError_t err = launch_frame(params_, inputs[0], outputs[0], leading_rows(inputDesc[0].dims),
                                             dtype_of(inputDesc[0].type), field("transpose") == 1, stream);
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
        return 0;
    } catch (std::exception const& e) {
        log_error(std::string("FQFrameTransform: ") + e.what());
        return 1;
    }
}

namespace {
// ---- what FQPackedMatMul and FQFrameLinear share: x, packed codes, scale, zero ----------------

// Bytes of the fp16 copies of fp32 scale/zero, rounded so that what follows is 256-byte aligned.
size_t narrowed_bytes(int64_t out_features) {
    return align256(2 * sizeof(__half) * static_cast<size_t>(out_features));
}

// Formats of inputs 0..3 (x, packed codes, scale, zero) and of the output, which follows x.
bool packed_input_ok(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs) {
    auto const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == nbInputs) return desc.type == inOut[0].desc.type;                         // output
    switch (pos) {
        case 0: return desc.type == DataType::kHALF || desc.type == DataType::kFLOAT;  // x
        case 1: return desc.type == DataType::kINT32;                                   // packed codes
        case 2: return desc.type == DataType::kHALF || desc.type == DataType::kFLOAT;  // scale
        case 3: return desc.type == inOut[2].desc.type;                                 // zero
        default: return false;
    }
}

// Codes shape check, codes pointer, and scale/zero into p: fp16 inputs as they are, fp32 ones
// (the plugin-form ONNX casts its fp16 initializers) narrowed into the first
// narrowed_bytes(out_features) of the workspace.
void bind_packed_inputs(PackedMatMulParams& p, PluginTensorDesc const* inputDesc, void const* const* inputs,
                        void* workspace, cudaStream_t stream) {
    auto const& codes = inputDesc[1].dims;
    if (codes.nbDims != 2 || codes.d[0] != p.out_features || codes.d[1] != p.words_per_row)
        throw std::invalid_argument("packed_codes must have shape (out_features, ceil(in_features/32)*bits)");
    p.codes = static_cast<uint32_t const*>(inputs[1]);
    if (inputDesc[2].type == DataType::kFLOAT) {
        __half* narrowed = static_cast<__half*>(workspace);
        cudaError_t err = launch_half_from_float(static_cast<float const*>(inputs[2]), narrowed, p.out_features, stream);
        if (err == cudaSuccess)
            err = launch_half_from_float(static_cast<float const*>(inputs[3]), narrowed + p.out_features, p.out_features,
                                         stream);
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
        p.scale = narrowed;
        p.zero = narrowed + p.out_features;
    } else {
        p.scale = static_cast<__half const*>(inputs[2]);
        p.zero = static_cast<__half const*>(inputs[3]);
    }
}
}  // namespace

// ---- FQPackedMatMul -------------------------------------------------------------------------

FQPackedMatMulPlugin::FQPackedMatMulPlugin(std::vector<int32_t> values)
    : FQPluginBase("FQPackedMatMul", {"bits", "in_features", "out_features", "layout_version"}, std::move(values)) {
    const int bits = field("bits");
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
        throw std::invalid_argument("FQPackedMatMul: bits must be 2, 3, 4 or 8");
    if (field("layout_version") != 1)
        throw std::invalid_argument("FQPackedMatMul: only packing layout version 1 is supported");
    if (field("in_features") < 2 || field("in_features") % 2 || field("out_features") < 1)
        throw std::invalid_argument("FQPackedMatMul: in_features must be even and positive, out_features positive");
}

FQPackedMatMulPlugin::~FQPackedMatMulPlugin() {
#ifdef FQ_WITH_CUBLAS
    if (cublas_) cublasDestroy(static_cast<cublasHandle_t>(cublas_));
#endif
}

bool FQPackedMatMulPlugin::use_gemm(DataType type, int64_t rows) {
#ifdef FQ_WITH_CUBLAS
    return type == DataType::kHALF && rows >= kPackedGemmMinRows;
#else
    (void)type;
    (void)rows;
    return false;
#endif
}

PackedMatMulParams FQPackedMatMulPlugin::shape_params() const {
    PackedMatMulParams p;
    p.bits = field("bits");
    p.in_features = field("in_features");
    p.out_features = field("out_features");
    p.words_per_row = (p.in_features + 31) / 32 * p.bits;
    return p;
}

int32_t FQPackedMatMulPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                                            int32_t) noexcept {
#ifdef FQ_WITH_CUBLAS
    if (nbInputs >= 1 && !cublas_ && use_gemm(in[0].type, leading_rows(in[0].dims))) {
        cublasHandle_t handle = nullptr;
        if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
            log_error("FQPackedMatMul: cublasCreate failed");
            return 1;
        }
        cublas_ = handle;
    }
#else
    (void)in;
    (void)nbInputs;
#endif
    return 0;
}

nvinfer1::IPluginV3* FQPackedMatMulPlugin::clone() noexcept { return copy_of(*this); }

int32_t FQPackedMatMulPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                              DimsExprs* outputs, int32_t nbOutputs,
                                              nvinfer1::IExprBuilder& builder) noexcept {
    if (nbInputs != 4 || nbOutputs != 1) return 1;
    return copy_with_last(inputs[0], outputs, field("out_features"), builder);
}

bool FQPackedMatMulPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                     int32_t nbInputs, int32_t nbOutputs) noexcept {
    return nbInputs == 4 && nbOutputs == 1 && packed_input_ok(pos, inOut, nbInputs);
}

size_t FQPackedMatMulPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                              DynamicPluginTensorDesc const*, int32_t) const noexcept {
    size_t bytes = narrowed_bytes(field("out_features"));
    if (nbInputs >= 1 && use_gemm(inputs[0].desc.type, leading_rows(inputs[0].max)))
        bytes += packed_matmul_gemm_workspace_bytes(shape_params(), leading_rows(inputs[0].max));
    return bytes;
}

int32_t FQPackedMatMulPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
                                      void const* const* inputs, void* const* outputs, void* workspace,
                                      cudaStream_t stream) noexcept {
    try {
        PackedMatMulParams p = shape_params();
        bind_packed_inputs(p, inputDesc, inputs, workspace, stream);
        const int64_t rows = leading_rows(inputDesc[0].dims);
        cudaError_t err;
        if (use_gemm(inputDesc[0].type, rows)) {
            if (!cublas_) throw std::runtime_error("no cuBLAS handle (onShapeChange did not run)");
            err = launch_packed_matmul_gemm(p, inputs[0], outputs[0], rows,
                                            static_cast<char*>(workspace) + narrowed_bytes(p.out_features), cublas_,
                                            stream);
        } else {
            err = launch_packed_matmul(p, inputs[0], outputs[0], rows, dtype_of(inputDesc[0].type), stream);
        }
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
        return 0;
    } catch (std::exception const& e) {
        log_error(std::string("FQPackedMatMul: ") + e.what());
        return 1;
    }
}

// ---- FQFrameLinear --------------------------------------------------------------------------

namespace {
// FQ_TRT_WEIGHTS: "packed" (or unset) or "dense"; anything else is refused when the plugin is made.
bool dense_weights_from_env() {
    char const* mode = std::getenv("FQ_TRT_WEIGHTS");
    if (mode == nullptr || std::string(mode).empty() || std::string(mode) == "packed") return false;
    if (std::string(mode) == "dense") return true;
    throw std::invalid_argument(std::string("FQ_TRT_WEIGHTS must be packed or dense, not ") + mode);
}

char const* const kLayerFields[] = {"in_dim",   "out_dim",     "rotate_in",     "seed_in",
                                    "frame_in_k", "frame_in_rho", "rotate_out",  "seed_out",
                                    "frame_out_k", "frame_out_rho", "bits",      "layout_version"};
}  // namespace

FQFrameLinearPlugin::FQFrameLinearPlugin(std::vector<int32_t> values)
    : FQPluginBase("FQFrameLinear", std::vector<std::string>(std::begin(kLayerFields), std::end(kLayerFields)),
                   std::move(values)) {
    const int bits = field("bits");
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
        throw std::invalid_argument("bits must be 2, 3, 4 or 8");
    if (field("layout_version") != 1)
        throw std::invalid_argument("only packing layout version 1 is supported");
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
    if (p.matmul.in_features % 2)
        throw std::invalid_argument("K_in must be even (the packed matmul reads pairs)");
    dense_weights_ = dense_weights_from_env();
}

FQFrameLinearPlugin::FQFrameLinearPlugin(FQFrameLinearPlugin const& other)
    : FQPluginBase(other), dense_at_opt_(other.dense_at_opt_), dense_weights_(other.dense_weights_),
      tactic_(other.tactic_), params_(other.params_) {
}  // barrier, handles and the dense mode's weight: the clone makes its own

FQFrameLinearPlugin::~FQFrameLinearPlugin() {
    if (barrier_) cudaFree(barrier_);
    if (weight_) cudaFree(weight_);
#ifdef FQ_WITH_CUBLAS
    if (cublas_) cublasDestroy(static_cast<cublasHandle_t>(cublas_));
    if (cublaslt_) cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt_));
#endif
}

nvinfer1::IPluginV3* FQFrameLinearPlugin::clone() noexcept { return copy_of(*this); }

FrameLinearParams FQFrameLinearPlugin::shape_params() const {
    FrameLinearParams p;
    auto side = [this](char const* s, bool& has_rotation, RotationParams& r, bool& has_frame, FrameParams& f) {
        const std::string n(s);
        const int dim = field((n + "_dim").c_str()), k = field(("frame_" + n + "_k").c_str());
        has_rotation = field(("rotate_" + n).c_str()) == 1;
        if (has_rotation) {
            r.dim = dim;
            r.power = dim & -dim;
            r.odd = dim / r.power;
        }
        has_frame = k != 0;
        if (has_frame) {
            f.k = k;
            f.rho_c = field(("frame_" + n + "_rho").c_str()) / 2;
            f.d_c = dim / 2;
            f.kp = (2 * k + 15) / 16 * 16;
        }
        return has_frame ? f.num_vectors() : dim;
    };
    p.matmul.in_features = side("in", p.has_rotation_in, p.rotation_in, p.has_frame_in, p.frame_in);
    p.matmul.out_features = side("out", p.has_rotation_out, p.rotation_out, p.has_frame_out, p.frame_out);
    p.matmul.bits = field("bits");
    p.matmul.words_per_row = (p.matmul.in_features + 31) / 32 * p.matmul.bits;
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
#else
        default: break;
#endif
    }
    return bytes;
}

void FQFrameLinearPlugin::prepare(DataType type, int64_t rows) {
    if (!tables_ || params_.matmul.in_features == 0) {
        FrameLinearParams p = shape_params();
        auto tables = std::make_shared<DeviceTables>();
        if (p.has_rotation_in) p.rotation_in = upload_rotation(*tables, field("in_dim"), field("seed_in"));
        if (p.has_frame_in) p.frame_in = upload_frame(*tables, field("frame_in_k"), field("frame_in_rho"), field("in_dim"));
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
        if (cudaMalloc(&weight_, dense_weight_bytes(params_)) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
        weight_built_ = false;
    }
    if ((path == Path::kDense || path == Path::kDenseWeights) && !cublaslt_) {
        cublasLtHandle_t handle = nullptr;
        if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasLtCreate failed");
        cublaslt_ = handle;
    }
#endif
}

int32_t FQFrameLinearPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                                           int32_t) noexcept {
    try {
        if (nbInputs != 5) throw std::invalid_argument("expects 5 inputs (x, packed_codes, scale, zero, bias)");
        prepare(in[0].type, leading_rows(in[0].dims));
        return 0;
    } catch (std::exception const& e) {
        log_error(std::string("FQFrameLinear: ") + e.what());
        return 1;
    }
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

int32_t FQFrameLinearPlugin::getNbTactics() noexcept { return dense_at_opt_ ? kDenseGemmChoices : 0; }

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

int32_t FQFrameLinearPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                             DimsExprs* outputs, int32_t nbOutputs,
                                             nvinfer1::IExprBuilder& builder) noexcept {
    if (nbInputs != 5 || nbOutputs != 1) return 1;
    return copy_with_last(inputs[0], outputs, field("out_dim"), builder);
}

bool FQFrameLinearPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                    int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != 5 || nbOutputs != 1) return false;
    if (pos == 4) return inOut[pos].desc.format == TensorFormat::kLINEAR && inOut[pos].desc.type == DataType::kFLOAT;
    return packed_input_ok(pos, inOut, nbInputs);  // x, codes, scale, zero; y follows x
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
        for (int64_t rows : {most, std::min<int64_t>(most, kPackedGemmMinRows - 1), std::min<int64_t>(most, dense - 1),
                             int64_t{1}})
            if (rows >= 1) bytes = std::max(bytes, workspace_for(type, rows));
        return bytes;
    } catch (std::exception const& e) {
        log_error(std::string("FQFrameLinear: ") + e.what());
        return 0;
    }
}

int32_t FQFrameLinearPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
                                     void const* const* inputs, void* const* outputs, void* workspace,
                                     cudaStream_t stream) noexcept {
    try {
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
#else
            default: throw std::logic_error("path needs cuBLAS");
#endif
        }
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
        return 0;
    } catch (std::exception const& e) {
        log_error(std::string("FQFrameLinear: ") + e.what());
        return 1;
    }
}

// ---- creators -------------------------------------------------------------------------------

template <typename Plugin>
FQPluginCreator<Plugin>::FQPluginCreator(char const* name, std::vector<std::string> field_names)
    : name_(name), field_names_(std::move(field_names)) {
    for (auto const& f : field_names_) fields_.emplace_back(f.c_str(), nullptr, PluginFieldType::kINT32, 1);
    collection_.nbFields = static_cast<int32_t>(fields_.size());
    collection_.fields = fields_.data();
}

template <typename Plugin>
nvinfer1::IPluginV3* FQPluginCreator<Plugin>::createPlugin(char const*, nvinfer1::PluginFieldCollection const* fc,
                                                            nvinfer1::TensorRTPhase) noexcept {
    try {
        // Defaults: transpose 0, seed 0, layout_version 1; the rest are required.
        std::vector<int32_t> values(field_names_.size(), 0);
        std::vector<bool> seen(field_names_.size(), false);
        for (size_t i = 0; i < field_names_.size(); ++i) {
            if (field_names_[i] == "layout_version") {
                values[i] = 1;
                seen[i] = true;
            }
            if (field_names_[i] == "transpose" || field_names_[i] == "seed") seen[i] = true;
        }
        for (int32_t j = 0; fc && j < fc->nbFields; ++j) {
            PluginField const& f = fc->fields[j];
            for (size_t i = 0; i < field_names_.size(); ++i) {
                if (f.name == nullptr || field_names_[i] != f.name) continue;
                if (f.length != 1 || f.data == nullptr) throw std::invalid_argument(field_names_[i] + " must be one INT");
                if (f.type == PluginFieldType::kINT32) {
                    values[i] = *static_cast<int32_t const*>(f.data);
                } else if (f.type == PluginFieldType::kINT64) {
                    values[i] = static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
                } else {
                    throw std::invalid_argument(field_names_[i] + " must be an INT attribute");
                }
                seen[i] = true;
            }
        }
        for (size_t i = 0; i < field_names_.size(); ++i)
            if (!seen[i]) throw std::invalid_argument("missing attribute " + field_names_[i]);
        return new Plugin(std::move(values));
    } catch (std::exception const& e) {
        log_error(name_ + ": " + e.what());
        return nullptr;
    }
}

template class FQPluginCreator<FQHadamardRotationPlugin>;
template class FQPluginCreator<FQFrameTransformPlugin>;
template class FQPluginCreator<FQPackedMatMulPlugin>;
template class FQPluginCreator<FQFrameLinearPlugin>;

}  // namespace trt
}  // namespace fq

// ---- registration ---------------------------------------------------------------------------
// Dynamic (default): TensorRT's IPluginRegistry::loadLibrary / trtexec --dynamicPlugins find
// getCreators and setLoggerFinder; the library then needs no link to libnvinfer.
// Static (-DFQ_STATIC_REGISTRATION, links libnvinfer): creators register when the library is
// loaded (ctypes.CDLL, trtexec --staticPlugins). One mode per build: loadLibrary refuses
// creators that are already registered.
namespace {
using RotationCreator = fq::trt::FQPluginCreator<fq::trt::FQHadamardRotationPlugin>;
using FrameCreator = fq::trt::FQPluginCreator<fq::trt::FQFrameTransformPlugin>;
using MatMulCreator = fq::trt::FQPluginCreator<fq::trt::FQPackedMatMulPlugin>;
using LayerCreator = fq::trt::FQPluginCreator<fq::trt::FQFrameLinearPlugin>;

nvinfer1::IPluginCreatorInterface* const* all_creators(int32_t& count) {
    static RotationCreator rotation("FQHadamardRotation", {"dim", "seed", "transpose"});
    static FrameCreator frame("FQFrameTransform", {"k", "rho", "d", "transpose"});
    static MatMulCreator matmul("FQPackedMatMul", {"bits", "in_features", "out_features", "layout_version"});
    static LayerCreator layer("FQFrameLinear", std::vector<std::string>(std::begin(fq::trt::kLayerFields),
                                                                      std::end(fq::trt::kLayerFields)));
    static nvinfer1::IPluginCreatorInterface* creators[] = {&rotation, &frame, &matmul, &layer};
    count = 4;
    return creators;
}
}  // namespace

extern "C" {
__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    fq::trt::g_logger_finder_set(finder);
}
__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    return all_creators(nbCreators);
}
}

#ifdef FQ_STATIC_REGISTRATION
namespace {
struct StaticRegistration {
    StaticRegistration() {
        int32_t n = 0;
        auto* const* creators = all_creators(n);
        for (int32_t i = 0; i < n; ++i) getPluginRegistry()->registerCreator(*creators[i], "");
    }
} static_registration;
}  // namespace
#endif
