// QuantizeInt8Options::max_drop: an accuracy budget for static int8. Layers
// are ranked by how much their int8 alone hurts the model's output (output
// SQNR against float, on the held-out batch, with only that layer in int8),
// and the most sensitive go back to float until the measured accuracy is
// within the budget (the fewest such layers, found by doubling and then
// bisecting their count).

#include <cmath>

#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "pare/quantize/quantize.hpp"
#include "quantize/quantize_pass.hpp"

namespace pare {

namespace {

double top1(torch::jit::Module& module, const std::vector<LabelledBatch>& batches) {
  int64_t correct = 0, total = 0;
  for (size_t b = 0; b < batches.size(); ++b) {
    const auto output = module.forward(batches[b].first);
    const auto& labels = batches[b].second;
    require(output.isTensor() && output.toTensor().dim() == 2 && output.toTensor().size(0) == labels.size(0),
            "QuantizeInt8 evaluate: batch " + std::to_string(b) + ": the model's output is not a [rows, classes] "
            "tensor with one row per label; pass a callback to evaluate() for other outputs",
            Error::Kind::Runtime);
    correct += output.toTensor().argmax(1).eq(labels).sum().item<int64_t>();
    total += labels.size(0);
  }
  return 100.0 * double(correct) / double(total);
}

}  // namespace

Evaluation::Evaluation(std::vector<LabelledBatch> batches) {
  require(!batches.empty(), "QuantizeInt8 evaluate: no labelled batches; expected at least one (inputs, labels) pair");
  for (size_t b = 0; b < batches.size(); ++b) {
    const auto& labels = batches[b].second;
    require(labels.defined() && labels.dim() == 1 && labels.scalar_type() == torch::kLong && labels.size(0) > 0,
            "QuantizeInt8 evaluate: batch " + std::to_string(b) +
                ": labels must be a non-empty 1-D int64 tensor of class indices");
  }
  auto shared = std::make_shared<const std::vector<LabelledBatch>>(std::move(batches));
  accuracy_ = [shared](torch::jit::Module& module) { return top1(module, *shared); };
}

double Evaluation::operator()(torch::jit::Module& module) const {
  require(!empty(), "QuantizeInt8 evaluate: no labelled batches or callback given");
  const double accuracy = accuracy_(module);
  require(std::isfinite(accuracy), "QuantizeInt8 evaluate: the accuracy callback returned a non-finite value",
          Error::Kind::Runtime);
  return accuracy;
}

namespace detail {
namespace {

using torch::jit::IValue;

torch::Tensor first_tensor(const IValue& value) {
  if (value.isTensor()) return value.toTensor();
  if (value.isTuple() && !value.toTupleRef().elements().empty()) return first_tensor(value.toTupleRef().elements()[0]);
  if (value.isList() && value.toListRef().size() > 0) return first_tensor(value.toListRef()[0]);
  return {};
}

double output_sqnr(const torch::Tensor& reference, torch::jit::Module module, const std::vector<IValue>& inputs) {
  const auto out = first_tensor(module.forward(inputs));
  if (!reference.defined() || !out.defined()) return std::nan("");
  const auto a = reference.contiguous().to(torch::kFloat), b = out.contiguous().to(torch::kFloat);
  return sqnr_db(a.data_ptr<float>(), b.data_ptr<float>(), a.numel());
}

// The steps that run layer `i` in int8 alone: itself, when its input's range
// was observed (it then quantizes its float input). Empty otherwise: an input
// carried in int8 from another op (a max-pool of a conv's output) has no range
// of its own, and the layer is ranked after the measured ones.
std::vector<size_t> alone(const QuantPlan& plan, size_t i, const std::map<Value*, QuantParams>& activations) {
  if (!activations.count(plan.steps[i].node->input(0))) return {};
  return {i};
}

// Per layer: the model's output SQNR on `inputs` with that layer alone in int8.
std::map<std::string, double> sensitivities(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                                            const std::map<Value*, QuantParams>& activations,
                                            const std::vector<IValue>& inputs, bool per_channel) {
  const auto reference = first_tensor(reloaded(frozen, "QuantizeInt8").forward(inputs));
  std::map<std::string, double> out;
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (plan.steps[i].kind != QuantStep::Kind::Layer) continue;
    const auto steps = alone(plan, i, activations);
    if (steps.empty()) continue;
    QuantPlan single = plan;
    single.steps.clear();
    for (size_t j : steps) single.steps.push_back(plan.steps[j]);
    out[plan.steps[i].name] = output_sqnr(reference, variant(frozen, graph, single, activations, per_channel), inputs);
  }
  return out;
}

}  // namespace

QuantPlan without_layers(const QuantPlan& plan, const std::set<std::string>& layers,
                         const std::map<Value*, QuantParams>& activations, const std::string& reason) {
  QuantPlan out = plan;
  out.steps.clear();
  std::set<Value*> int8;
  for (const auto& step : plan.steps) {
    bool keep = !(step.kind == QuantStep::Kind::Layer && layers.count(step.name));
    const auto inputs = step.int8_inputs();
    bool any_int8 = false;
    for (Value* in : inputs) {
      any_int8 = any_int8 || int8.count(in);
      // Carried ops need an int8 input; others quantize a float one, if its range was observed.
      keep = keep && (int8.count(in) || (step.kind != QuantStep::Kind::Carry && activations.count(in)));
    }
    keep = keep && (step.kind == QuantStep::Kind::Layer || any_int8);  // a join of float values stays float
    if (keep) {
      out.steps.push_back(step);
      int8.insert(step.output());
    } else if (step.kind == QuantStep::Kind::Layer) {
      out.float_layers.push_back({step.name, step.layer_kind, reason});
    } else {
      out.float_ops.push_back({step.node->kind().toQualString(), step.node->kind().toQualString(), reason});
    }
  }
  return out;
}

AccuracyCheck meet_accuracy_budget(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                                   const std::map<Value*, QuantParams>& activations,
                                   const std::vector<IValue>& held_out, const QuantizeInt8Options& options) {
  AccuracyCheck check;
  check.plan = plan;
  auto fp32 = reloaded(frozen, "QuantizeInt8");
  check.fp32 = options.evaluate()(fp32);
  const auto accuracy_of = [&](const QuantPlan& p) {
    auto module = variant(frozen, graph, p, activations, options.per_channel());
    ++check.evaluations;
    return options.evaluate()(module);
  };
  check.plain_int8 = accuracy_of(plan);
  const double budget = *options.max_drop();
  if (check.fp32 - check.plain_int8 <= budget) return check;
  check.sensitivity = sensitivities(frozen, graph, plan, activations, held_out, options.per_channel());
  std::vector<std::string> order;  // most sensitive (lowest SQNR) first; unmeasured last
  for (const auto& step : plan.steps)
    if (step.kind == QuantStep::Kind::Layer) order.push_back(step.name);
  const auto sqnr = [&](const std::string& name) {
    const auto it = check.sensitivity.find(name);
    return it == check.sensitivity.end() || std::isnan(it->second) ? INFINITY : it->second;
  };
  std::stable_sort(order.begin(), order.end(), [&](const auto& a, const auto& b) { return sqnr(a) < sqnr(b); });
  const std::string reason = "kept float: accuracy budget (max_drop)";
  const auto first = [&](size_t k) {
    return without_layers(plan, std::set<std::string>(order.begin(), order.begin() + long(k)), activations, reason);
  };
  // The fewest most-sensitive layers in float that meet the budget: double, then bisect.
  size_t fails = 0, holds = order.size();
  std::map<size_t, double> tried{{0, check.plain_int8}};
  for (size_t k = 1; k < order.size(); k *= 2) {
    tried[k] = accuracy_of(first(k));
    if (check.fp32 - tried[k] <= budget) { holds = k; break; }
    fails = k;
  }
  while (holds - fails > 1) {
    const size_t mid = (fails + holds) / 2;
    tried[mid] = accuracy_of(first(mid));
    (check.fp32 - tried[mid] <= budget ? holds : fails) = mid;
  }
  check.plan = first(holds);
  check.fallen_back.assign(order.begin(), order.begin() + long(holds));
  check.tried = tried;
  return check;
}

void report_accuracy(const AccuracyCheck& check, double final_accuracy, std::optional<double> max_drop,
                     PassReport& entry, nlohmann::json& record) {
  entry.metrics["accuracy_fp32"] = check.fp32;
  entry.metrics["accuracy_int8"] = final_accuracy;
  entry.metrics["accuracy_drop"] = check.fp32 - final_accuracy;
  entry.metrics["accuracy_plain_int8"] = check.plain_int8;
  entry.metrics["plain_int8_drop"] = check.fp32 - check.plain_int8;
  entry.metrics["accuracy_evaluations"] = double(check.evaluations);
  entry.metrics["layers_float_for_accuracy"] = double(check.fallen_back.size());
  if (max_drop) entry.metrics["max_drop"] = *max_drop;
  entry.labels["accuracy_fallback"] = join(check.fallen_back);
  for (auto& layer : entry.layers)
    if (const auto it = check.sensitivity.find(layer.name); it != check.sensitivity.end() && std::isfinite(it->second))
      layer.metrics["sensitivity_sqnr_db"] = it->second;
  auto& out = record["accuracy"];
  out = {{"fp32", check.fp32}, {"int8", final_accuracy}, {"plain_int8", check.plain_int8},
         {"float_for_accuracy", check.fallen_back}, {"tried", nlohmann::json::array()}};
  if (max_drop) out["max_drop"] = *max_drop;
  for (const auto& [k, accuracy] : check.tried) out["tried"].push_back({{"layers_float", k}, {"accuracy", accuracy}});
}

}  // namespace detail
}  // namespace pare
