// "Never slower than fp32": int8 is not always faster (a small conv whose
// quantize/dequantize costs more than the conv, kernels weak on some shapes),
// so each island of int8 ops is timed alone against its float version, with
// the quantize and dequantize at its borders, at every batch size asked for;
// islands that lose stay float. Then the whole model is timed against float
// at each batch size, and while it is not faster, the islands that gained
// least go back to float, down to the float model itself.

#include <algorithm>
#include <cstdio>
#include <numeric>

#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "quantize/quantize_pass.hpp"

namespace pare::detail {
namespace {

using torch::jit::IValue;

constexpr int kIslandRuns = 9, kFileRuns = 9;

std::string first_of(const QuantPlan& plan, const std::vector<size_t>& island, size_t which) {
  for (size_t i = 0; i < plan.steps.size(); ++i)
    if (island[i] == which) return plan.steps[i].name;
  return "";
}

// The values every island reads from outside it, at each batch size.
std::vector<std::map<Value*, IValue>> island_inputs(const torch::jit::Module& frozen, Graph& graph,
                                                    const std::vector<std::vector<Value*>>& reads,
                                                    const std::vector<std::vector<IValue>>& batches) {
  std::vector<Value*> wanted;
  for (const auto& r : reads)
    for (Value* v : r)
      if (std::find(wanted.begin(), wanted.end(), v) == wanted.end()) wanted.push_back(v);
  torch::jit::GraphFunction function("pare_island_inputs", graph_returning(graph, wanted), nullptr);
  std::vector<std::map<Value*, IValue>> out;
  for (const auto& inputs : batches) {
    torch::jit::Stack stack{frozen._ivalue()};
    stack.insert(stack.end(), inputs.begin(), inputs.end());
    function.run(stack);
    const auto values = stack.at(0).toTupleRef().elements();
    std::map<Value*, IValue> by_value;
    for (size_t i = 0; i < wanted.size(); ++i) by_value[wanted[i]] = values[graph.outputs().size() + i];
    out.push_back(std::move(by_value));
  }
  return out;
}

// The island's float graph with its Linears as dynamic int8; null when it has none.
std::shared_ptr<Graph> dynamic_form(const IslandGraph& floats, bool per_channel) {
  auto graph = floats.graph->copy();
  std::vector<Node*> linears;
  for (Node* n : graph->nodes())
    if (layer_kind_of(n) == "Linear") linears.push_back(n);
  if (linears.empty()) return nullptr;
  rewrite_linear_dynamic(*graph, linears, per_channel);
  torch::jit::EliminateDeadCode(graph);
  return graph;
}

// What the island is and holds, before timing.
IslandTiming describe(const QuantPlan& plan, const std::vector<size_t>& island, size_t which) {
  IslandTiming t;
  t.first = first_of(plan, island, which);
  t.steps = size_t(std::count(island.begin(), island.end(), which));
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const auto& step = plan.steps[i];
    if (island[i] != which || step.layer_kind != "Linear") continue;
    t.linears.push_back(step.name);
    t.linear_nodes.push_back(step.node);
  }
  return t;
}

// The fastest form: an int8 one must beat float at every batch size (`*_loses`
// says where it did not); between static and dynamic, the lower total wins.
void choose_form(IslandTiming& t, bool static_loses, bool dynamic_loses) {
  const bool dynamic_wins = t.with_dynamic_ms >= 0 && !dynamic_loses;
  t.dynamic = dynamic_wins && (static_loses || t.with_dynamic_ms < t.with_int8_ms);
  t.kept_float = static_loses && !t.dynamic;
}

// Each island alone, float, static int8 and (with `try_dynamic`) dynamic int8, at every batch size.
std::vector<IslandTiming> time_islands(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                                       const std::map<Value*, QuantParams>& activations,
                                       const std::vector<std::vector<IValue>>& batches, bool per_channel,
                                       bool try_dynamic) {
  const auto island = island_of_steps(plan);
  const size_t count = island.empty() ? 0 : *std::max_element(island.begin(), island.end()) + 1;
  std::vector<IslandGraph> floats;
  std::vector<std::vector<std::shared_ptr<Graph>>> forms;  // float, static int8[, dynamic int8]
  std::vector<std::vector<Value*>> reads;
  for (size_t k = 0; k < count; ++k) {
    floats.push_back(island_graph(graph, plan, island, k, activations, false, per_channel));
    forms.push_back({floats.back().graph, island_graph(graph, plan, island, k, activations, true, per_channel).graph});
    if (auto dynamic = try_dynamic ? dynamic_form(floats.back(), per_channel) : nullptr)
      forms.back().push_back(dynamic);
    reads.push_back(floats.back().inputs);
  }
  const auto values = island_inputs(frozen, graph, reads, batches);
  std::vector<IslandTiming> timings;
  for (size_t k = 0; k < count; ++k) {
    IslandTiming t = describe(plan, island, k);
    bool static_loses = false, dynamic_loses = false;
    if (forms[k].size() > 2) t.with_dynamic_ms = 0;
    for (const auto& at_size : values) {
      std::vector<IValue> inputs;
      for (Value* v : floats[k].inputs) inputs.push_back(at_size.at(v));
      const auto ms = time_graphs(forms[k], inputs, kIslandRuns);
      t.with_float_ms += ms[0];
      t.with_int8_ms += ms[1];
      static_loses = static_loses || ms[1] >= ms[0];  // int8 must win at every batch size
      if (ms.size() > 2) t.with_dynamic_ms += ms[2], dynamic_loses = dynamic_loses || ms[2] >= ms[0];
    }
    choose_form(t, static_loses, dynamic_loses);
    timings.push_back(t);
  }
  return timings;
}

// `plan` without the islands not kept static, and the Linear nodes of the dynamic ones.
QuantPlan chosen_plan(const QuantPlan& plan, const std::vector<IslandTiming>& islands, std::vector<Node*>& dynamic) {
  std::set<size_t> dropped;
  std::set<std::string> dynamic_names;
  dynamic.clear();
  for (size_t k = 0; k < islands.size(); ++k) {
    if (!islands[k].kept_float && !islands[k].dynamic) continue;
    dropped.insert(k);
    if (!islands[k].dynamic) continue;
    dynamic.insert(dynamic.end(), islands[k].linear_nodes.begin(), islands[k].linear_nodes.end());
    dynamic_names.insert(islands[k].linears.begin(), islands[k].linears.end());
  }
  auto out = without_islands(plan, dropped, "kept float: int8 was slower here");
  auto& floats = out.float_layers;  // the dynamic Linears are reported as such, not as float
  floats.erase(std::remove_if(floats.begin(), floats.end(),
                              [&](const FloatLayer& f) { return dynamic_names.count(f.name) > 0; }),
               floats.end());
  return out;
}

// Whether the model per `plan` is faster than float at every batch size; fills `file`.
bool faster_as_file(const torch::jit::Module& frozen, Graph& graph, const SpeedCheck& check,
                    const std::map<Value*, QuantParams>& activations, const std::vector<std::vector<IValue>>& batches,
                    bool per_channel, std::vector<FileTiming>& file) {
  const auto int8 = variant(frozen, graph, check.plan, activations, per_channel, check.dynamic);
  file.clear();
  bool faster = true;
  for (const auto& inputs : batches) {
    auto [fp32, q] = time_modules(frozen, int8, inputs, kFileRuns);
    if (q >= fp32) std::tie(fp32, q) = time_modules(frozen, int8, inputs, 2 * kFileRuns);  // once more, longer
    const int64_t rows = inputs.empty() || !inputs[0].isTensor() ? -1 : inputs[0].toTensor().size(0);
    file.push_back({rows, fp32, q});
    faster = faster && q < fp32;
  }
  return faster;
}

std::string ms(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f ms", value);
  return text;
}

// Why a Linear of island `t` got `form`, with the times that decided it.
std::string why(const IslandTiming& t, const std::string& form) {
  std::string times = "float " + ms(t.with_float_ms) + ", static " + ms(t.with_int8_ms) +
                      (t.with_dynamic_ms >= 0 ? ", dynamic " + ms(t.with_dynamic_ms) : ", dynamic not timed");
  const std::string island = " (island of " + std::to_string(t.steps) + " ops from " + t.first + ": " + times + ")";
  if (t.file_fallback) return "the whole int8 file was not faster than float; this island gained least" + island;
  if (form == "float") return "no int8 form was faster than float at every batch size" + island;
  return form + " int8 fastest" + island;
}

// Adds a report entry for every Linear made dynamic.
void add_dynamic_layers(const SpeedCheck& speed, PassReport& entry, nlohmann::json& record) {
  for (const auto& t : speed.islands) {
    if (!t.dynamic) continue;
    for (const auto& name : t.linears) {
      LayerReport layer;
      layer.name = name;
      layer.labels = {{"status", "int8 dynamic"}, {"kind", "Linear"}};
      entry.layers.push_back(layer);
      record["dynamic_layers"].push_back({{"name", name}});
    }
  }
}

}  // namespace

