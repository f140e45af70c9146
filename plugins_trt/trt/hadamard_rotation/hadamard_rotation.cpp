// FQHadamardRotation: y = R x or R^T x on the last axis (README.md beside this file).
#include "../plugin_base.h"

namespace fq {
namespace trt {
namespace {

class FQHadamardRotationPlugin : public FQPlugin<FQHadamardRotationPlugin> {
public:
    static constexpr char const* kName = "FQHadamardRotation";
    static constexpr FieldSpec kFields[] = {{"dim"}, {"seed", 0}, {"transpose", 0}};
    static constexpr int kInputs = 1;

    explicit FQHadamardRotationPlugin(std::vector<int32_t> values) : FQPlugin(std::move(values)) {
        if (field("dim") < 1) throw std::invalid_argument("dim must be positive");
        if (field("transpose") != 0 && field("transpose") != 1) throw std::invalid_argument("transpose must be 0 or 1");
    }

    int64_t output_width() const { return field("dim"); }
    bool format_ok(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs) const {
        return activation_format_ok(pos, inOut, nbInputs);
    }

    void run(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void*,
             cudaStream_t stream) {
        if (!tables_) {
            auto tables = std::make_shared<DeviceTables>();
            params_ = upload_rotation(*tables, field("dim"), field("seed"));
            tables_ = tables;
        }
        if (params_.signs == nullptr) {  // a clone sharing uploaded tables: recover the pointers
            params_ = rotation_shape(field("dim"));
            params_.signs = static_cast<float const*>(tables_->buffers.at(0));
            params_.dct = static_cast<float const*>(tables_->buffers.at(1));
        }
        check(launch_rotation(params_, inputs[0], outputs[0], leading_rows(inputDesc[0].dims),
                              dtype_of(inputDesc[0].type), field("transpose") == 1, stream));
    }

private:
    RotationParams params_{};
};

}  // namespace

nvinfer1::IPluginCreatorInterface* hadamard_rotation_creator() {
    static FQPluginCreator<FQHadamardRotationPlugin> creator;
    return &creator;
}

}  // namespace trt
}  // namespace fq
