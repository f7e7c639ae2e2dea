// "Never slower than fp32": int8 is not always faster (a small conv whose
// quantize/dequantize costs more than the conv, kernels weak on some shapes),
// so each island of int8 ops is timed against its float version on the
// calibration batch, and islands that lose stay float.

#include <algorithm>
#include <chrono>
#include <numeric>

#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "quantize/quantize_pass.hpp"

namespace pare::detail {
namespace {

using torch::jit::IValue;

// A float-int8 difference smaller than this share of the time is noise.
constexpr double kMargin = 0.05;

double median_ms(torch::jit::Module module, const std::vector<IValue>& inputs, int runs = 7) {
  for (int i = 0; i < 3; ++i) module.forward(inputs);  // the profiling executor settles on a plan
  std::vector<double> times;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    module.forward(inputs);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + runs / 2, times.end());
  return times[size_t(runs / 2)];
}

// The frozen float model rewritten per `plan`, as a fresh module (an edited
// graph that has already run would keep its old execution plan).
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

std::string first_of(const QuantPlan& plan, const std::vector<size_t>& island, size_t which) {
  for (size_t i = 0; i < plan.steps.size(); ++i)
    if (island[i] == which) return plan.steps[i].name;
  return "";
}

}  // namespace

SpeedCheck drop_slower_islands(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                               const std::map<Value*, QuantParams>& activations,
                               const std::vector<IValue>& inputs, bool per_channel, size_t max_islands) {
  const std::string reason = "kept float: int8 was slower here";
  SpeedCheck check;
  check.plan = plan;
  const auto island = island_of_steps(plan);
  std::vector<size_t> sizes;
  for (size_t i : island) {
    if (sizes.size() <= i) sizes.resize(i + 1);
    ++sizes[i];
  }
  std::vector<size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes[a] > sizes[b]; });
  if (order.size() > max_islands) order.resize(max_islands);

  check.fp32_ms = median_ms(frozen.clone(), inputs);
  double current = median_ms(variant(frozen, graph, plan, activations, per_channel), inputs);
  std::set<size_t> dropped;
  for (size_t which : order) {
    auto candidate = dropped;
    candidate.insert(which);
    const auto candidate_plan = without_islands(plan, candidate, reason);
    const double t = median_ms(variant(frozen, graph, candidate_plan, activations, per_channel), inputs);
    IslandTiming timing{sizes[which], first_of(plan, island, which), current, t, t < current * (1 - kMargin)};
    if (timing.kept_float) {
      dropped = candidate;
      current = t;
    }
    check.islands.push_back(timing);
  }
  check.plan = without_islands(plan, dropped, reason);
  check.int8_ms = current;
  return check;
}

void report_speed(const SpeedCheck& speed, PassReport& entry, nlohmann::json& record) {
  std::vector<std::string> kept;
  for (const auto& island : speed.islands) {
    record["islands"].push_back({{"first", island.first}, {"steps", island.steps},
                                 {"with_int8_ms", island.with_int8_ms}, {"with_float_ms", island.with_float_ms},
                                 {"kept_float", island.kept_float}});
    if (island.kept_float) kept.push_back(island.first + " (" + std::to_string(island.steps) + " ops)");
  }
  entry.labels["islands_kept_float"] = join(kept);
  entry.metrics["islands_timed"] = double(speed.islands.size());
  entry.metrics["islands_kept_float"] = double(kept.size());
  entry.metrics["calibration_fp32_ms"] = speed.fp32_ms;
  entry.metrics["calibration_int8_ms"] = speed.int8_ms;
}

}  // namespace pare::detail
