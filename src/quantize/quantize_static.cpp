// QuantizeInt8::run in named steps: plan on the prepared frozen graph,
// calibrate, drop islands where int8 loses to float, rewrite, measure, report.

#include <cmath>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "pare/quantize/quantize.hpp"
#include "quantize/engine_scope.hpp"
#include "quantize/quantize_pass.hpp"
#include "core/torch_errors.hpp"

namespace pare {
namespace {

using detail::QuantPlan;
using detail::QuantStep;
using nlohmann::json;
using torch::jit::IValue;
using torch::jit::Value;

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

// Calibration batches observed before the held-out one: one fewer than the
// source holds when it holds two or more; -1 if unknown.
int64_t calibration_total(const CalibrationData& data) {
  const int64_t n = data.size();
  return n >= 2 ? n - 1 : n;
}

// The prepared frozen float model and its int8 plan.
struct Planned {
  torch::jit::Module module;
  std::shared_ptr<torch::jit::Graph> graph;
  QuantPlan plan;
};

Planned plan_model(const torch::jit::Module& model, const QuantizeInt8Options& options) {
  Planned p;
  p.module = detail::frozen_copy(model, "QuantizeInt8");
  p.graph = p.module.get_method("forward").graph();
  detail::prepare_for_int8(p.graph);
  p.plan = detail::plan_static(*p.graph, options.skip());
  std::vector<std::string> float_names;
  for (const auto& f : p.plan.float_layers) float_names.push_back(f.name + " (" + f.reason + ")");
  const bool any = std::any_of(p.plan.steps.begin(), p.plan.steps.end(),
                               [](const QuantStep& s) { return s.kind == QuantStep::Kind::Layer; });
  require(any, "QuantizeInt8: no Linear/Conv1d/Conv2d layer can be quantized; layers: " + detail::join(float_names));
  return p;
}

struct Calibrated {
  std::map<Value*, QuantParams> activations;
  std::vector<IValue> sqnr_inputs;  ///< the held-out batch, else the last calibration batch
  bool held_out = false;
  int64_t batches = 0, samples = 0;
  std::vector<IValue> reference;  ///< the float model's outputs on sqnr_inputs, then each observed value
};

void observe_batch(const std::vector<IValue>& values, size_t outputs, const QuantPlan& plan,
                   std::vector<std::unique_ptr<Observer>>& observers, int64_t batch) {
  for (size_t i = 0; i < observers.size(); ++i) {
    const auto what = plan.observed[i].second;
    const auto tensor = float_tensor(values[outputs + i], what + " (batch " + std::to_string(batch) + ")");
    try {
      observers[i]->observe(tensor.data_ptr<float>(), tensor.numel());
    } catch (const Error& e) {
      throw Error("QuantizeInt8: calibration batch " + std::to_string(batch) + ": the " + what + " " + e.what() +
                      "; calibration data must be finite",
                  Error::Kind::Runtime);
    }
  }
}

// Runs the float graph, returning every observed value, over the batches.
Calibrated calibrate(const Planned& p, const QuantizeInt8Options& options) {
  std::vector<Value*> observed;
  for (const auto& [value, what] : p.plan.observed) observed.push_back(value);
  const size_t outputs = p.graph->outputs().size();
  GraphRunner runner(detail::graph_returning(*p.graph, observed), p.module._ivalue());
  std::vector<std::unique_ptr<Observer>> observers;
  for (size_t i = 0; i < observed.size(); ++i) observers.push_back(make_observer(options.observer()));

  Calibrated c;
  const auto next = options.calibration().open(0);
  std::optional<std::vector<IValue>> pending = next(), held_out;
  require(pending.has_value(), "QuantizeInt8: the calibration data yielded no batches; expected at least one");
  while (pending) {
    auto following = next();
    if (!following && c.batches > 0) {
      held_out = std::move(pending);
      break;
    }
    observe_batch(runner.run(*pending, c.batches, "float"), outputs, p.plan, observers, c.batches);
    if (!pending->empty() && (*pending)[0].isTensor()) c.samples += (*pending)[0].toTensor().size(0);
    ++c.batches;
    c.sqnr_inputs = *pending;
    if (options.progress()) options.progress()(c.batches, calibration_total(options.calibration()));
    pending = std::move(following);
  }
  c.held_out = held_out.has_value();
  if (c.held_out) c.sqnr_inputs = *held_out;
  for (size_t i = 0; i < observed.size(); ++i)
    c.activations[observed[i]] = detail::activation_qparams(*observers[i], p.plan, observed[i]);
  detail::share_cat_qparams(p.plan, c.activations);
  if (!c.sqnr_inputs.empty()) c.reference = runner.run(c.sqnr_inputs, c.batches, "float");
  return c;
}

double sqnr_of(const IValue& ref, const IValue& approx) {
  if (!ref.isTensor() || !approx.isTensor()) return std::nan("");
  const auto a = ref.toTensor().contiguous().to(torch::kFloat), b = approx.toTensor().contiguous().to(torch::kFloat);
  return sqnr_db(a.data_ptr<float>(), b.data_ptr<float>(), a.numel());
}

// What the report says of a layer, read before the rewrite destroys its node.
struct LayerFacts {
  std::string name, kind, activation;
  int64_t parameters = 0, nonzeros = 0;
  QuantParams output;
};

struct Rewritten {
  std::vector<LayerFacts> layers;
  std::vector<std::pair<double, double>> weight_scales;  ///< per Layer step
  std::vector<double> layer_sqnr;                        ///< per Layer step; NaN without a reference
  double output_sqnr = std::nan("");
  int64_t conv_add_fused = 0;
};

// Rewrites the graph to int8 and measures each layer's and the output's SQNR
// against the float reference on the same batch.
Rewritten rewrite(Planned& p, const Calibrated& c, const QuantizeInt8Options& options,
                  const std::vector<torch::jit::Node*>& dynamic) {
  Rewritten r;
  std::vector<Value*> float_outputs;
  for (const auto& step : p.plan.steps) {
    if (step.kind != QuantStep::Kind::Layer) continue;
    float_outputs.push_back(step.output());
    const auto weight = torch::jit::toIValue(step.node->input(1))->toTensor();
    r.layers.push_back({step.name, step.layer_kind,
                        step.activation ? step.activation->node->kind().toUnqualString() : "none", weight.numel(),
                        weight.count_nonzero().item<int64_t>(), c.activations.at(step.output())});
  }
  const auto layer_outputs =
      detail::rewrite_static(*p.graph, p.plan, c.activations, options.per_channel(), r.weight_scales);
  detail::rewrite_linear_dynamic(*p.graph, dynamic,
                                 options.per_channel());  // before measuring: the output SQNR covers them
  GraphRunner measure(detail::graph_returning(*p.graph, layer_outputs), p.module._ivalue());
  torch::jit::EliminateDeadCode(p.graph);  // the layer outputs' dequantize nodes, kept for `measure` alone
  // After the copy: a layer output read for its SQNR has a second reader, which no fused conv may have.
  r.conv_add_fused = options.fold_residual_adds() ? detail::fuse_conv_add(*p.graph) : 0;
  r.layer_sqnr.assign(layer_outputs.size(), std::nan(""));
  if (c.reference.empty()) return r;
  const auto quantized = measure.run(c.sqnr_inputs, c.batches, "quantized");
  const size_t outputs = p.graph->outputs().size();
  for (size_t i = 0; i < float_outputs.size(); ++i) {
    size_t at = 0;
    while (p.plan.observed[at].first != float_outputs[i]) ++at;
    r.layer_sqnr[i] = sqnr_of(c.reference[outputs + at], quantized[outputs + i]);
  }
  // The output's SQNR is the final graph's own: a fused add skips the conv's int8 rounding.
  r.output_sqnr = sqnr_of(c.reference[0], r.conv_add_fused == 0
                                              ? quantized[0]
                                              : GraphRunner(detail::graph_returning(*p.graph, {}), p.module._ivalue())
                                                    .run(c.sqnr_inputs, c.batches, "fused")[0]);
  return r;
}

void report_layers(const Rewritten& r, const QuantizeInt8Options& options, PassReport& entry, json& record) {
  const auto observer = to_string(options.observer().kind());
  for (size_t i = 0; i < r.layers.size(); ++i) {
    const auto& facts = r.layers[i];
    LayerReport layer;
    layer.name = facts.name;
    layer.parameters = facts.parameters;
    layer.nonzeros = facts.nonzeros;
    layer.labels = {{"status", "int8"},
                    {"kind", facts.kind},
                    {"observer", observer},
                    {"relu", facts.activation == "relu" ? "fused" : "none"},
                    {"activation", facts.activation}};
    layer.metrics = {{"scale", facts.output.scale},
                     {"zero_point", double(facts.output.zero_point)},
                     {"weight_scale_min", r.weight_scales[i].first},
                     {"weight_scale_max", r.weight_scales[i].second}};
    if (!std::isnan(r.layer_sqnr[i])) layer.metrics["sqnr_db"] = r.layer_sqnr[i];
    record["layers"].push_back(
        {{"name", layer.name}, {"scale", facts.output.scale}, {"zero_point", facts.output.zero_point}});
    entry.layers.push_back(std::move(layer));
  }
  entry.metrics["layers_int8"] = double(r.layers.size());
}

// Float ops between int8 ones (each costs a dequantize, and a quantize after).
void report_float_ops(const QuantPlan& plan, PassReport& entry, json& record) {
  std::map<std::string, int64_t> count;
  for (const auto& op : plan.float_ops) count[op.kind + ": " + op.reason]++;
  std::vector<std::string> islands;
  for (const auto& [what, n] : count) {
    islands.push_back(what + (n > 1 ? " (x" + std::to_string(n) + ")" : ""));
    record["float_ops"].push_back({{"op", what}, {"count", n}});
  }
  entry.labels["float_ops"] = detail::join(islands);
  entry.metrics["float_ops"] = double(plan.float_ops.size());
}

// The plan's last changes, before the rewrite: layers back to float for the
// accuracy budget (max_drop), then islands back to float where int8 is slower
// (never_slower), or to dynamic int8 where that is faster (try_dynamic).
struct Choice {
  std::optional<detail::AccuracyCheck> accuracy;  ///< when there is an evaluation
  std::optional<detail::SpeedCheck> speed;        ///< with never_slower
};

Choice choose_plan(Planned& p, const Calibrated& c, const QuantizeInt8Options& options, PassReport& entry,
                   json& record) {
  Choice choice;
  auto& accuracy = choice.accuracy;
  if (!options.evaluate().empty()) {
    auto budget = options;
    if (!budget.max_drop()) budget.max_drop(INFINITY);  // evaluate alone: measure, change nothing
    accuracy = detail::meet_accuracy_budget(p.module, *p.graph, p.plan, c.activations, c.sqnr_inputs, budget);
    p.plan = accuracy->plan;
  }
  if (options.never_slower() && !c.sqnr_inputs.empty()) {
    std::vector<std::vector<IValue>> batches;
    for (int64_t rows : options.batch_sizes()) batches.push_back(detail::with_batch_size(c.sqnr_inputs, rows));
    if (batches.empty()) batches.push_back(c.sqnr_inputs);
    choice.speed = detail::drop_slower_islands(p.module, *p.graph, p.plan, c.activations, batches,
                                               options.per_channel(), options.try_dynamic());
    p.plan = choice.speed->plan;
    detail::report_speed(*choice.speed, entry, record);
  }
  return choice;
}

}  // namespace

QuantizeInt8::QuantizeInt8(QuantizeInt8Options options) : options_(std::move(options)) {
  require(!options_.calibration().in_memory() || !options_.calibration().batches().empty(),
          "QuantizeInt8: no calibration batches; expected at least one batch of representative inputs in "
          "QuantizeInt8Options(calibration)");
  options_.observer().validate();
  detail::check_engine(options_.engine());  // validates early, switches nothing
  for (int64_t rows : options_.batch_sizes())
    require(rows > 0, "QuantizeInt8: batch_sizes must be positive; got " + std::to_string(rows));
  if (const auto& budget = options_.max_drop()) {
    require(std::isfinite(*budget) && *budget >= 0,
            "QuantizeInt8: max_drop must be a finite number of points >= 0; got " + std::to_string(*budget));
    require(!options_.evaluate().empty(),
            "QuantizeInt8: max_drop needs evaluate(labelled batches or an accuracy callback) to measure accuracy");
  }
}

void QuantizeInt8::run(Result& state, PassReport& entry) const {
  const detail::EngineScope engine_scope(options_.engine(), "QuantizeInt8");
  const std::string& engine = engine_scope.engine();
  torch::NoGradGuard no_grad;
  auto planned = plan_model(state.module, options_);
  const auto calibrated = calibrate(planned, options_);
  json record{{"format", "pare.quantization/1"},
              {"engine", engine},
              {"mode", "static"},
              {"observer", to_string(options_.observer().kind())},
              {"per_channel", options_.per_channel()},
              {"layers", json::array()},
              {"float_layers", json::array()},
              {"float_ops", json::array()}};
  const auto [accuracy, speed] = choose_plan(planned, calibrated, options_, entry, record);
  const auto rewritten =
      rewrite(planned, calibrated, options_, speed ? speed->dynamic : std::vector<torch::jit::Node*>{});
  report_layers(rewritten, options_, entry, record);
  detail::add_float_layers(planned.plan.float_layers, entry, record);
  detail::report_forms(speed ? &*speed : nullptr, entry, record);
  if (accuracy) {
    auto evaluated = detail::reloaded(planned.module, "QuantizeInt8");  // a copy: the result stays unspecialised
    detail::report_accuracy(*accuracy, options_.evaluate()(evaluated), options_.max_drop(), entry, record);
  }
  report_float_ops(planned.plan, entry, record);
  entry.labels["engine"] = engine;
  entry.labels["observer"] = to_string(options_.observer().kind());
  entry.labels["weights"] = options_.per_channel() ? "per_channel_symmetric" : "per_tensor_symmetric";
  entry.labels["sqnr_batch"] = calibrated.held_out ? "held-out (last batch)" : "calibration (only one batch)";
  entry.metrics["calibration_batches"] = double(calibrated.batches);
  entry.metrics["calibration_samples"] = double(calibrated.samples);
  if (!std::isnan(rewritten.output_sqnr)) entry.metrics["output_sqnr_db"] = rewritten.output_sqnr;
  entry.metrics["conv_add_fused"] = double(rewritten.conv_add_fused);
  state.module = detail::reloaded(planned.module, "QuantizeInt8");
  state.extra_files[kQuantizationExtraFile] = record.dump(2);
}

}  // namespace pare
