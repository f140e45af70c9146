// Registration of the FrameQuant TensorRT plugins.
//
// Dynamic (default): TensorRT's IPluginRegistry::loadLibrary / trtexec --dynamicPlugins find
// getCreators and setLoggerFinder; the library then needs no link to libnvinfer.
// Static (-DFQ_STATIC_REGISTRATION, links libnvinfer): creators register when the library is
// loaded (ctypes.CDLL, trtexec --staticPlugins). One mode per build: loadLibrary refuses
// creators that are already registered.
#include "plugin_base.h"

namespace {
nvinfer1::IPluginCreatorInterface* const* all_creators(int32_t& count) {
    static nvinfer1::IPluginCreatorInterface* creators[] = {
        fq::trt::hadamard_rotation_creator(), fq::trt::frame_transform_creator(), fq::trt::packed_matmul_creator(),
        fq::trt::frame_linear_creator()};
    count = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
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
