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

namespace pare {
class QuantizeInt8Options;
}  // namespace pare

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

/// How one island of int8 ops fared against float, timed alone (with the
/// quantize/dequantize at its borders), summed over the batch sizes. An
/// island with Linear layers is also timed with them as dynamic int8
/// (quantized::linear_dynamic, the rest of it float) when try_dynamic is on.
struct IslandTiming {
  size_t steps = 0;   ///< int8 ops in it
  std::string first;  ///< its first layer or op
  double with_int8_ms = 0, with_float_ms = 0;
  double with_dynamic_ms = -1;       ///< -1: not timed (no Linear, or try_dynamic off)
  std::vector<std::string> linears;  ///< its Linear layers
  std::vector<Node*> linear_nodes;   ///< their aten::linear nodes in the planned graph
  bool kept_float = false;           ///< no int8 form won at every batch size, or sent back by the file check
  bool dynamic = false;              ///< its Linears run as dynamic int8: faster than float and than static
  bool file_fallback = false;        ///< sent back to float because the whole file was not faster
};

/// The whole model, int8 per the final plan against float, at one batch size (medians).
struct FileTiming {
  int64_t batch = 0;
  double fp32_ms = 0, int8_ms = 0;
};

struct SpeedCheck {
  QuantPlan plan;              ///< the plan without the islands kept float or made dynamic
  std::vector<Node*> dynamic;  ///< the Linear nodes to rewrite as dynamic int8 (float in `plan`)
  std::vector<IslandTiming> islands;
  std::vector<FileTiming> file;  ///< the last file check
  int64_t fallbacks = 0;         ///< rounds of the file check that sent islands back
  bool int8_faster = false;      ///< the final plan's file was faster at every batch size
};

/// Times each island alone, float against int8, on the values it reads when
/// the model runs `batches` (one input list per batch size); islands slower in
/// int8 at any size stay float. Then times the whole model against float at
/// each size; while it is not faster, the kept islands with the least gain go
/// back to float, half of them each round, down to the float model. With
/// `try_dynamic`, an island whose Linears time faster as dynamic int8 than
/// float and than static int8 gets them as dynamic int8 instead.
SpeedCheck drop_slower_islands(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                               const std::map<Value*, QuantParams>& activations,
                               const std::vector<std::vector<torch::jit::IValue>>& batches, bool per_channel,
                               bool try_dynamic);
/// The frozen float model rewritten per `plan` (and `dynamic`, Linear nodes
/// of `graph` outside the plan, as dynamic int8), as a fresh module.
torch::jit::Module variant(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                           const std::map<Value*, QuantParams>& activations, bool per_channel,
                           const std::vector<Node*>& dynamic = {});

/// One island as a graph of its own (src/quantize_islands.cpp): its inputs are
/// the values it reads from the model (`inputs`, in the model's graph), its
/// outputs those read outside it; with `int8`, rewritten per the plan.
struct IslandGraph {
  std::shared_ptr<Graph> graph;
  std::vector<Value*> inputs;
};
IslandGraph island_graph(Graph& graph, const QuantPlan& plan, const std::vector<size_t>& island, size_t which,
                         const std::map<Value*, QuantParams>& activations, bool int8, bool per_channel);
/// Medians of `runs` calls of each graph (no self) on `inputs`, taking turns
/// (each goes first in turn, so that load on the host hits them alike).
std::vector<double> time_graphs(const std::vector<std::shared_ptr<Graph>>& graphs,
                                const std::vector<torch::jit::IValue>& inputs, int runs);
/// Medians of `runs` forward calls of fresh copies of two modules on `inputs`, taking turns.
std::pair<double, double> time_modules(const torch::jit::Module& a, const torch::jit::Module& b,
                                       const std::vector<torch::jit::IValue>& inputs, int runs);
/// `inputs` with each tensor's rows repeated or cut to `rows`.
std::vector<torch::jit::IValue> with_batch_size(const std::vector<torch::jit::IValue>& inputs, int64_t rows);

/// What max_drop decided (src/quantize/int8_accuracy.cpp).
struct AccuracyCheck {
  QuantPlan plan;                             ///< without the layers sent back to float
  double fp32 = 0, plain_int8 = 0;            ///< accuracy (percent) of the float model and of plain int8
  std::map<std::string, double> sensitivity;  ///< per layer: output SQNR (dB) with that layer alone in int8
  std::vector<std::string> fallen_back;       ///< layers sent back to float, most sensitive first
  std::map<size_t, double> tried;             ///< accuracy with the k most sensitive layers in float
  int64_t evaluations = 0;                    ///< int8 candidates evaluated
};

/// Evaluates the float model and `plan`; when int8 loses more than
/// options.max_drop() points, ranks the layers by sensitivity on `held_out`
/// and sends the fewest most sensitive back to float that meet the budget.
AccuracyCheck meet_accuracy_budget(const torch::jit::Module& frozen, Graph& graph, const QuantPlan& plan,
                                   const std::map<Value*, QuantParams>& activations,
                                   const std::vector<torch::jit::IValue>& held_out, const QuantizeInt8Options& options);
/// `plan` with the named layers in float, and the ops that can no longer run in int8 without them.
QuantPlan without_layers(const QuantPlan& plan, const std::set<std::string>& layers,
                         const std::map<Value*, QuantParams>& activations, const std::string& reason);
/// Writes the accuracies, the layers sent back and each layer's sensitivity into the report and the record.
void report_accuracy(const AccuracyCheck& check, double final_accuracy, std::optional<double> max_drop,
                     PassReport& entry, nlohmann::json& record);

/// Writes the timings into the report and the export's record.
void report_speed(const SpeedCheck& speed, PassReport& entry, nlohmann::json& record);
/// Labels every Linear in the report with the form it got ("form": static,
/// dynamic or float) and why ("why", with its island's timings as metrics),
/// adding an entry for each dynamic one; `speed` is null without never_slower.
void report_forms(const SpeedCheck* speed, PassReport& entry, nlohmann::json& record);

}  // namespace pare::detail
