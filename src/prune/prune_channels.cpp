#include "pare/prune/prune_channels.hpp"

#include <torch/csrc/jit/api/function_impl.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <sstream>

#include "prune/channel_cut.hpp"
#include "prune/channel_groups.hpp"
#include "prune/channel_heads.hpp"
#include "prune/channel_ops.hpp"
#include "prune/latency_internal.hpp"
#include "prune/unpack_attention.hpp"

namespace pare {
namespace {

using detail::ChannelAnalysis;
using detail::TensorCut;
using detail::cut_tensors;
using detail::follow_depthwise;
using Kept = detail::ChannelKept;  // per group, per channel

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out;
  for (int64_t d : shape) out += (out.empty() ? "" : "x") + std::to_string(d);
  return out.empty() ? "[]" : out;
}

void check_shape(const std::vector<int64_t>& shape, const std::string& what) {
  require(!shape.empty(), what + ": the input shape is empty; expected batch first, e.g. {1, 3, 224, 224}");
  for (int64_t d : shape)
    require(d > 0, what + ": input shape " + shape_text(shape) + " has a non-positive size; expected sizes >= 1");
}

int64_t parameter_count(const torch::jit::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

int64_t serialized_bytes(const torch::jit::Module& module) {
  std::ostringstream out;
  module.save(out);
  return int64_t(out.str().size());
}

// The shapes of a model's output (tensors, nested in tuples/lists), as text.
std::string output_shapes(const c10::IValue& value) {
  if (value.isTensor()) return "[" + shape_text(value.toTensor().sizes().vec()) + "]";
  std::string out = "(";
  if (value.isTuple())
    for (const auto& item : value.toTupleRef().elements()) out += output_shapes(item) + ",";
  else if (value.isList())
    for (const auto& item : value.toListRef()) out += output_shapes(item) + ",";
  else
    return value.tagKind();
  return out + ")";
}

// The inputs' shapes ("1x16, 1x16"), for messages.
std::string inputs_text(const std::vector<c10::IValue>& inputs) {
  std::string out;
  for (const auto& input : inputs)
    out +=
        (out.empty() ? "" : ", ") + (input.isTensor() ? shape_text(input.toTensor().sizes().vec()) : input.tagKind());
  return out;
}

std::string run_for_shapes(torch::jit::Module module, const std::vector<c10::IValue>& inputs, const std::string& when) {
  torch::NoGradGuard no_grad;
  try {
    return output_shapes(module.forward(inputs));
  } catch (const std::exception& e) {  // the interpreter's errors are not all c10::Error
    throw Error("PruneChannels: the model " + when + " does not run on inputs of shape " + inputs_text(inputs) +
                    "; set input_shape(...) or example_inputs(...) to inputs the model accepts. " + e.what(),
                Error::Kind::Runtime);
  }
}

// First conv/linear reading the model input: its weight gives the channel count.
std::vector<int64_t> inferred_input_shape(const torch::jit::Module& module) {
  auto graph = detail::specialized_forward_graph(module);
  for (const auto* node : graph->nodes()) {
    const bool conv = detail::is_conv(node->kind());
    if ((!conv && !detail::is_linear(node->kind())) || node->input(0) != graph->inputs()[1]) continue;
    const auto weight = detail::attribute_tensor(module, node->input(1));
    const auto spec = conv ? detail::conv_spec(node) : std::nullopt;
    if (!weight || (conv && !spec)) break;
    std::vector<int64_t> shape{1, weight->size(1) * (conv ? spec->groups : 1)};
    if (conv) shape.resize(weight->dim(), 64);
    return shape;
  }
  throw Error("PruneChannels: cannot infer the input shape (no conv or linear reads the input directly); "
              "set input_shape(...), e.g. {1, 3, 224, 224}");
}

// The inputs the pass runs the model on: example_inputs, else zeros of input_shape (given or inferred).
std::vector<c10::IValue> pass_inputs(const torch::jit::Module& module, const PruneChannelsOptions& o) {
  require(module.find_method("forward").has_value(), "PruneChannels: the module has no forward method");
  const int64_t expected = int64_t(module.get_method("forward").function().getSchema().arguments().size()) - 1;
  if (o.example_inputs().empty()) {
    require(expected == 1, "PruneChannels: forward takes " + std::to_string(expected) +
                               " inputs; set example_inputs(...) with one value per input, batch first "
                               "(e.g. token ids and an attention mask)");
    return {torch::zeros(o.input_shape().empty() ? inferred_input_shape(module) : o.input_shape())};
  }
  require(int64_t(o.example_inputs().size()) == expected,
          "PruneChannels: forward takes " + std::to_string(expected) + " inputs but example_inputs has " +
              std::to_string(o.example_inputs().size()) + "; expected one value per input");
  return o.example_inputs();
}

// Groups with an unselected producer stay whole; patterns must select something.
void apply_selection(ChannelAnalysis& analysis, const LayerSelection& selection) {
  bool any = selection.include.empty();
  std::string candidates;
  for (auto& group : analysis.groups) {
    for (const auto& producer : group.producers) {
      const std::string weight = producer.empty() ? "weight" : producer + ".weight";
      candidates += (candidates.empty() ? "" : ", ") + weight;
      if (!selection.selects(weight)) {
        group.blocked_by.push_back("not selected (" + weight + ")");
      } else {
        any = true;
      }
    }
  }
  require(any, "PruneChannels: include/exclude patterns select no conv or linear weight; candidates: " + candidates);
}

void require_prunable(const ChannelAnalysis& analysis) {
  require(!analysis.groups.empty(),
          "PruneChannels: the model has no conv or linear layer whose weight is a module attribute; "
          "prune channels before freezing or quantizing (frozen and int8 models keep weights as constants)");
  std::set<std::string> reasons;
  for (const auto& group : analysis.groups) {
    if (group.blocked_by.empty()) return;
    reasons.insert(group.blocked_by.begin(), group.blocked_by.end());
  }
  std::string text;
  for (const auto& r : reasons) text += (text.empty() ? "" : ", ") + r;
  throw Error("PruneChannels: no channel group can be pruned; every group is blocked by: " + text +
              ". Supported: conv/linear/batch_norm on module attributes, activations, pooling, dropout, "
              "add/sub/mul/div, cat along channels, flatten -> linear");
}

using detail::ChannelScores;
using detail::score_channels;

// Global ranking compares groups of different fan-in by the mean |w| (L1) or
// the root mean square (L2) of each channel's weights.
double channel_score(const ChannelScores& s, int g, int64_t i, Norm norm, bool global) {
  double value = s.norm[g][i];
  if (global) value = s.weights[g][i] > 0 ? value / s.weights[g][i] : 0.0;
  return norm == Norm::L2 ? std::sqrt(value) : value;
}

int64_t keep_target(int64_t kept, int64_t channels, const PruneChannelsOptions& options) {
  kept = std::max(kept, options.min_channels());
  kept = (kept + options.round_to() - 1) / options.round_to() * options.round_to();
  return std::min(kept, channels);
}

// Channel indices of group `g`, lowest score first (stable: ties go in index order).
std::vector<int64_t> ranked(const ChannelScores& s, int g, const PruneChannelsOptions& o, bool global) {
  std::vector<int64_t> order(s.norm[g].size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return channel_score(s, g, a, o.norm(), global) < channel_score(s, g, b, o.norm(), global);
  });
  return order;
}

Kept choose_local(const ChannelAnalysis& analysis, const ChannelScores& s, const PruneChannelsOptions& o) {
  Kept kept;
  for (int g = 0; g < int(analysis.groups.size()); ++g) {
    const int64_t n = analysis.groups[g].channels;
    kept.emplace_back(n, true);
    if (!analysis.groups[g].blocked_by.empty() || analysis.groups[g].head_size > 0) continue;  // heads: choose_heads
    const int64_t drop = n - keep_target(n - prune_count(o.amount(), n), n, o);
    const auto order = ranked(s, g, o, false);
    for (int64_t k = 0; k < drop; ++k) kept[g][order[k]] = false;
  }
  return kept;
}

Kept choose_global(const ChannelAnalysis& analysis, const ChannelScores& s, const PruneChannelsOptions& o) {
  struct Candidate { double score; int group; int64_t index; };
  std::vector<Candidate> all;
  Kept kept;
  for (int g = 0; g < int(analysis.groups.size()); ++g) {
    kept.emplace_back(analysis.groups[g].channels, true);
    if (!analysis.groups[g].blocked_by.empty() || analysis.groups[g].head_size > 0) continue;
    for (int64_t i = 0; i < analysis.groups[g].channels; ++i)
      all.push_back({channel_score(s, g, i, o.norm(), true), g, i});
  }
  std::stable_sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) { return a.score < b.score; });
  std::vector<int64_t> remaining;
  for (const auto& group : analysis.groups) remaining.push_back(group.channels);
  int64_t budget = prune_count(o.amount(), int64_t(all.size()));
  for (const auto& c : all) {
    if (budget == 0) break;
    if (remaining[c.group] <= o.min_channels()) continue;
    kept[c.group][c.index] = false;
    --remaining[c.group];
    --budget;
  }
  for (auto c = all.rbegin(); c != all.rend(); ++c) {  // round_to: the best dropped channels come back
    const auto& group = analysis.groups[c->group];
    if (!kept[c->group][c->index] && remaining[c->group] < keep_target(remaining[c->group], group.channels, o)) {
      kept[c->group][c->index] = true;
      ++remaining[c->group];
    }
  }
  return kept;
}

