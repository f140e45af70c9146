// FQFrameTransform: frame synthesis v = T z or analysis c = T^T u on the last axis (README.md
// beside this file).
#include "../plugin_base.h"
#include "recipe.h"

namespace fq {
namespace trt {
namespace {

class FQFrameTransformPlugin : public FQPlugin<FQFrameTransformPlugin> {
public:
    static constexpr char const* kName = "FQFrameTransform";
    static constexpr FieldSpec kFields[] = {{"k"}, {"rho"}, {"d"}, {"transpose", 0}};
    static constexpr int kInputs = 1;

    explicit FQFrameTransformPlugin(std::vector<int32_t> values) : FQPlugin(std::move(values)) {
        if (!tff_exists(field("k"), field("rho"), field("d")))
            throw std::invalid_argument("no tight fusion frame for (k, rho, d)");
        if (field("k") > kMaxFrameBlock) throw std::invalid_argument("k above the kernels' limit of 64");
    }

    // Synthesis (transpose 0): (..., k rho) -> (..., d); analysis (transpose 1): (..., d) -> (..., k rho).
    int64_t output_width() const {
        return field("transpose") == 1 ? static_cast<int64_t>(field("k")) * field("rho") : field("d");
    }
    bool format_ok(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs) const {
        return activation_format_ok(pos, inOut, nbInputs);
    }

    void run(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void*,
             cudaStream_t stream) {
        if (!tables_ || params_.dft == nullptr) {  // a clone copies both with the plugin
            auto tables = std::make_shared<DeviceTables>();
            params_ = upload_frame(*tables, field("k"), field("rho"), field("d"));
            tables_ = tables;
        }
        check(launch_frame(params_, inputs[0], outputs[0], leading_rows(inputDesc[0].dims), dtype_of(inputDesc[0].type),
                           field("transpose") == 1, stream));
    }

private:
    FrameParams params_{};
};

}  // namespace

nvinfer1::IPluginCreatorInterface* frame_transform_creator() {
    static FQPluginCreator<FQFrameTransformPlugin> creator;
    return &creator;
}

}  // namespace trt
}  // namespace fq
