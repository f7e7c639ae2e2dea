#pragma once
// Internal to pare: the channel dependency analysis behind PruneChannels.
// It follows channels through the inlined TorchScript graph of a module and
// says which tensors must be cut along which dim when a channel goes.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "prune/channel_ops.hpp"

namespace pare::detail {

/// Channel `index` of dependency group `group`.
struct Slot {
  int group = 0;
  int64_t index = 0;
  bool operator==(const Slot& o) const { return group == o.group && index == o.index; }
};
using ChannelMap = std::vector<Slot>;

/// One tensor attribute that shrinks along `dim` when channels go.
struct TensorCut {
  std::string module_path;  ///< "" for the root, else "layer1.0.conv1"
  std::string attr;         ///< "weight", "bias", "running_mean", ...
  int64_t dim = 0;
  ChannelMap slots;         ///< the channel behind each block of entries along `dim`
  int64_t block = 1;        ///< consecutive entries per channel (Linear after flatten)
  bool producer = false;    ///< these entries compute the channels (they score them)
  std::string name() const { return module_path.empty() ? attr : module_path + "." + attr; }
};

struct ChannelGroup {
  std::vector<std::string> producers;  ///< weights computing these channels, graph order
  int64_t channels = 0;
  std::vector<std::string> blocked_by;  ///< reasons the group must stay whole
};

struct ChannelAnalysis {
  std::vector<ChannelGroup> groups;  ///< slots in `cuts` index this
  std::vector<TensorCut> cuts;
  /// Weights of depthwise convs ("features.1.conv.0.0.weight") whose `groups`
  /// argument must follow their channel count.
  std::vector<std::string> depthwise;
};

/// Analyses `module` (its forward method) as it is now; its attribute values
/// (training, flags) specialise the graph.
ChannelAnalysis analyze_channels(const torch::jit::Module& module);

}  // namespace pare::detail