// With a latency target: the widths the allocation measured and kept (stats.latency says how).
Kept choose_for_latency(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelScores& s,
                        const PruneChannelsOptions& o, ChannelPruneResult& stats) {
  detail::TargetGroups groups;
  groups.min_channels = o.min_channels();
  for (int g = 0; g < int(analysis.groups.size()); ++g) {
    groups.prunable.push_back(analysis.groups[g].blocked_by.empty());
    groups.scores.emplace_back();
    for (int64_t i = 0; i < analysis.groups[g].channels; ++i)
      groups.scores.back().push_back(channel_score(s, g, i, o.norm(), false));
    groups.weights.push_back(std::accumulate(s.weights[g].begin(), s.weights[g].end(), 0.0));
  }
  stats.latency = detail::allocate_for_latency(module, stats.input_shape, groups, *o.target(), [&](const auto& widths) {
    return detail::pruned_copy(module, analysis, detail::kept_for_widths(groups.scores, widths));
  });
  return detail::kept_for_widths(groups.scores, stats.latency->attempts.back().widths);
}

std::vector<ChannelGroupReport> group_reports(const ChannelAnalysis& analysis, const Kept& kept) {
  std::vector<ChannelGroupReport> out;
  for (size_t g = 0; g < analysis.groups.size(); ++g) {
    const auto& group = analysis.groups[g];
    ChannelGroupReport report;
    report.name = group.producers.empty() ? "(unnamed)" : group.producers.front();
    report.members = group.producers;
    report.channels_before = group.channels;
    report.channels_after = std::count(kept[g].begin(), kept[g].end(), true);
    report.head_size = group.head_size;
    for (const auto& reason : group.blocked_by) report.blocked_by += (report.blocked_by.empty() ? "" : "; ") + reason;
    out.push_back(std::move(report));
  }
  return out;
}

