#include "pare/quantize.hpp"

#include <sstream>

#include <ATen/Context.h>
#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/serialization/import.h>

#include "engine_scope.hpp"
#include "quantize_graph.hpp"
#include "torch_errors.hpp"

namespace pare {
namespace {

using nlohmann::json;
using torch::jit::IValue;

std::string engine_name(at::QEngine engine) {
  switch (engine) {
    case at::QEngine::X86: return "x86";
    case at::QEngine::FBGEMM: return "fbgemm";
    case at::QEngine::ONEDNN: return "onednn";
    case at::QEngine::QNNPACK: return "qnnpack";
    default: return "none";
  }
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out.empty() ? "(none)" : out;
}

// Freezes a private copy: eval mode, weights inlined, BatchNorm folded into
// the convolutions. "training" survives so later passes (ExportTorchScript's
// freeze) can call eval() on the result.
torch::jit::Module frozen_copy(const torch::jit::Module& module, const std::string& pass) {
  return detail::translate_torch_errors(pass + ": torch::jit::freeze failed on the model", [&] {
    auto copy = module.clone();
    std::vector<std::string> keep;
    if (copy.hasattr("training")) {
      copy.eval();
      keep.push_back("training");
    }
    return torch::jit::freeze(copy, keep, /*optimize_numerics=*/true);
  });
}

// A fresh module from serialized bytes: the edited graph gets a new execution
// plan, and a module that cannot be saved fails here rather than at export.
torch::jit::Module reloaded(const torch::jit::Module& module, const std::string& pass) {
  return detail::translate_torch_errors(pass + ": the quantized model failed to save and reload", [&] {
    std::stringstream bytes;
    module.save(bytes);
    return torch::jit::load(bytes);
  });
}

// Runs a graph (self first) on batches; one executor across calls.
class GraphRunner {
 public:
  GraphRunner(std::shared_ptr<torch::jit::Graph> graph, IValue self)
      : function_("pare_quantize", std::move(graph), nullptr), self_(std::move(self)) {}

  std::vector<IValue> run(const std::vector<IValue>& inputs, int64_t batch, const char* which) {
    torch::jit::Stack stack{self_};
    stack.insert(stack.end(), inputs.begin(), inputs.end());
    try {
      function_.getSchema().checkAndNormalizeInputs(stack);
      function_.run(stack);
    } catch (const std::exception& e) {
      throw Error("QuantizeInt8: calibration batch " + std::to_string(batch) + " failed in the " + which +
                      " model: " + detail::torch_message(e),
                  Error::Kind::Runtime);
    }
    return stack.at(0).toTupleRef().elements().vec();
  }

 private:
  torch::jit::GraphFunction function_;
  IValue self_;
};

torch::Tensor float_tensor(const IValue& value, const std::string& what) {
  require(value.isTensor() && value.toTensor().scalar_type() == torch::kFloat,
          "QuantizeInt8: the " + what + " is not a float32 tensor; only float32 activations can be quantized",
          Error::Kind::Runtime);
  return value.toTensor().contiguous();
}

// Pulls batches from a vector or a source, keeping one back: when two or
// more arrive, the last is held out for SQNR and not observed.
class BatchStream {
 public:
  explicit BatchStream(const QuantizeOptions& options) : options_(options) {}
  int64_t calibration_total() const {
    const auto n = int64_t(options_.batches().size());
    return options_.source() ? -1 : n >= 2 ? n - 1 : n;
  }
  std::optional<std::vector<IValue>> next() {
    if (options_.source()) return options_.source()();
    if (index_ >= options_.batches().size()) return std::nullopt;
    return options_.batches()[index_++];
  }

 private:
  const QuantizeOptions& options_;
  size_t index_ = 0;
};

struct LayerFacts {
  std::string name, kind;
  int64_t parameters = 0, nonzeros = 0;
  bool relu = false;
};

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

}  // namespace

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
              join(available_quantized_engines()));
}

