// The shared part of the FrameQuant TensorRT plugins; see plugin_base.h.
#include "plugin_base.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>

#include "recipe.h"

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

void log_error(std::string const& message) {
    nvinfer1::ILogger* logger = g_logger_finder ? g_logger_finder->findLogger() : nullptr;
    if (logger) logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
}

// ---- device tables --------------------------------------------------------------------------

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

RotationParams rotation_shape(int dim) {
    RotationParams p;
    p.dim = dim;
    p.power = dim & -dim;
    p.odd = dim / p.power;
    return p;
}

FrameParams frame_shape(int k, int rho, int d) {
    FrameParams p;
    p.k = k;
    p.rho_c = rho / 2;
    p.d_c = d / 2;
    p.kp = (2 * k + 15) / 16 * 16;
    return p;
}

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
    FrameParams p = frame_shape(k, rho, d);
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

// ---- FQPluginBase ---------------------------------------------------------------------------

FQPluginBase::FQPluginBase(std::vector<std::string> field_names, std::vector<int32_t> values)
    : field_names_(std::move(field_names)), values_(std::move(values)) {}

FQPluginBase::FQPluginBase(FQPluginBase const& other)
    : nvinfer1::IPluginV3(),
      nvinfer1::IPluginV3OneCore(),
      nvinfer1::IPluginV3OneBuild(),
      nvinfer1::IPluginV3OneRuntime(),
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

nvinfer1::IPluginV3* FQPluginBase::attachToContext(nvinfer1::IPluginResourceContext*) noexcept { return clone(); }

nvinfer1::PluginFieldCollection const* FQPluginBase::getFieldsToSerialize() noexcept {
    serial_fields_.clear();
    for (size_t i = 0; i < field_names_.size(); ++i)
        serial_fields_.emplace_back(field_names_[i].c_str(), &values_[i], PluginFieldType::kINT32, 1);
    serial_collection_.nbFields = static_cast<int32_t>(serial_fields_.size());
    serial_collection_.fields = serial_fields_.data();
    return &serial_collection_;
}

bool FQPluginBase::activation_format_ok(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs) {
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

// ---- x, packed codes, scale, zero -------------------------------------------------------------

size_t narrowed_bytes(int64_t out_features) { return align256(2 * sizeof(__half) * static_cast<size_t>(out_features)); }

bool packed_input_ok(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs) {
    auto const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == nbInputs) return desc.type == inOut[0].desc.type;  // output
    switch (pos) {
        case 0: return desc.type == DataType::kHALF || desc.type == DataType::kFLOAT;  // x
        case 1: return desc.type == DataType::kINT32;                                  // packed codes
        case 2: return desc.type == DataType::kHALF || desc.type == DataType::kFLOAT;  // scale
        case 3: return desc.type == inOut[2].desc.type;                                // zero
        default: return false;
    }
}

void bind_packed_inputs(PackedMatMulParams& p, PluginTensorDesc const* inputDesc, void const* const* inputs,
                        void* workspace, cudaStream_t stream) {
    auto const& codes = inputDesc[1].dims;
    if (codes.nbDims != 2 || codes.d[0] != p.out_features || codes.d[1] != p.words_per_row)
        throw std::invalid_argument("packed_codes must have shape (out_features, ceil(in_features/32)*bits)");
    p.codes = static_cast<uint32_t const*>(inputs[1]);
    if (inputDesc[2].type == DataType::kFLOAT) {
        __half* narrowed = static_cast<__half*>(workspace);
        cudaError_t err =
            launch_half_from_float(static_cast<float const*>(inputs[2]), narrowed, p.out_features, stream);
        if (err == cudaSuccess)
            err = launch_half_from_float(static_cast<float const*>(inputs[3]), narrowed + p.out_features,
                                         p.out_features, stream);
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
        p.scale = narrowed;
        p.zero = narrowed + p.out_features;
    } else {
        p.scale = static_cast<__half const*>(inputs[2]);
        p.zero = static_cast<__half const*>(inputs[3]);
    }
}

void check_packed_fields(int32_t bits, int32_t layout_version) {
    if (!packed::supported_bits(bits)) throw std::invalid_argument("bits must be 2, 3, 4 or 8");
    if (layout_version != packed::kLayoutVersion)
        throw std::invalid_argument("only packing layout version " + std::to_string(packed::kLayoutVersion) +
                                    " is supported");
}

// ---- fields -----------------------------------------------------------------------------------

std::vector<int32_t> read_fields(FieldSpec const* spec, size_t n, nvinfer1::PluginFieldCollection const* fc) {
    std::vector<int32_t> values(n, 0);
    std::vector<bool> seen(n, false);
    for (size_t i = 0; i < n; ++i) {
        values[i] = spec[i].default_value;
        seen[i] = !spec[i].required;
    }
    for (int32_t j = 0; fc && j < fc->nbFields; ++j) {
        PluginField const& f = fc->fields[j];
        for (size_t i = 0; i < n; ++i) {
            if (f.name == nullptr || std::string(spec[i].name) != f.name) continue;
            if (f.length != 1 || f.data == nullptr)
                throw std::invalid_argument(std::string(spec[i].name) + " must be one INT");
            if (f.type == PluginFieldType::kINT32) {
                values[i] = *static_cast<int32_t const*>(f.data);
            } else if (f.type == PluginFieldType::kINT64) {
                values[i] = static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
            } else {
                throw std::invalid_argument(std::string(spec[i].name) + " must be an INT attribute");
            }
            seen[i] = true;
        }
    }
    for (size_t i = 0; i < n; ++i)
        if (!seen[i]) throw std::invalid_argument(std::string("missing attribute ") + spec[i].name);
    return values;
}

}  // namespace trt
}  // namespace fq