void validate(const PruneChannelsOptions& o) {
  require(std::isfinite(o.amount()) && o.amount() >= 0.0 && o.amount() <= 1.0,
          "PruneChannels: amount " + std::to_string(o.amount()) + " is outside [0, 1]; expected a fraction such as 0.5");
  require(o.min_channels() >= 1, "PruneChannels: min_channels " + std::to_string(o.min_channels()) +
                                     " is below 1; every group keeps at least one channel");
  require(o.round_to() >= 1, "PruneChannels: round_to " + std::to_string(o.round_to()) + " is below 1; expected e.g. 1 or 8");
  require(std::isfinite(o.heads()) && o.heads() >= 0.0 && o.heads() <= 1.0,
          "PruneChannels: heads " + std::to_string(o.heads()) + " is outside [0, 1]; expected a fraction such as 0.25");
  require(o.input_shape().empty() || o.example_inputs().empty(),
          "PruneChannels: both input_shape and example_inputs are set; set one (example_inputs for several inputs)");
  for (const auto& input : o.example_inputs())
    require(!input.isTensor() || input.toTensor().defined(),
            "PruneChannels: an example input is an undefined tensor; expected one value per forward input");
  require(!o.target() || o.example_inputs().size() <= 1,
          "PruneChannels: a latency target supports models with one input; example_inputs has " +
              std::to_string(o.example_inputs().size()));
  if (!o.input_shape().empty()) check_shape(o.input_shape(), "PruneChannels");
  if (o.target()) detail::validate_latency(*o.target(), "PruneChannels");
}

}  // namespace

