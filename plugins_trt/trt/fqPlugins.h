// TensorRT IPluginV3 glue for the FrameQuant ops of fq_export/plugin_ops.py:
// FQHadamardRotation, FQFrameTransform, FQPackedMatMul and the whole-layer FQFrameLinear
// (version "1", namespace "").
//
// The glue knows nothing about the kernels' internals: it checks shapes and types, turns the
// INT fields into the recipes, uploads the tables that csrc/recipe.h regenerates, and calls the
// launchers of csrc/fq_kernels.h.
#pragma once

#include <NvInferRuntime.h>

#include <memory>
#include <string>
#include <vector>

#include "fq_kernels.h"

namespace fq {
namespace trt {

constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "";

// Stores the logger finder TensorRT hands to setLoggerFinder (errors go to its ILogger).
void g_logger_finder_set(nvinfer1::ILoggerFinder* finder);

// Device copies of the tables of one op, uploaded on first use and freed with the plugin.
struct DeviceTables {
    std::vector<void*> buffers;
    ~DeviceTables();
    template <typename T> T* upload(std::vector<T> const& host);
};

// Everything the three plugins share: INT fields (serialized as they came from the ONNX node),
// the capability plumbing, linear formats, one input tensor x plus per-op extras.
class FQPluginBase : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime {
public:
    FQPluginBase(std::string name, std::vector<std::string> field_names, std::vector<int32_t> values);
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
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    int32_t field(char const* name) const;

protected:
    // Shared rule: x (pos 0) and the output are fp16 or fp32 linear and of one type.
    bool activation_format_ok(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs) const;
    static int64_t leading_rows(nvinfer1::Dims const& dims);
    static DType dtype_of(nvinfer1::DataType type) {
        return type == nvinfer1::DataType::kHALF ? DType::kFloat16 : DType::kFloat32;
    }
    // Same leading axes as input 0, last axis `last`.
    static int32_t copy_with_last(nvinfer1::DimsExprs const& in, nvinfer1::DimsExprs* out, int64_t last,
                                  nvinfer1::IExprBuilder& builder);

