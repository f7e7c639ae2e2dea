#pragma once
// Internal to pare: what the latency table, the latency model and
// PruneChannels' latency target share.

#include <functional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "pare/core/report.hpp"
#include "pare/prune/latency.hpp"

namespace pare::detail {

/// Sets the intra-op thread count for its lifetime.
class ThreadScope {
 public:
  explicit ThreadScope(int threads);
  ~ThreadScope();
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
};

/// Latency::keep_freed_memory, once per process.
void prepare_to_measure(const Latency& latency);

/// An eval-mode copy of `module`, frozen as shipped (the copy itself if freezing rejects it).
torch::jit::Module frozen_for_timing(const torch::jit::Module& module);

/// pare::Error naming `what` unless every setting of `latency` is in range.
void validate_latency(const Latency& latency, const std::string& what);

/// What the latency-targeted allocation knows of each channel group.
struct TargetGroups {
  /// Per group, per channel: its score (higher is more important).
  std::vector<std::vector<double>> scores;
  /// Per group: the weights its producers hold (a group that spans more layers weighs more).
  std::vector<double> weights;
  /// Per group: whether it may lose channels (not blocked, selected).
  std::vector<bool> prunable;
  int64_t min_channels = 1;
};

/// The pruned copy of the input with each group's best `widths[g]` channels.
using BuildPruned = std::function<torch::jit::Module(const std::vector<int64_t>& widths)>;

/// Measures (or reads) the latency table of `module` at `input_shape`, picks
/// each group's width greedily (least importance lost per second saved, as
/// the LatencyModel predicts) until the target is predicted met, builds and
/// measures the result beside `module`, and tightens the goal by the
/// measured miss until the target holds and the result is faster than the
/// input. pare::Error when the table predicts the target out of reach or
/// latency.attempts() measured allocations miss it. The kept allocation is
/// attempts.back().widths.
LatencyResult allocate_for_latency(const torch::jit::Module& module, const std::vector<int64_t>& input_shape,
                                   const TargetGroups& groups, const Latency& latency, const BuildPruned& build);

/// Per group, per channel: kept or not, keeping each group's `widths[g]` highest-scored channels.
std::vector<std::vector<bool>> kept_for_widths(const std::vector<std::vector<double>>& scores,
                                               const std::vector<int64_t>& widths);

/// The target's figures in a report entry: metrics latency_* (ms, the speedup,
/// the prediction error, attempts, the table's cost), labels latency_target,
/// latency_host and latency_table (the table as JSON).
void report_latency(const LatencyResult& result, const Latency& latency, PassReport& entry);

/// "2.00x faster at batch 8" or "at most 1500 us at batch 8".
std::string describe(const Latency& latency);

}  // namespace pare::detail
