#pragma once
// Internal to pare: cutting the tensors of a channel analysis down to the
// kept channels (PruneChannels and its latency target share it).

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "prune/channel_groups.hpp"

namespace pare::detail {

/// Per group, per channel: whether it stays.
using ChannelKept = std::vector<std::vector<bool>>;
/// Per resized tensor ("layer1.0.conv1.weight"): the kept indices along each cut dim.
using KeptIndices = std::map<std::string, std::vector<std::pair<int64_t, torch::Tensor>>>;

/// Shrinks every cut tensor of `module` (in place) to its kept entries.
KeptIndices cut_tensors(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelKept& kept);

/// Depthwise convs that lost channels read `groups` from their weight; whether any method changed.
bool follow_depthwise(const torch::jit::Module& module, const ChannelAnalysis& analysis, const KeptIndices& kept);

/// Where attention groups lost heads: the root's forward is inlined and every
/// view/reshape that spelled their head count (or merged width) reads the kept
/// one; int attributes the count came from ("heads", "num_heads") are set to
/// it. Whether the graph changed.
bool rewrite_head_counts(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelKept& kept);

/// A pruned copy of `module` (which the analysis was made on), ready to run.
torch::jit::Module pruned_copy(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelKept& kept);

}  // namespace pare::detail
