// "Never slower than fp32": int8 is not always faster (a small conv whose
// quantize/dequantize costs more than the conv, kernels weak on some shapes),
// so each island of int8 ops is timed alone against its float version, with
// the quantize and dequantize at its borders, at every batch size asked for;
// islands that lose stay float. Then the whole model is timed against float
// at each batch size, and while it is not faster, the islands that gained
// least go back to float, down to the float model itself.

#include <algorithm>
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

// Each island alone, float and int8, at every batch size.
std::vector<IslandTiming> time_islands(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                                       const std::map<Value*, QuantParams>& activations,
                                       const std::vector<std::vector<IValue>>& batches, bool per_channel) {
  const auto island = island_of_steps(plan);
  const size_t count = island.empty() ? 0 : *std::max_element(island.begin(), island.end()) + 1;
  std::vector<IslandGraph> floats, int8s;
  std::vector<std::vector<Value*>> reads;
  for (size_t k = 0; k < count; ++k) {
    floats.push_back(island_graph(graph, plan, island, k, activations, false, per_channel));
    int8s.push_back(island_graph(graph, plan, island, k, activations, true, per_channel));
    reads.push_back(floats.back().inputs);
  }
  const auto values = island_inputs(frozen, graph, reads, batches);
  std::vector<IslandTiming> timings;
  for (size_t k = 0; k < count; ++k) {
    IslandTiming t;
    t.first = first_of(plan, island, k);
    t.steps = size_t(std::count(island.begin(), island.end(), k));
    for (const auto& at_size : values) {
      std::vector<IValue> inputs;
      for (Value* v : floats[k].inputs) inputs.push_back(at_size.at(v));
      const auto [f, q] = time_side_by_side(floats[k].graph, int8s[k].graph, inputs, kIslandRuns);
      t.with_float_ms += f;
      t.with_int8_ms += q;
      t.kept_float = t.kept_float || q >= f;  // int8 must win at every batch size
    }
    timings.push_back(t);
  }
  return timings;
}

// Whether the model per `plan` is faster than float at every batch size; fills `file`.
bool faster_as_file(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                    const std::map<Value*, QuantParams>& activations, const std::vector<std::vector<IValue>>& batches,
                    bool per_channel, std::vector<FileTiming>& file) {
  const auto int8 = variant(frozen, graph, plan, activations, per_channel);
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

}  // namespace

torch::jit::Module variant(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                           const std::map<Value*, QuantParams>& activations, bool per_channel) {
  auto copy = frozen.clone();
  auto copied = copy.get_method("forward").graph();
  const auto map = correspond(graph, *copied);
  std::map<Value*, QuantParams> copied_activations;
  for (const auto& [value, q] : activations) copied_activations[map.values.at(value)] = q;
  std::vector<std::pair<double, double>> scales;
  rewrite_static(*copied, translated(plan, map), copied_activations, per_channel, scales);
  torch::jit::EliminateDeadCode(copied);
  return reloaded(copy, "QuantizeInt8");
}

SpeedCheck drop_slower_islands(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                               const std::map<Value*, QuantParams>& activations,
                               const std::vector<std::vector<IValue>>& batches, bool per_channel) {
  SpeedCheck check;
  check.islands = time_islands(frozen, graph, plan, activations, batches, per_channel);
  std::set<size_t> dropped;
  std::vector<size_t> kept;
  for (size_t k = 0; k < check.islands.size(); ++k)
    (check.islands[k].kept_float ? dropped.insert(k), void() : kept.push_back(k));
  // The weakest gain (float time / int8 time) first: those go back first when the file loses.
  std::stable_sort(kept.begin(), kept.end(), [&](size_t a, size_t b) {
    return check.islands[a].with_float_ms / check.islands[a].with_int8_ms <
           check.islands[b].with_float_ms / check.islands[b].with_int8_ms;
  });
  const std::string slower = "kept float: int8 was slower here";
  while (!kept.empty()) {
    check.plan = without_islands(plan, dropped, slower);
    if (faster_as_file(frozen, graph, check.plan, activations, batches, per_channel, check.file)) break;
    const size_t half = std::max<size_t>(1, (kept.size() + 1) / 2);  // the weaker half goes back to float
    for (size_t i = 0; i < half; ++i) {
      dropped.insert(kept[i]);
      check.islands[kept[i]].kept_float = true;
      check.islands[kept[i]].file_fallback = true;
    }
    kept.erase(kept.begin(), kept.begin() + long(half));
    ++check.fallbacks;
  }
  check.int8_faster = !kept.empty();
  if (!check.int8_faster) check.plan = without_islands(plan, dropped, slower);
  return check;
}

void report_speed(const SpeedCheck& speed, PassReport& entry, nlohmann::json& record) {
  std::vector<std::string> kept;
  for (const auto& island : speed.islands) {
    record["islands"].push_back({{"first", island.first}, {"steps", island.steps},
                                 {"with_int8_ms", island.with_int8_ms}, {"with_float_ms", island.with_float_ms},
                                 {"kept_float", island.kept_float}, {"file_fallback", island.file_fallback}});
    if (island.kept_float) kept.push_back(island.first + " (" + std::to_string(island.steps) + " ops)");
  }
  entry.labels["islands_kept_float"] = join(kept);
  entry.metrics["islands_timed"] = double(speed.islands.size());
  entry.metrics["islands_kept_float"] = double(kept.size());
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
