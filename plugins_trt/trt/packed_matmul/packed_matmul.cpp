// FQPackedMatMul: z = x D_hat^T from the packed codes (README.md beside this file).
//
// Built with cuBLAS (FQ_WITH_CUBLAS), fp16 inputs of kPackedGemmMinRows rows or more take
// launch_packed_matmul_gemm (D_hat decoded into the workspace, one cuBLAS GEMM) on a cuBLAS handle
// of the plugin's own, made in onShapeChange (never inside a captured enqueue); a clone makes its own.
#include "../plugin_base.h"

#ifdef FQ_WITH_CUBLAS
#include <cublas_v2.h>
#endif

namespace fq {
namespace trt {
namespace {

using nvinfer1::DataType;

class FQPackedMatMulPlugin : public FQPlugin<FQPackedMatMulPlugin> {
public:
    static constexpr char const* kName = "FQPackedMatMul";
    static constexpr FieldSpec kFields[] = {
        {"bits"}, {"in_features"}, {"out_features"}, {"layout_version", packed::kLayoutVersion}};
    static constexpr int kInputs = 4;

    explicit FQPackedMatMulPlugin(std::vector<int32_t> values) : FQPlugin(std::move(values)) {
        check_packed_fields(field("bits"), field("layout_version"));
        if (field("in_features") < 2 || field("in_features") % 2 || field("out_features") < 1)
            throw std::invalid_argument("in_features must be even and positive, out_features positive");
    }
    FQPackedMatMulPlugin(FQPackedMatMulPlugin const& other) : FQPlugin(other) {}  // its own cuBLAS handle
    FQPackedMatMulPlugin& operator=(FQPackedMatMulPlugin const&) = delete;
    ~FQPackedMatMulPlugin() override {
#ifdef FQ_WITH_CUBLAS
        if (cublas_) cublasDestroy(static_cast<cublasHandle_t>(cublas_));
#endif
    }

    int64_t output_width() const { return field("out_features"); }
    bool format_ok(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs) const {
        return packed_input_ok(pos, inOut, nbInputs);
    }

    void on_shape_change(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs) {
#ifdef FQ_WITH_CUBLAS
        if (nbInputs >= 1 && !cublas_ && use_gemm(in[0].type, leading_rows(in[0].dims))) {
            cublasHandle_t handle = nullptr;
            if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
            cublas_ = handle;
        }
#else
        (void)in;
        (void)nbInputs;
#endif
    }

    // fp32 scale/zero (the plugin-form ONNX casts its fp16 initializers) are narrowed to fp16 in the
    // workspace; the cuBLAS form's buffers follow.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept override {
        try {
            size_t bytes = narrowed_bytes(field("out_features"));
            if (nbInputs >= 1 && use_gemm(inputs[0].desc.type, leading_rows(inputs[0].max)))
                bytes += packed_matmul_gemm_workspace_bytes(shape_params(), leading_rows(inputs[0].max));
            return bytes;
        } catch (std::exception const& e) {
            log_error(std::string(kName) + ": " + e.what());
            return 0;
        }
    }

    void run(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
             void* workspace, cudaStream_t stream) {
        PackedMatMulParams p = shape_params();
        bind_packed_inputs(p, inputDesc, inputs, workspace, stream);
        const int64_t rows = leading_rows(inputDesc[0].dims);
        if (use_gemm(inputDesc[0].type, rows)) {
            if (!cublas_) throw std::runtime_error("no cuBLAS handle (onShapeChange did not run)");
            check(launch_packed_matmul_gemm(p, inputs[0], outputs[0], rows,
                                            static_cast<char*>(workspace) + narrowed_bytes(p.out_features), cublas_,
                                            stream));
        } else {
            check(launch_packed_matmul(p, inputs[0], outputs[0], rows, dtype_of(inputDesc[0].type), stream));
        }
    }

private:
    // Whether `rows` rows of `type` go to cuBLAS (always false without cuBLAS).
    static bool use_gemm(DataType type, int64_t rows) {
#ifdef FQ_WITH_CUBLAS
        return type == DataType::kHALF && rows >= kPackedGemmMinRows;
#else
        (void)type;
        (void)rows;
        return false;
#endif
    }
    PackedMatMulParams shape_params() const {
        PackedMatMulParams p;
        p.bits = field("bits");
        p.in_features = field("in_features");
        p.out_features = field("out_features");
        p.words_per_row = packed::words_per_row(p.in_features, p.bits);
        return p;
    }
    void* cublas_ = nullptr;  // cublasHandle_t
};

}  // namespace

nvinfer1::IPluginCreatorInterface* packed_matmul_creator() {
    static FQPluginCreator<FQPackedMatMulPlugin> creator;
    return &creator;
}

}  // namespace trt
}  // namespace fq