torch::jit::Module variant(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                           const std::map<Value*, QuantParams>& activations, bool per_channel,
                           const std::vector<Node*>& dynamic) {
  auto copy = frozen.clone();
  auto copied = copy.get_method("forward").graph();
  const auto map = correspond(graph, *copied);
  std::map<Value*, QuantParams> copied_activations;
  for (const auto& [value, q] : activations) copied_activations[map.values.at(value)] = q;
  std::vector<std::pair<double, double>> scales;
  rewrite_static(*copied, translated(plan, map), copied_activations, per_channel, scales);
  std::vector<Node*> copied_dynamic;
  copied_dynamic.reserve(dynamic.size());
  for (Node* n : dynamic) copied_dynamic.push_back(map.nodes.at(n));
  rewrite_linear_dynamic(*copied, copied_dynamic, per_channel);
  torch::jit::EliminateDeadCode(copied);
  return reloaded(copy, "QuantizeInt8");
}

SpeedCheck drop_slower_islands(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                               const std::map<Value*, QuantParams>& activations,
                               const std::vector<std::vector<IValue>>& batches, bool per_channel, bool try_dynamic) {
  SpeedCheck check;
  check.islands = time_islands(frozen, graph, plan, activations, batches, per_channel, try_dynamic);
  std::vector<size_t> kept;  // islands in an int8 form, static or dynamic
  for (size_t k = 0; k < check.islands.size(); ++k)
    if (!check.islands[k].kept_float) kept.push_back(k);
  const auto gain = [&](size_t k) {  // float time / time of the chosen int8 form
    const auto& t = check.islands[k];
    return t.with_float_ms / (t.dynamic ? t.with_dynamic_ms : t.with_int8_ms);
  };
  // The weakest gain first: those go back first when the file loses.
  std::stable_sort(kept.begin(), kept.end(), [&](size_t a, size_t b) { return gain(a) < gain(b); });
  while (!kept.empty()) {
    check.plan = chosen_plan(plan, check.islands, check.dynamic);
    if (faster_as_file(frozen, graph, check, activations, batches, per_channel, check.file)) break;
    const size_t half = std::max<size_t>(1, (kept.size() + 1) / 2);  // the weaker half goes back to float
    for (size_t i = 0; i < half; ++i) {
      auto& t = check.islands[kept[i]];
      t.kept_float = t.file_fallback = true;
      t.dynamic = false;
    }
    kept.erase(kept.begin(), kept.begin() + long(half));
    ++check.fallbacks;
  }
  check.int8_faster = !kept.empty();
  if (!check.int8_faster) check.plan = chosen_plan(plan, check.islands, check.dynamic);
  return check;
}

