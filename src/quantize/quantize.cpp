#include "pare/quantize/quantize.hpp"

#include <sstream>

#include <ATen/Context.h>
#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/serialization/import.h>

#include "quantize/engine_scope.hpp"
#include "quantize/quantize_graph.hpp"
#include "quantize/quantize_pass.hpp"
#include "core/enum_names.hpp"
#include "core/torch_errors.hpp"

namespace pare {
namespace {

using nlohmann::json;
using torch::jit::IValue;

// The quantized engines by the names the options, the CLI, Python and the
// exported record use; NoQEngine is "none".
constexpr std::pair<at::QEngine, const char*> kEngineNames[] = {{at::QEngine::X86, "x86"},
                                                                {at::QEngine::FBGEMM, "fbgemm"},
                                                                {at::QEngine::ONEDNN, "onednn"},
                                                                {at::QEngine::QNNPACK, "qnnpack"},
                                                                {at::QEngine::NoQEngine, "none"}};

std::string engine_name(at::QEngine engine) { return detail::name_of(kEngineNames, engine); }

}  // namespace

namespace detail {

// Freezes a private copy: eval mode, weights inlined, BatchNorm folded into
// the convolutions. "training" survives so later passes (ExportTorchScript's
// freeze) can call eval() on the result.
torch::jit::Module frozen_copy(const torch::jit::Module& module, const std::string& pass) {
  return translate_torch_errors(pass + ": torch::jit::freeze failed on the model", [&] {
    auto copy = module.clone();
    std::vector<std::string> keep;
    if (copy.hasattr("training")) {
      copy.eval();
      keep.push_back("training");
    }
    return torch::jit::freeze(copy, keep, /*optimize_numerics=*/true);
  });
}

void add_float_layers(const std::vector<detail::FloatLayer>& layers, PassReport& entry, json& record) {
  for (const auto& f : layers) {
    LayerReport layer;
    layer.name = f.name;
    layer.labels = {{"status", "float"}, {"reason", f.reason}, {"kind", f.kind}};
    entry.layers.push_back(layer);
    record["float_layers"].push_back({{"name", f.name}, {"reason", f.reason}});
  }
  entry.metrics["layers_float"] = double(layers.size());
}

}  // namespace detail

std::vector<std::string> available_quantized_engines() {
  std::vector<std::string> preference = {"x86", "fbgemm", "onednn", "qnnpack"};
#if defined(__aarch64__) || defined(__arm__)
  preference = {"qnnpack", "onednn", "x86", "fbgemm"};
#endif
  std::vector<std::string> out;
  for (const auto& wanted : preference)
    for (auto engine : at::globalContext().supportedQEngines())
      if (engine_name(engine) == wanted) out.push_back(wanted);
  return out;
}

std::string current_quantized_engine() { return engine_name(at::globalContext().qEngine()); }

void set_quantized_engine(const std::string& engine) {
  for (auto candidate : at::globalContext().supportedQEngines()) {
    if (engine_name(candidate) != engine || candidate == at::QEngine::NoQEngine) continue;
    at::globalContext().setQEngine(candidate);
    return;
  }
  throw Error("quantized engine '" + engine + "' is not available in this LibTorch; available: " +
              detail::join(available_quantized_engines()));
}

namespace detail {
// Validates an engine name at construction without switching to it.
void check_engine(const std::string& engine) {
  if (engine.empty()) return;
  const auto engines = available_quantized_engines();
  require(std::find(engines.begin(), engines.end(), engine) != engines.end(),
          "quantized engine '" + engine + "' is not available in this LibTorch; available: " + join(engines));
}
}  // namespace detail

using detail::add_float_layers;
using detail::frozen_copy;
using detail::join;
using detail::reloaded;
using detail::check_engine;

QuantizeInt8Dynamic::QuantizeInt8Dynamic(QuantizeInt8DynamicOptions options) : options_(std::move(options)) {
  check_engine(options_.engine());
}

void QuantizeInt8Dynamic::run(Result& state, PassReport& entry) const {
  const detail::EngineScope engine_scope(options_.engine(), "QuantizeInt8Dynamic");
  const std::string& engine = engine_scope.engine();
  torch::NoGradGuard no_grad;
  auto module = frozen_copy(state.module, "QuantizeInt8Dynamic");
  auto graph = module.get_method("forward").graph();
  std::vector<detail::FloatLayer> float_layers;
  const auto done = detail::rewrite_dynamic(*graph, options_.skip(), options_.per_channel(), float_layers);
  std::vector<std::string> float_names;
  for (const auto& f : float_layers) float_names.push_back(f.name + " (" + f.reason + ")");
  require(!done.empty(), "QuantizeInt8Dynamic: no Linear layer can be quantized; layers: " + join(float_names));
  torch::jit::EliminateDeadCode(graph);
  json record{{"format", "pare.quantization/1"}, {"engine", engine}, {"mode", "dynamic"},
              {"per_channel", options_.per_channel()}, {"layers", json::array()}, {"float_layers", json::array()}};
  for (const auto& name : done) {
    LayerReport layer;
    layer.name = name;
    layer.labels = {{"status", "int8 dynamic"}, {"kind", "Linear"}};
    entry.layers.push_back(layer);
    record["layers"].push_back({{"name", name}});
  }
  add_float_layers(float_layers, entry, record);
  entry.labels = {{"engine", engine}, {"weights", options_.per_channel() ? "per_channel_symmetric" : "per_tensor_symmetric"}};
  entry.metrics["layers_int8"] = double(done.size());
  state.module = reloaded(module, "QuantizeInt8Dynamic");
  state.extra_files[kQuantizationExtraFile] = record.dump(2);
}

std::optional<QuantizationInfo> read_quantization_info(const std::string& path) {
  std::string text;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string record = std::string("extra/") + kQuantizationExtraFile;
    if (!reader.hasRecord(record)) return std::nullopt;
    auto [data, size] = reader.getRecord(record);
    text.assign(static_cast<const char*>(data.get()), size);
  } catch (const std::exception& e) {
    throw Error("'" + path + "' is not a readable TorchScript file: " + e.what());
  }
  try {
    const auto doc = json::parse(text);
    return QuantizationInfo{doc.at("engine").get<std::string>(), doc.at("mode").get<std::string>(), text};
  } catch (const json::exception& e) {
    throw Error("'" + path + "' has a malformed " + kQuantizationExtraFile + ": " + e.what());
  }
}

