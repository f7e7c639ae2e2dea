#pragma once
// Internal to pare: what the int8 passes (src/quantize.cpp,
// src/quantize_static.cpp, src/quantize_speed.cpp) share.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pare/core/pipeline.hpp"
#include "core/eval_module.hpp"
#include "quantize/quantize_graph.hpp"
#include "core/text.hpp"

namespace pare::detail {

/// Freezes a private copy: eval mode, weights inlined, BatchNorm folded into
/// the convolutions. "training" survives so later passes (ExportTorchScript's
/// freeze) can call eval() on the result.
torch::jit::Module frozen_copy(const torch::jit::Module& module, const std::string& pass);
/// Lists layers left in float in the report and in the export's record.
void add_float_layers(const std::vector<FloatLayer>& layers, PassReport& entry, nlohmann::json& record);
/// pare::Error unless `engine` is empty or a quantized engine this LibTorch has.
void check_engine(const std::string& engine);

}  // namespace pare::detail

namespace pare::detail {

/// How one island of int8 ops fared against float on the calibration batch.
struct IslandTiming {
  size_t steps = 0;     ///< int8 ops in it
  std::string first;    ///< its first layer or op
  double with_int8_ms = 0, with_float_ms = 0;  ///< the whole model's median with the island int8 / float
  bool kept_float = false;
};

struct SpeedCheck {
  QuantPlan plan;  ///< the plan without the islands that were slower in int8
  std::vector<IslandTiming> islands;
  double fp32_ms = 0, int8_ms = 0;  ///< the float model and the final plan, medians
};

/// Times the model with every island in int8, then with each island in turn
/// back in float (the largest islands first, at most `max_islands`), on
/// `inputs`, and drops the islands whose float version is faster.
SpeedCheck drop_slower_islands(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                               const std::map<Value*, QuantParams>& activations,
                               const std::vector<torch::jit::IValue>& inputs, bool per_channel,
                               size_t max_islands = 12);
/// Writes the timings into the report and the export's record.
void report_speed(const SpeedCheck& speed, PassReport& entry, nlohmann::json& record);

}  // namespace pare::detail