int64_t count_macs(const torch::jit::Module& module, const std::vector<int64_t>& input_shape) {
  check_shape(input_shape, "count_macs");
  return count_macs(module, std::vector<c10::IValue>{torch::zeros(input_shape)});
}

int64_t count_macs(const torch::jit::Module& module, const std::vector<c10::IValue>& inputs) {
  require(!inputs.empty(), "count_macs: no inputs; expected one value per forward input, batch first");
  auto target = module;
  if (module.is_training()) {  // batch norm in training mode would update its running statistics
    target = module.clone();
    target.eval();
  }
  auto graph = detail::specialized_forward_graph(target);
  std::vector<torch::jit::Value*> taps;  // each conv/linear output and its weight
  for (auto* node : graph->nodes()) {
    if (!detail::is_conv(node->kind()) && !detail::is_linear(node->kind())) continue;
    taps.push_back(node->output());
    taps.push_back(node->input(1));
  }
  while (!graph->outputs().empty()) graph->eraseOutput(0);
  graph->registerOutput(graph->insertNode(graph->createList(c10::TensorType::get(), taps))->output());
  torch::jit::GraphFunction count("pare_count_macs", graph, nullptr);
  torch::NoGradGuard no_grad;
  std::vector<c10::IValue> stack{target._ivalue()};
  stack.insert(stack.end(), inputs.begin(), inputs.end());
  std::vector<torch::Tensor> values;
  try {
    values = count(stack).toTensorVector();
  } catch (const std::exception& e) {
    throw Error("count_macs: the model does not run on inputs of shape " + inputs_text(inputs) + ": " + e.what());
  }
  int64_t macs = 0;
  for (size_t i = 0; i + 1 < values.size(); i += 2) macs += values[i].numel() * values[i + 1][0].numel();
  return macs;
}