std::string engine_mismatch_warning(const QuantizationInfo& info) {
  const auto running = current_quantized_engine();
  if (info.engine == running) return "";
  const auto engines = available_quantized_engines();
  const bool available = std::find(engines.begin(), engines.end(), info.engine) != engines.end();
  return "this int8 model was quantized for the '" + info.engine + "' engine but the running quantized engine is '" +
         running + "'; its weights are repacked for '" + running + "' and results and speed may differ" +
         (available ? " (call pare::set_quantized_engine(\"" + info.engine + "\") before loading)"
                    : " ('" + info.engine + "' is not available here; available: " + join(engines) + ")");
}

torch::jit::Module load_quantized(const std::string& path, bool switch_engine) {
  if (const auto info = read_quantization_info(path)) {
    const auto engines = available_quantized_engines();
    if (switch_engine && std::find(engines.begin(), engines.end(), info->engine) != engines.end())
      set_quantized_engine(info->engine);
    const auto warning = engine_mismatch_warning(*info);
    if (!warning.empty()) TORCH_WARN("pare: ", warning);
  }
  try {
    return torch::jit::load(path);
  } catch (const std::exception& e) {
    throw Error("could not load '" + path + "': " + e.what(), Error::Kind::Runtime);
  }
}

}  // namespace pare