namespace {
// Validates an engine name at construction without switching to it.
void check_engine(const std::string& engine) {
  if (engine.empty()) return;
  const auto engines = available_quantized_engines();
  require(std::find(engines.begin(), engines.end(), engine) != engines.end(),
          "quantized engine '" + engine + "' is not available in this LibTorch; available: " + join(engines));
}
}  // namespace

QuantizeInt8::QuantizeInt8(QuantizeOptions options) : options_(std::move(options)) {
  require(options_.source() || !options_.batches().empty(),
          "QuantizeInt8: no calibration data; pass batches of representative inputs with "
          "QuantizeOptions().calibration(...)");
  options_.observer().validate();
  check_engine(options_.engine());
}

void QuantizeInt8::run(Result& state, PassReport& entry) const {
  const detail::EngineScope engine_scope(options_.engine(), "QuantizeInt8");
  const std::string& engine = engine_scope.engine();
  torch::NoGradGuard no_grad;

  auto module = frozen_copy(state.module, "QuantizeInt8");
  auto graph = module.get_method("forward").graph();
  auto plan = detail::plan_static(*graph, options_.skip());
  std::vector<LayerFacts> facts;
  for (const auto& step : plan.steps) {
    if (step.kind != detail::QuantStep::Kind::Layer) continue;
    const auto weight = torch::jit::toIValue(step.node->input(1))->toTensor();
    facts.push_back({step.name, step.layer_kind, weight.numel(), weight.count_nonzero().item<int64_t>(),
                     step.relu != nullptr});
  }
  std::vector<std::string> float_names;
  for (const auto& f : plan.float_layers) float_names.push_back(f.name + " (" + f.reason + ")");
  require(!facts.empty(), "QuantizeInt8: no Linear/Conv1d/Conv2d layer can be quantized; layers: " +
                              join(float_names));

  // Calibration: a copy of the float graph that also returns every observed value.
  std::vector<torch::jit::Value*> observed;
  for (const auto& [value, what] : plan.observed) observed.push_back(value);
  const size_t outputs = graph->outputs().size();
  GraphRunner calibrate(detail::graph_returning(*graph, observed), module._ivalue());
  std::vector<std::unique_ptr<Observer>> observers;
  for (size_t i = 0; i < observed.size(); ++i) observers.push_back(make_observer(options_.observer()));

  BatchStream stream(options_);
  std::optional<std::vector<IValue>> pending = stream.next(), held_out;
  std::vector<IValue> last_calibrated;
  int64_t done = 0, samples = 0;
  require(pending.has_value(), "QuantizeInt8: the calibration source yielded no batches; expected at least one");
  while (pending) {
    auto following = stream.next();
    if (!following && done > 0) { held_out = std::move(pending); break; }
    const auto values = calibrate.run(*pending, done, "float");
    for (size_t i = 0; i < observed.size(); ++i) {
      const auto what = plan.observed[i].second;
      const auto tensor = float_tensor(values[outputs + i], what + " (batch " + std::to_string(done) + ")");
      try {
        observers[i]->observe(tensor.data_ptr<float>(), tensor.numel());
      } catch (const Error& e) {
        throw Error("QuantizeInt8: calibration batch " + std::to_string(done) + ": the " + what + " " +
                        e.what() + "; calibration data must be finite",
                    Error::Kind::Runtime);
      }
    }
    if (!pending->empty() && (*pending)[0].isTensor()) samples += (*pending)[0].toTensor().size(0);
    ++done;
    last_calibrated = *pending;
    if (options_.progress()) options_.progress()(done, stream.calibration_total());
    pending = std::move(following);
  }
  const bool held_out_batch = held_out.has_value();
  const auto sqnr_inputs = held_out_batch ? *held_out : last_calibrated;
  std::map<torch::jit::Value*, QuantParams> activations;
  for (size_t i = 0; i < observed.size(); ++i) activations[observed[i]] = observers[i]->qparams();
  std::vector<IValue> reference;
  if (!sqnr_inputs.empty()) reference = calibrate.run(sqnr_inputs, done, "float");

  // Which observed value is each layer's output: its index in the calibration outputs.
  std::vector<size_t> layer_value;
  for (const auto& step : plan.steps)
    if (step.kind == detail::QuantStep::Kind::Layer)
      layer_value.push_back(size_t(std::find(observed.begin(), observed.end(), step.output()) - observed.begin()));
  std::vector<QuantParams> layer_qparams;
  for (size_t i : layer_value) layer_qparams.push_back(activations.at(observed[i]));

  std::vector<std::pair<double, double>> weight_scales;
  const auto layer_outputs = detail::rewrite_static(*graph, plan, activations, options_.per_channel(), weight_scales);
  GraphRunner measure(detail::graph_returning(*graph, layer_outputs), module._ivalue());
  torch::jit::EliminateDeadCode(graph);

  std::vector<IValue> quantized;
  if (!reference.empty()) quantized = measure.run(sqnr_inputs, done, "quantized");
  const auto sqnr = [](const IValue& ref, const IValue& approx) {
    if (!ref.isTensor() || !approx.isTensor()) return std::nan("");
    const auto a = ref.toTensor().contiguous().to(torch::kFloat), b = approx.toTensor().contiguous().to(torch::kFloat);
    return sqnr_db(a.data_ptr<float>(), b.data_ptr<float>(), a.numel());
  };

  json record{{"format", "pare.quantization/1"}, {"engine", engine}, {"mode", "static"},
              {"observer", to_string(options_.observer().kind())}, {"per_channel", options_.per_channel()},
              {"layers", json::array()}, {"float_layers", json::array()}};
  for (size_t i = 0; i < facts.size(); ++i) {
    LayerReport layer;
    layer.name = facts[i].name;
    layer.parameters = facts[i].parameters;
    layer.nonzeros = facts[i].nonzeros;
    layer.labels = {{"status", "int8"}, {"kind", facts[i].kind}, {"observer", to_string(options_.observer().kind())},
                    {"relu", facts[i].relu ? "fused" : "none"}};
    layer.metrics = {{"scale", layer_qparams[i].scale}, {"zero_point", double(layer_qparams[i].zero_point)},
                     {"weight_scale_min", weight_scales[i].first}, {"weight_scale_max", weight_scales[i].second}};
    if (!quantized.empty()) layer.metrics["sqnr_db"] = sqnr(reference[outputs + layer_value[i]], quantized[outputs + i]);
    record["layers"].push_back({{"name", layer.name}, {"scale", layer_qparams[i].scale},
                                {"zero_point", layer_qparams[i].zero_point}});
    entry.layers.push_back(std::move(layer));
  }
  add_float_layers(plan.float_layers, entry, record);
  entry.labels = {{"engine", engine}, {"observer", to_string(options_.observer().kind())},
                  {"weights", options_.per_channel() ? "per_channel_symmetric" : "per_tensor_symmetric"},
                  {"sqnr_batch", held_out_batch ? "held-out (last batch)" : "calibration (only one batch)"}};
  entry.metrics["calibration_batches"] = double(done);
  entry.metrics["calibration_samples"] = double(samples);
  entry.metrics["layers_int8"] = double(facts.size());
  if (!quantized.empty()) entry.metrics["output_sqnr_db"] = sqnr(reference[0], quantized[0]);
  state.module = reloaded(module, "QuantizeInt8");
  state.extra_files[kQuantizationExtraFile] = record.dump(2);
}

QuantizeInt8Dynamic::QuantizeInt8Dynamic(QuantizeDynamicOptions options) : options_(std::move(options)) {
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
    throw Error("'" + path + "' is not a readable TorchScript file: " + detail::torch_message(e));
  }
  try {
    return parse_quantization_info(text);
  } catch (const Error& e) {
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
    throw Error("could not load '" + path + "': " + detail::torch_message(e), Error::Kind::Runtime);
  }
}

}  // namespace pare