PrunedChannels prune_channels(const torch::jit::Module& module, const PruneChannelsOptions& options) {
  validate(options);
  torch::NoGradGuard no_grad;
  PrunedChannels out{module.clone(), {}, {}};
  const bool training = out.module.is_training();
  out.module.eval();
  auto& stats = out.stats;
  const auto inputs = pass_inputs(out.module, options);
  if (inputs.front().isTensor()) stats.input_shape = inputs.front().toTensor().sizes().vec();
  std::vector<ChannelGroupReport> whole_attention;  // nn.MultiheadAttention is written out so its heads can go
  if (options.heads() > 0 && !options.target())
    whole_attention = detail::unpack_multihead_attention(out.module, inputs);
  // A throwaway copy runs: the copy being pruned must not run before its methods are rewritten.
  const auto expected = run_for_shapes(out.module.clone(), inputs, "before pruning");
  stats.params_before = parameter_count(out.module);
  stats.macs_before = count_macs(out.module, inputs);
  stats.file_bytes_before = serialized_bytes(out.module);

  // A latency target keeps the analysis its latency table was measured with (attention left whole).
  auto analysis =
      options.target() ? detail::analyze_channels(out.module) : detail::analyze_channels(out.module, inputs);
  apply_selection(analysis, LayerSelection{options.include(), options.exclude()});
  require_prunable(analysis);
  const auto scores = score_channels(out.module, analysis, options.norm() == Norm::L2);
  auto kept = options.target()                   ? choose_for_latency(out.module, analysis, scores, options, stats)
              : options.scope() == Scope::Global ? choose_global(analysis, scores, options)
                                                 : choose_local(analysis, scores, options);
  detail::choose_heads(analysis, scores,
                       {options.heads(), options.heads_scope() == Scope::Global, options.norm() == Norm::L2}, kept);
  out.kept = cut_tensors(out.module, analysis, kept);
  // Methods cache their optimized graphs (the analysis's inlining filled them): a clone starts from the rewritten
  // ones. Depthwise convs first: rewriting head counts inlines forward, copying their calls.
  const bool depthwise = follow_depthwise(out.module, analysis, out.kept);
  if (detail::rewrite_head_counts(out.module, analysis, kept) || depthwise) out.module = out.module.clone();

  const auto actual = run_for_shapes(out.module, inputs, "after pruning");
  require(actual == expected, "PruneChannels: the pruned model's output shapes " + actual + " differ from " + expected +
                                  "; this is a bug in pare's channel analysis", Error::Kind::Runtime);
  stats.params_after = parameter_count(out.module);
  stats.macs_after = count_macs(out.module, inputs);
  stats.file_bytes_after = serialized_bytes(out.module);
  stats.groups = group_reports(analysis, kept);
  stats.groups.insert(stats.groups.end(), whole_attention.begin(), whole_attention.end());
  out.module.train(training);
  return out;
}

PruneChannels::PruneChannels(PruneChannelsOptions options) : options_(std::move(options)) { validate(options_); }

void PruneChannels::run(Result& state, PassReport& entry) const {
  auto pruned = prune_channels(state.module, options_);
  state.module = pruned.module;
  for (auto& [name, mask] : state.masks) {  // L1Prune masks follow the removed channels
    const auto found = pruned.kept.find(name);
    if (found == pruned.kept.end()) continue;
    for (const auto& [dim, index] : found->second) mask = mask.index_select(dim, index);
  }
  const auto& s = pruned.stats;
  for (const auto& group : s.groups) {
    // One row per group of coupled layers. Its channel counts are not weight
    // counts: parameters/nonzeros stay 0 so that sparsity figures and charts
    // never read removed channels as zeroed weights.
    LayerReport row;
    row.name = group.name;
    row.channels_before = group.channels_before;
    row.channels_after = group.channels_after;
    row.metrics = {{"members", double(group.members.size())}};
    if (group.head_size > 0) row.metrics["head_size"] = double(group.head_size);
    if (!group.blocked_by.empty()) row.labels["blocked_by"] = group.blocked_by;
    entry.layers.push_back(std::move(row));
  }
  entry.metrics = {{"amount", options_.amount()},
                   {"heads", options_.heads()},
                   {"params_before", double(s.params_before)},
                   {"params_after", double(s.params_after)},
                   {"macs_before", double(s.macs_before)},
                   {"macs_after", double(s.macs_after)},
                   {"file_bytes_before", double(s.file_bytes_before)},
                   {"file_bytes_after", double(s.file_bytes_after)}};
  entry.labels = {{"scope", to_string(options_.scope())},
                  {"norm", to_string(options_.norm())},
                  {"input_shape", shape_text(s.input_shape)}};
  if (s.latency) detail::report_latency(*s.latency, *options_.target(), entry);
}

}  // namespace pare
