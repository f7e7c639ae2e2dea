#pragma once
// pare::PruneChannels — structured pruning that physically removes channels.
// The TorchScript graph is analysed for channel dependencies (residual adds,
// concatenations, depthwise convs, flatten -> Linear); every coupled tensor
// shrinks, so the result is a smaller dense model that stock PyTorch loads.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pare/core/arg.hpp"
#include "pare/core/pipeline.hpp"
#include "pare/prune/latency.hpp"
#include "pare/prune/prune.hpp"

namespace pare {

/// How a channel's weights are scored: sum of |w| or square root of sum of w².
enum class Norm { L1, L2 };
/// "l1" or "l2": the names the CLI, Python and the report use.
std::string to_string(Norm norm);
/// The inverse of to_string; pare::Error naming the known norms otherwise.
Norm parse_norm(const std::string& name);
/// Every norm name, in Norm order.
std::vector<std::string> norm_names();

class PruneChannelsOptions {
 public:
  /// Fraction of channels to remove, in [0, 1].
  explicit PruneChannelsOptions(double amount) : amount_(amount) {}

  /// Fraction of channels to remove, in [0, 1].
  PARE_ARG(double, amount);
  /// Local: each group loses `amount` of its channels. Global: one ranking
  /// across groups, by each channel's norm divided by its weight count.
  PARE_ARG(Scope, scope) = Scope::Local;
  /// The norm that ranks channels (summed over every weight that produces them).
  PARE_ARG(Norm, norm) = Norm::L1;
  /// No group keeps fewer channels than this (>= 1).
  PARE_ARG(int64_t, min_channels) = 1;
  /// Kept channel counts are rounded up to a multiple of this (e.g. 8 for SIMD-friendly shapes).
  PARE_ARG(int64_t, round_to) = 1;
  /// Glob patterns on producer weight names ("layer1.*"); a group is pruned
  /// only when every conv/linear producing its channels is selected. Empty: every group.
  PARE_ARG(std::vector<std::string>, include);
  /// Glob patterns on producer weight names; a group with an excluded producer stays whole.
  PARE_ARG(std::vector<std::string>, exclude);
  /// Shape of the example input (batch first, e.g. {1, 3, 224, 224}) used to
  /// count MACs and to check that the pruned model runs. Empty: inferred from
  /// the first conv/linear (spatial size 64), pare::Error if the model rejects it.
  PARE_ARG(std::vector<int64_t>, input_shape);
  /// A latency target (Latency::speedup(3.0), Latency::at_most(5ms, 8)): each group's width is
  /// chosen from a latency table measured on this host, removing the least importance per
  /// second saved; the result is measured against the input and returned only if it meets the
  /// target and runs faster (pare::Error otherwise). amount, scope and round_to are then unused.
  PARE_ARG(std::optional<Latency>, target);
  /// One value per forward input, batch first (e.g. token ids and an attention mask): the model
  /// runs on them to count MACs, to follow channels through attention by shape, and to check the
  /// pruned model. Required for models with several inputs; no input is pruned. Empty: zeros of
  /// input_shape (set one or the other).
  PARE_ARG(std::vector<c10::IValue>, example_inputs);
  /// Fraction of attention heads to remove, in [0, 1] (0: heads stay). A head goes whole: its rows
  /// of q, k and v and its columns of the output projection. `amount` applies to every other group
  /// (FFN neurons, conv channels). Attention is followed through view/reshape, transpose, permute,
  /// matmul and softmax, so it needs example_inputs (or input_shape) to run on.
  PARE_ARG(double, heads) = 0.0;
  /// Local: every attention layer loses `heads` of its heads. Global: one ranking across layers by
  /// each head's mean |w| (L1) or RMS (L2) over its q/k/v rows. Every layer keeps at least one head.
  PARE_ARG(Scope, heads_scope) = Scope::Local;

 public:
  /// include() and exclude() as one LayerSelection.
  [[deprecated("use include() and exclude()")]] LayerSelection selection() const { return {include_, exclude_}; }
};

/// One dependency group: channels that must be removed together.
struct ChannelGroupReport {
  std::string name;                  ///< the first producer, e.g. "layer1.0.conv1"
  std::vector<std::string> members;  ///< every conv/linear producing these channels
  int64_t channels_before = 0;
  int64_t channels_after = 0;
  std::string blocked_by;  ///< why the group stays whole ("aten::view", "model output"); empty if prunable
  int64_t head_size = 0;   ///< attention heads: channels per head (heads = channels / head_size); 0 otherwise
};

/// Model size before and after.
struct ChannelPruneResult {
  std::vector<ChannelGroupReport> groups;
  std::vector<int64_t> input_shape;  ///< the shape MACs were counted for (of the first input)
  int64_t params_before = 0, params_after = 0;
  int64_t macs_before = 0, macs_after = 0;  ///< multiply-accumulates of conv and linear layers
  int64_t file_bytes_before = 0, file_bytes_after = 0;  ///< serialized TorchScript size
  std::optional<LatencyResult> latency;  ///< with a target: the table, the allocations measured, the result's latency
};
using ChannelPruneStats [[deprecated("renamed ChannelPruneResult")]] = ChannelPruneResult;

/// What prune_channels returns: the smaller model, its figures, and for every
/// resized tensor ("layer1.0.conv1.weight") the kept indices along each cut dim.
struct PrunedChannels {
  torch::jit::Module module;
  ChannelPruneResult stats;
  std::map<std::string, std::vector<std::pair<int64_t, torch::Tensor>>> kept;
};

/// Removes channels from a deep copy of `module` (which is left untouched).
/// pare::Error on invalid options, when no group can be pruned (naming the
/// ops that block them), or when the model does not run on the example input.
PrunedChannels prune_channels(const torch::jit::Module& module, const PruneChannelsOptions& options);

/// Multiply-accumulates of every conv and linear call in one forward pass on
/// an input of `input_shape` (zeros), read from the real output shapes.
int64_t count_macs(const torch::jit::Module& module, const std::vector<int64_t>& input_shape);
/// The same on `inputs`, one value per forward input (models with several inputs).
int64_t count_macs(const torch::jit::Module& module, const std::vector<c10::IValue>& inputs);

/// The pass. Fills its report entry with one layer row per group (metrics
/// channels_before/channels_after, label blocked_by) and the size figures
/// (params_*, macs_*, file_bytes_*); masks left by L1Prune follow the cut.
class PruneChannels : public Pass {
 public:
  explicit PruneChannels(PruneChannelsOptions options);
  /// Short for PruneChannels(PruneChannelsOptions(amount)).
  explicit PruneChannels(double amount) : PruneChannels(PruneChannelsOptions(amount)) {}
  std::string name() const override { return "prune_channels"; }
  void run(Result& state, PassReport& entry) const override;
  const PruneChannelsOptions& options() const { return options_; }

 private:
  PruneChannelsOptions options_;
};

}  // namespace pare
