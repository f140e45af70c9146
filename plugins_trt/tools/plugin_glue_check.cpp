// Runs the FQFrameLinear plugin through TensorRT's calling sequence without TensorRT: the
// creator from getCreators, createPlugin from the ONNX node's INT fields (kBUILD), the timing
// cache ID (the same for a layer with other seeds), the build checks (supportsFormatCombination,
// getOutputDataTypes, getWorkspaceSize over a profile), the serialized fields back through
// createPlugin (kRUNTIME), attachToContext (a clone), and per case onShapeChange + enqueue on a
// stream for the default tactic and every tactic the plugin advertises at the case's opt shape,
// with a workspace of the size the plugin asked for, filled with NaN bytes first. Compared with
// the float64 reference that plugin_glue_check.py wrote.
//
//   plugin_glue_check DIR      (DIR from `python plugins_trt/tools/plugin_glue_check.py data DIR`)
//
// Prints one line per case and "ok" or the failures; exit status 0 only when every case passes.
#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

namespace {

using namespace nvinfer1;

struct StderrLogger : ILogger {
    void log(Severity severity, AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::fprintf(stderr, "plugin: %s\n", msg);
    }
};
struct Finder : ILoggerFinder {
    StderrLogger logger;
    ILogger* findLogger() noexcept override { return &logger; }
};

void check(cudaError_t err, char const* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <typename T> std::vector<T> read_bin(std::string const& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot read " + path);
    const std::streamsize n = f.tellg();
    f.seekg(0);
    std::vector<T> v(static_cast<size_t>(n) / sizeof(T));
    f.read(reinterpret_cast<char*>(v.data()), n);
    return v;
}

// meta.txt: "key value..." lines.
std::map<std::string, std::vector<std::string>> read_meta(std::string const& path) {
    std::ifstream f(path);
    if (!f) throw std::runtime_error("cannot read " + path);
    std::map<std::string, std::vector<std::string>> meta;
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream in(line);
        std::string key, word;
        in >> key;
        while (in >> word) meta[key].push_back(word);
    }
    return meta;
}

template <typename T> T* device_copy(std::vector<T> const& host) {
    void* p = nullptr;
    check(cudaMalloc(&p, host.size() * sizeof(T) + 1), "cudaMalloc");
    check(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
    return static_cast<T*>(p);
}

Dims dims2(int64_t a, int64_t b) {
    Dims d{};
    d.nbDims = 2;
    d.d[0] = a;
    d.d[1] = b;
    return d;
}
Dims dims1(int64_t a) {
    Dims d{};
    d.nbDims = 1;
    d.d[0] = a;
    return d;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    try {
        Finder finder;
        setLoggerFinder(&finder);
        auto meta = read_meta(dir + "/meta.txt");
        // The creator, as TensorRT's registry finds it.
        int32_t n_creators = 0;
        auto* const* creators = getCreators(n_creators);
        IPluginCreatorV3One* creator = nullptr;
        for (int32_t i = 0; i < n_creators; ++i) {
            auto* c = dynamic_cast<IPluginCreatorV3One*>(creators[i]);
            if (c && std::string(c->getPluginName()) == "FQFrameLinear") creator = c;
        }
        if (!creator) throw std::runtime_error("no FQFrameLinear creator in getCreators");
        if (std::string(creator->getPluginVersion()) != "1") throw std::runtime_error("creator version is not 1");
        // The ONNX node's attributes as the parser hands them over (INT64 from ONNX).
        std::vector<std::string> names = meta.at("fields");
        std::vector<int64_t> values;
        for (auto const& v : meta.at("values")) values.push_back(std::stoll(v));
        // createPlugin (kBUILD) from INT64 fields with these values, one per name.
        auto create = [&](char const* label, std::vector<int64_t> const& vals) {
            std::vector<PluginField> fields;
            for (size_t i = 0; i < names.size(); ++i)
                fields.emplace_back(names[i].c_str(), &vals[i], PluginFieldType::kINT64, 1);
            PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
            return creator->createPlugin(label, &fc, TensorRTPhase::kBUILD);
        };
        IPluginV3* built = create("layer", values);
        if (!built) throw std::runtime_error("createPlugin (kBUILD) failed");
        // A bad recipe is refused at creation.
        {
            std::vector<int64_t> bad = values;
            for (size_t i = 0; i < names.size(); ++i)
                if (names[i] == "frame_in_rho") bad[i] = 0;
            if (create("bad", bad) != nullptr) throw std::runtime_error("a frame with k but no rho was accepted");
        }

        const int64_t n = std::stoll(meta.at("in_dim")[0]), m = std::stoll(meta.at("out_dim")[0]);
        const int64_t k_out = std::stoll(meta.at("k_out")[0]), words = std::stoll(meta.at("words")[0]);
        const int64_t max_rows = std::stoll(meta.at("max_rows")[0]);
        auto* build = static_cast<IPluginV3OneBuild*>(built->getCapabilityInterface(PluginCapabilityType::kBUILD));
        // The timing cache ID: set, and the same for a layer that differs only in its seeds.
        {
            char const* id = build->getTimingCacheID();
            if (!id || !*id) throw std::runtime_error("no timing cache ID");
            const std::string first(id);
            std::vector<int64_t> other = values;
            for (size_t i = 0; i < names.size(); ++i)
                if (names[i].rfind("seed", 0) == 0) other[i] += 17;
            IPluginV3* twin = create("twin", other);
            if (!twin) throw std::runtime_error("createPlugin (other seeds) failed");
            auto* twin_build =
                static_cast<IPluginV3OneBuild*>(twin->getCapabilityInterface(PluginCapabilityType::kBUILD));
            char const* twin_id = twin_build->getTimingCacheID();
            const bool same = twin_id && first == twin_id;
            delete twin;
            if (!same) throw std::runtime_error("layers differing only in their seeds have different timing cache IDs");
            std::printf("timing cache ID %s\n", first.c_str());
        }

        // Formats: x fp16/fp32, codes int32, scale/zero fp32 (the ONNX Cast) or fp16, bias fp32, y as x.
        auto desc = [](DataType t, Dims d) {
            DynamicPluginTensorDesc x{};
            x.desc.type = t;
            x.desc.format = TensorFormat::kLINEAR;
            x.desc.dims = d;
            x.min = x.opt = x.max = d;
            return x;
        };
        for (DataType act : {DataType::kHALF, DataType::kFLOAT}) {
            DynamicPluginTensorDesc io[6] = {desc(act, dims2(-1, n)),
                                             desc(DataType::kINT32, dims2(k_out, words)),
                                             desc(DataType::kFLOAT, dims1(k_out)),
                                             desc(DataType::kFLOAT, dims1(k_out)),
                                             desc(DataType::kFLOAT, dims1(m)),
                                             desc(act, dims2(-1, m))};
            for (int32_t pos = 0; pos < 6; ++pos)
                if (!build->supportsFormatCombination(pos, io, 5, 1))
                    throw std::runtime_error("supportsFormatCombination refused position " + std::to_string(pos));
            io[5].desc.type = act == DataType::kHALF ? DataType::kFLOAT : DataType::kHALF;
            if (build->supportsFormatCombination(5, io, 5, 1))
                throw std::runtime_error("output of another type accepted");
            io[4].desc.type = DataType::kHALF;
            if (build->supportsFormatCombination(4, io, 5, 1)) throw std::runtime_error("fp16 bias accepted");
            DataType in_types[5] = {act, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
            DataType out_type{};
            if (build->getOutputDataTypes(&out_type, 1, in_types, 5) != 0 || out_type != act)
                throw std::runtime_error("getOutputDataTypes");
        }

        // Serialize, deserialize (kRUNTIME), attach to a context: the runtime instance is a clone.
        auto* core = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* serial = core->getFieldsToSerialize();
        IPluginV3* deserialized = creator->createPlugin("layer", serial, TensorRTPhase::kRUNTIME);
        if (!deserialized) throw std::runtime_error("createPlugin (kRUNTIME) from the serialized fields failed");
        auto* drt =
            static_cast<IPluginV3OneRuntime*>(deserialized->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        IPluginV3* context = drt->attachToContext(nullptr);
        if (!context) throw std::runtime_error("attachToContext");
        auto* rt = static_cast<IPluginV3OneRuntime*>(context->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        auto* cbuild = static_cast<IPluginV3OneBuild*>(context->getCapabilityInterface(PluginCapabilityType::kBUILD));

        // Layer data.
        const auto codes = read_bin<int32_t>(dir + "/codes.bin");
        const auto scale = read_bin<float>(dir + "/scale.bin"), zero = read_bin<float>(dir + "/zero.bin");
        const auto bias = read_bin<float>(dir + "/bias.bin");
        if (static_cast<int64_t>(codes.size()) != k_out * words) throw std::runtime_error("codes.bin size");
        int32_t* d_codes = device_copy(codes);
        float* d_scale32 = device_copy(scale);
        float* d_zero32 = device_copy(zero);
        float* d_bias = device_copy(bias);
        std::vector<__half> scale16(scale.size()), zero16(zero.size());
        for (size_t i = 0; i < scale.size(); ++i)
            scale16[i] = __float2half(scale[i]), zero16[i] = __float2half(zero[i]);
        __half* d_scale16 = device_copy(scale16);
        __half* d_zero16 = device_copy(zero16);
        cudaStream_t stream;
        check(cudaStreamCreate(&stream), "stream");

        int failures = 0;
        for (auto const& name : meta.at("cases")) {
            // case NAME: rows dtype(16|32) scale_dtype(16|32) tolerance
            auto const& c = meta.at("case_" + name);
            const int64_t rows = std::stoll(c[0]);
            const DataType act = c[1] == "16" ? DataType::kHALF : DataType::kFLOAT;
            const bool scale_fp16 = c[2] == "16";
            const double tol = std::stod(c[3]);
            const auto x = read_bin<float>(dir + "/x_" + name + ".bin");
            const auto ref = read_bin<double>(dir + "/y_" + name + ".bin");
            // The profile: rows from 1 to max_rows, the case's rows as its opt shape (where the plugin
            // offers tactics); the workspace the plugin asks for at its maximum.
            const DataType st = scale_fp16 ? DataType::kHALF : DataType::kFLOAT;
            DynamicPluginTensorDesc in[5] = {desc(act, dims2(rows, n)), desc(DataType::kINT32, dims2(k_out, words)),
                                             desc(st, dims1(k_out)), desc(st, dims1(k_out)),
                                             desc(DataType::kFLOAT, dims1(m))};
            in[0].min = dims2(1, n);
            in[0].max = dims2(max_rows, n);
            in[0].opt = dims2(rows, n);
            DynamicPluginTensorDesc out[1] = {desc(act, dims2(rows, m))};
            if (cbuild->configurePlugin(in, 5, out, 1) != 0) throw std::runtime_error("configurePlugin");
            const size_t ws_bytes = cbuild->getWorkspaceSize(in, 5, out, 1);
            PluginTensorDesc pin[5], pout[1];
            for (int i = 0; i < 5; ++i) pin[i] = in[i].desc;
            pout[0] = out[0].desc;
            if (rt->onShapeChange(pin, 5, pout, 1) != 0) throw std::runtime_error("onShapeChange failed");
            void *d_x = nullptr, *d_y = nullptr, *d_ws = nullptr;
            const size_t esize = act == DataType::kHALF ? 2 : 4;
            check(cudaMalloc(&d_x, rows * n * esize), "x");
            check(cudaMalloc(&d_y, rows * m * esize), "y");
            check(cudaMalloc(&d_ws, ws_bytes + 1), "workspace");
            check(cudaMemset(d_ws, 0xFF, ws_bytes + 1), "workspace NaN");  // 0xFFFF: fp16 NaN
            if (act == DataType::kHALF) {
                std::vector<__half> xh(x.size());
                for (size_t i = 0; i < x.size(); ++i) xh[i] = __float2half(x[i]);
                check(cudaMemcpy(d_x, xh.data(), xh.size() * 2, cudaMemcpyHostToDevice), "x copy");
            } else {
                check(cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice), "x copy");
            }
            void const* inputs[5] = {d_x, d_codes, scale_fp16 ? static_cast<void const*>(d_scale16) : d_scale32,
                                     scale_fp16 ? static_cast<void const*>(d_zero16) : d_zero32, d_bias};
            void* outputs[1] = {d_y};
            // Tactics as the builder times them (the default 0, then each advertised one), each set
            // on the context's plugin before its enqueues.
            std::vector<int32_t> tactics(cbuild->getNbTactics());
            if (!tactics.empty() && cbuild->getValidTactics(tactics.data(), static_cast<int32_t>(tactics.size())) != 0)
                throw std::runtime_error("getValidTactics");
            tactics.insert(tactics.begin(), 0);
            for (int32_t tactic : tactics) {
                if (rt->setTactic(tactic) != 0) throw std::runtime_error("setTactic");
                for (int rep = 0; rep < 2; ++rep) {  // twice: the single-launch layer's barrier word is reused
                    if (rt->enqueue(pin, pout, inputs, outputs, d_ws, stream) != 0)
                        throw std::runtime_error("enqueue failed");
                    check(cudaStreamSynchronize(stream), "enqueue");
                }
                std::vector<double> y(rows * m);
                if (act == DataType::kHALF) {
                    std::vector<__half> yh(y.size());
                    check(cudaMemcpy(yh.data(), d_y, yh.size() * 2, cudaMemcpyDeviceToHost), "y copy");
                    for (size_t i = 0; i < y.size(); ++i) y[i] = __half2float(yh[i]);
                } else {
                    std::vector<float> yf(y.size());
                    check(cudaMemcpy(yf.data(), d_y, yf.size() * 4, cudaMemcpyDeviceToHost), "y copy");
                    for (size_t i = 0; i < y.size(); ++i) y[i] = yf[i];
                }
                double num = 0, den = 0;
                bool finite = true;
                for (size_t i = 0; i < y.size(); ++i) {
                    finite = finite && std::isfinite(y[i]);
                    num += (y[i] - ref[i]) * (y[i] - ref[i]);
                    den += ref[i] * ref[i];
                }
                const double err = std::sqrt(num / den);
                const bool ok = finite && err <= tol;
                failures += !ok;
                std::printf(
                    "case %-12s rows %6lld %s scale %s workspace %10zu B  tactic %d  rel_err %.3e  tolerance %.3e  "
                    "%s\n",
                    name.c_str(), static_cast<long long>(rows), act == DataType::kHALF ? "fp16" : "fp32",
                    scale_fp16 ? "fp16" : "fp32", ws_bytes, tactic, err, tol, ok ? "ok" : "FAILED");
                check(cudaMemset(d_y, 0xFF, rows * m * esize), "y NaN");  // the next tactic writes it all again
            }
            cudaFree(d_x);
            cudaFree(d_y);
            cudaFree(d_ws);
        }
        delete context;
        delete deserialized;
        delete built;
        std::printf(failures ? "%d case(s) FAILED\n" : "ok\n", failures);
        return failures ? 1 : 0;
    } catch (std::exception const& e) {
        std::fprintf(stderr, "plugin_glue_check: %s\n", e.what());
        return 1;
    }
}