void report_speed(const SpeedCheck& speed, PassReport& entry, nlohmann::json& record) {
  std::vector<std::string> kept;
  for (const auto& island : speed.islands) {
    record["islands"].push_back({{"first", island.first},
                                 {"steps", island.steps},
                                 {"with_int8_ms", island.with_int8_ms},
                                 {"with_float_ms", island.with_float_ms},
                                 {"with_dynamic_ms", island.with_dynamic_ms},
                                 {"dynamic", island.dynamic},
                                 {"kept_float", island.kept_float},
                                 {"file_fallback", island.file_fallback}});
    if (island.kept_float) kept.push_back(island.first + " (" + std::to_string(island.steps) + " ops)");
  }
  entry.labels["islands_kept_float"] = join(kept);
  entry.metrics["islands_timed"] = double(speed.islands.size());
  entry.metrics["islands_kept_float"] = double(kept.size());
  entry.metrics["islands_dynamic"] = double(
      std::count_if(speed.islands.begin(), speed.islands.end(), [](const IslandTiming& t) { return t.dynamic; }));
  entry.metrics["file_fallbacks"] = double(speed.fallbacks);
  for (const auto& f : speed.file) {
    const std::string suffix = "_b" + std::to_string(f.batch);
    entry.metrics["file_fp32_ms" + suffix] = f.fp32_ms;
    entry.metrics["file_int8_ms" + suffix] = f.int8_ms;
    record["file"].push_back({{"batch", f.batch}, {"fp32_ms", f.fp32_ms}, {"int8_ms", f.int8_ms}});
  }
  if (!speed.file.empty()) {
    entry.metrics["calibration_fp32_ms"] = speed.file.front().fp32_ms;
    entry.metrics["calibration_int8_ms"] = speed.file.front().int8_ms;
  }
  entry.labels["never_slower"] = speed.int8_faster ? "int8 faster than float as a file at every batch size timed"
                                                   : "int8 was not faster than float: the model stays float";
}

}  // namespace pare::detail

namespace pare::detail {

void report_forms(const SpeedCheck* speed, PassReport& entry, nlohmann::json& record) {
  std::map<std::string, const IslandTiming*> island_of;
  if (speed) {
    add_dynamic_layers(*speed, entry, record);
    for (const auto& t : speed->islands)
      for (const auto& name : t.linears) island_of[name] = &t;
  }
  std::map<std::string, int64_t> count{{"static", 0}, {"dynamic", 0}, {"float", 0}};
  for (auto& layer : entry.layers) {
    auto& labels = layer.labels;
    const auto label = [&](const char* key) {
      const auto it = labels.find(key);
      return it == labels.end() ? std::string() : it->second;
    };
    if (label("kind") != "Linear") continue;
    const auto status = label("status");
    const std::string form = status == "int8" ? "static" : status == "int8 dynamic" ? "dynamic" : "float";
    labels["form"] = form;
    ++count[form];
    const auto it = island_of.find(layer.name);
    if (it == island_of.end()) {
      labels["why"] = form == "float" ? "not planned for int8: " + label("reason") : "static int8: not timed";
      continue;
    }
    const auto& t = *it->second;
    labels["why"] = why(t, form);
    layer.metrics["island_float_ms"] = t.with_float_ms;
    layer.metrics["island_static_ms"] = t.with_int8_ms;
    if (t.with_dynamic_ms >= 0) layer.metrics["island_dynamic_ms"] = t.with_dynamic_ms;
  }
  for (const auto& [form, n] : count) entry.metrics["linears_" + form] = double(n);
}

}  // namespace pare::detail