    std::string name_;
    std::vector<std::string> field_names_;
    std::vector<int32_t> values_;
    std::vector<nvinfer1::PluginField> serial_fields_;
    nvinfer1::PluginFieldCollection serial_collection_{};
    std::shared_ptr<DeviceTables> tables_;  // shared by clones of one plugin, rebuilt lazily
};

class FQHadamardRotationPlugin : public FQPluginBase {
public:
    explicit FQHadamardRotationPlugin(std::vector<int32_t> values);
    char const* getPluginName() const noexcept override { return "FQHadamardRotation"; }
    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;

private:
    RotationParams params_{};
};

class FQFrameTransformPlugin : public FQPluginBase {
public:
    explicit FQFrameTransformPlugin(std::vector<int32_t> values);
    char const* getPluginName() const noexcept override { return "FQFrameTransform"; }
    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;

private:
    FrameParams params_{};
};

// Built with cuBLAS (FQ_WITH_CUBLAS), fp16 inputs of kPackedGemmMinRows rows or more take
// launch_packed_matmul_gemm (D_hat decoded into the workspace, one cuBLAS GEMM) on a cuBLAS handle
// of the plugin's own, made in onShapeChange (never inside a captured enqueue); a clone makes its own.
class FQPackedMatMulPlugin : public FQPluginBase {
public:
    explicit FQPackedMatMulPlugin(std::vector<int32_t> values);
    FQPackedMatMulPlugin(FQPackedMatMulPlugin const& other) : FQPluginBase(other) {}
    FQPackedMatMulPlugin& operator=(FQPackedMatMulPlugin const&) = delete;
    ~FQPackedMatMulPlugin() override;
    char const* getPluginName() const noexcept override { return "FQPackedMatMul"; }
    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    // fp32 scale/zero (the plugin-form ONNX casts its fp16 initializers) are narrowed to fp16 here.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;

private:
    // Whether `rows` rows of `type` go to cuBLAS (always false without cuBLAS).
    static bool use_gemm(nvinfer1::DataType type, int64_t rows);
    PackedMatMulParams shape_params() const;
    void* cublas_ = nullptr;  // cublasHandle_t
};

// The whole layer in one node (FQFrameLinear): x, packed codes, scale, zero, bias (fp32) -> y.
// Its path follows the harness' automatic choice: the single-launch layer for one row, three
// launches otherwise, and, built with cuBLAS, for fp16 the gemm path from kPackedGemmMinRows rows
// and the dense form from dense_min_rows rows. The tables, the single-launch layer's barrier word
// and the cuBLAS / cuBLASLt handles are made in onShapeChange (never inside a captured enqueue);
// a clone shares the tables and makes its own barrier and handles.
// Weights at run time, from the environment variable FQ_TRT_WEIGHTS when the plugin is created
// (the engine file is the same either way): "packed" (default; the paths above read the packed
// codes at every call) or "dense" (fp16 layers: W_hat built in fp16 by the first enqueue into a
// buffer the plugin keeps, then one cuBLASLt GEMM per call; fp32 layers keep the packed paths).
class FQFrameLinearPlugin : public FQPluginBase {
public:
    explicit FQFrameLinearPlugin(std::vector<int32_t> values);
    FQFrameLinearPlugin(FQFrameLinearPlugin const& other);
    FQFrameLinearPlugin& operator=(FQFrameLinearPlugin const&) = delete;
    ~FQFrameLinearPlugin() override;
    char const* getPluginName() const noexcept override { return "FQFrameLinear"; }
    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
    // Tactics: where the profile's opt shape takes the dense form, tactic t (1..kDenseGemmChoices)
    // runs its GEMM with entry t - 1 of cuBLASLt's heuristic list, and TensorRT times them there
    // (0, the default: the list's first entry). Other paths ignore the tactic.
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getNbTactics() noexcept override;
    int32_t getValidTactics(int32_t* tactics, int32_t nbTactics) noexcept override;
    int32_t setTactic(int32_t tactic) noexcept override;
    // Layers that differ only in their rotation seeds run the same kernels for the same time, so
    // the builder may time one and reuse it (TensorRT adds the I/O shapes and formats itself).
    char const* getTimingCacheID() noexcept override;

private:
    using Path = LayerPath;
    bool dense_at_opt_ = false;  // configurePlugin: the profile's opt row count takes the dense form
    bool dense_weights_ = false;  // FQ_TRT_WEIGHTS=dense
    void* weight_ = nullptr;      // dense mode: W^T and the fp16 bias (dense_weight_bytes)
    bool weight_built_ = false;
    int32_t tactic_ = 0;
    std::string timing_id_;
    Path path_for(nvinfer1::DataType type, int64_t rows) const;
    FrameLinearParams shape_params() const;  // sizes only, no table pointers
    size_t workspace_for(nvinfer1::DataType type, int64_t rows) const;
    void prepare(nvinfer1::DataType type, int64_t rows);  // what path_for(type, rows) needs
    FrameLinearParams params_{};  // with the table pointers once the tables are uploaded
    unsigned int* barrier_ = nullptr;
    void* cublas_ = nullptr;    // cublasHandle_t
    void* cublaslt_ = nullptr;  // cublasLtHandle_t
};

// One creator per plugin: field names with defaults, createPlugin for the parser's fields
// (kBUILD) and for the serialized ones (kRUNTIME), which are the same INT32 fields.
template <typename Plugin>
class FQPluginCreator : public nvinfer1::IPluginCreatorV3One {
public:
    FQPluginCreator(char const* name, std::vector<std::string> field_names);
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
    char const* getPluginName() const noexcept override { return name_.c_str(); }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::string name_;
    std::vector<std::string> field_names_;
    std::vector<nvinfer1::PluginField> fields_;
    nvinfer1::PluginFieldCollection collection_{};
};

}  // namespace trt
}  // namespace fq
