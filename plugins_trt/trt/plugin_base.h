// What the FrameQuant TensorRT plugins share (IPluginV3, version "1", namespace ""): the INT32
// fields, written once per plugin as a FieldSpec list and serialized as they came from the ONNX
// node, the capability plumbing, the shape and format rules, the device tables, the error log, and
// the one creator template. Each plugin (its own folder) adds its checks and its enqueue; the
// plugins know nothing of the kernels' internals and call the launchers of csrc/fq_kernels.h.
// docs/ops.md specifies the ops.
#pragma once

#include <NvInferRuntime.h>

#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fq_kernels.h"

namespace fq {
namespace trt {

constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

// Stores the logger finder TensorRT hands to setLoggerFinder; log_error writes to its ILogger.
void g_logger_finder_set(nvinfer1::ILoggerFinder* finder);
void log_error(std::string const& message);

// One INT attribute of a plugin: its name and, where the ONNX node may leave it out, its default.
struct FieldSpec {
    char const* name;
    bool required = true;
    int32_t default_value = 0;
    constexpr FieldSpec(char const* n) : name(n) {}  // NOLINT(google-explicit-constructor): list entries
    constexpr FieldSpec(char const* n, int32_t d) : name(n), required(false), default_value(d) {}
};

// Device copies of the tables of one op, uploaded on first use and freed with the plugin.
struct DeviceTables {
    std::vector<void*> buffers;
    ~DeviceTables();
    template <typename T> T* upload(std::vector<T> const& host);
};

// The device tables of a rotation or frame recipe (csrc/recipe.h), appended to `tables`; the
// returned parameters point at them.
RotationParams upload_rotation(DeviceTables& tables, int dim, int32_t seed);
FrameParams upload_frame(DeviceTables& tables, int k, int rho, int d);
// Sizes of a frame's parameters without its tables (kp: 2k rounded up to the tensor cores' 16).
FrameParams frame_shape(int k, int rho, int d);
RotationParams rotation_shape(int dim);

// Everything the plugins share: INT fields, the capability plumbing, linear formats, one input
// tensor x whose leading axes the output keeps.
class FQPluginBase : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime {
public:
    FQPluginBase(std::vector<std::string> field_names, std::vector<int32_t> values);
    FQPluginBase(FQPluginBase const& other);
    ~FQPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;

    // IPluginV3OneRuntime
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    int32_t field(char const* name) const;

protected:
    // x (pos 0) and the output are fp16 or fp32 linear and of one type.
    static bool activation_format_ok(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs);
    static int64_t leading_rows(nvinfer1::Dims const& dims);
    static DType dtype_of(nvinfer1::DataType type) {
        return type == nvinfer1::DataType::kHALF ? DType::kFloat16 : DType::kFloat32;
    }
    // Same leading axes as input 0, last axis `last`.
    static int32_t copy_with_last(nvinfer1::DimsExprs const& in, nvinfer1::DimsExprs* out, int64_t last,
                                  nvinfer1::IExprBuilder& builder);

    std::vector<std::string> field_names_;
    std::vector<int32_t> values_;
    std::vector<nvinfer1::PluginField> serial_fields_;
    nvinfer1::PluginFieldCollection serial_collection_{};
    std::shared_ptr<DeviceTables> tables_;  // shared by clones of one plugin, rebuilt lazily
};

template <size_t N> std::vector<std::string> names_of(FieldSpec const (&fields)[N]) {
    std::vector<std::string> names;
    for (FieldSpec const& f : fields) names.emplace_back(f.name);
    return names;
}

// The boilerplate of one plugin, written once. Derived provides:
//   static constexpr char const* kName; static constexpr FieldSpec kFields[]; static constexpr int kInputs;
//   int64_t output_width() const;                      the output's last axis
//   bool format_ok(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs) const;
//   void run(PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
//            void* workspace, cudaStream_t stream);    enqueue's work; throws on failure
// and may provide on_shape_change(PluginTensorDesc const* in, int32_t nbInputs) (throws on
// failure), which runs in onShapeChange: everything that allocates belongs there, never in a
// captured enqueue.
template <typename Derived> class FQPlugin : public FQPluginBase {
public:
    explicit FQPlugin(std::vector<int32_t> values) : FQPluginBase(names_of(Derived::kFields), std::move(values)) {}

    char const* getPluginName() const noexcept override { return Derived::kName; }

    nvinfer1::IPluginV3* clone() noexcept override {
        try {
            return new Derived(static_cast<Derived const&>(*this));
        } catch (std::exception const& e) {
            log_error(std::string(Derived::kName) + ": " + e.what());
            return nullptr;
        }
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const*, int32_t,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& builder) noexcept override {
        if (nbInputs != Derived::kInputs || nbOutputs != 1) return 1;
        try {
            return copy_with_last(inputs[0], outputs, derived().output_width(), builder);
        } catch (std::exception const& e) {
            log_error(std::string(Derived::kName) + ": " + e.what());
            return 1;
        }
    }

    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        return nbInputs == Derived::kInputs && nbOutputs == 1 && derived().format_ok(pos, inOut, nbInputs);
    }

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const*,
                          int32_t) noexcept override {
        try {
            derived().on_shape_change(in, nbInputs);
            return 0;
        } catch (std::exception const& e) {
            log_error(std::string(Derived::kName) + ": " + e.what());
            return 1;
        }
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const*,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override {
        try {
            derived().run(inputDesc, inputs, outputs, workspace, stream);
            return 0;
        } catch (std::exception const& e) {
            log_error(std::string(Derived::kName) + ": " + e.what());
            return 1;
        }
    }

protected:
    void on_shape_change(nvinfer1::PluginTensorDesc const*, int32_t) {}  // Derived may hide it
    // A launcher's error as an exception.
    static void check(cudaError_t err) {
        if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
    }

private:
    Derived& derived() { return static_cast<Derived&>(*this); }
    Derived const& derived() const { return static_cast<Derived const&>(*this); }
};

// ---- what FQPackedMatMul and FQFrameLinear share: x, packed codes, scale, zero -----------------

// Bytes of the fp16 copies of fp32 scale/zero, rounded so that what follows is 256-byte aligned.
size_t narrowed_bytes(int64_t out_features);
// Formats of inputs 0..3 (x, packed codes, scale, zero) and of the output, which follows x.
bool packed_input_ok(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs);
// Codes shape check, codes pointer, and scale/zero into p: fp16 inputs as they are, fp32 ones
// (the plugin-form ONNX casts its fp16 initializers) narrowed into the first
// narrowed_bytes(out_features) of the workspace.
void bind_packed_inputs(PackedMatMulParams& p, nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs,
                        void* workspace, cudaStream_t stream);
// The bits and layout_version fields: a bit width of the packed layout, its version.
void check_packed_fields(int32_t bits, int32_t layout_version);

// ---- the creator --------------------------------------------------------------------------------

// The values of `spec` (n fields) from fc: INT32 or INT64 scalars; defaults where left out; throws
// naming a missing or malformed field.
std::vector<int32_t> read_fields(FieldSpec const* spec, size_t n, nvinfer1::PluginFieldCollection const* fc);

// One creator per plugin: Plugin::kFields with their defaults, createPlugin for the parser's fields
// (kBUILD, INT32 or INT64) and for the serialized ones (kRUNTIME, INT32).
template <typename Plugin> class FQPluginCreator : public nvinfer1::IPluginCreatorV3One {
public:
    FQPluginCreator() {
        for (FieldSpec const& f : Plugin::kFields)
            fields_.emplace_back(f.name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
    }
    nvinfer1::IPluginV3* createPlugin(char const*, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase) noexcept override {
        try {
            return new Plugin(field_values(Plugin::kFields, fc));
        } catch (std::exception const& e) {
            log_error(std::string(Plugin::kName) + ": " + e.what());
            return nullptr;
        }
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
    char const* getPluginName() const noexcept override { return Plugin::kName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    template <size_t N>
    static std::vector<int32_t> field_values(FieldSpec const (&spec)[N], nvinfer1::PluginFieldCollection const* fc) {
        return read_fields(spec, N, fc);
    }
    std::vector<nvinfer1::PluginField> fields_;
    nvinfer1::PluginFieldCollection collection_{};
};

// The creators, one per plugin folder (registration.cpp hands them to TensorRT).
nvinfer1::IPluginCreatorInterface* hadamard_rotation_creator();
nvinfer1::IPluginCreatorInterface* frame_transform_creator();
nvinfer1::IPluginCreatorInterface* packed_matmul_creator();
nvinfer1::IPluginCreatorInterface* frame_linear_creator();

}  // namespace trt
}  // namespace fq
