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
  /// Attention heads: channels per head (the group loses whole heads); 0 for other groups.
  int64_t head_size = 0;
};

/// A view/reshape that splits a group's channels into heads or merges them
/// back: after heads go, element `element` of its size list must read the
/// kept count (heads when splitting, channels when merging).
struct HeadCountSite {
  int64_t site = 0;       ///< ordinal of the view/reshape in the inlined forward graph (see tag_view_sites)
  size_t element = 0;     ///< index in the size list
  Slot slot;              ///< any channel of the group
  bool merged = false;    ///< true: the list holds channels (heads x head size); false: heads
  std::string attribute;  ///< the int attribute the count came from ("layers.0.attention.heads"), if any
};

struct ChannelAnalysis {
  std::vector<ChannelGroup> groups;  ///< slots in `cuts` index this
  std::vector<TensorCut> cuts;
  /// Weights of depthwise convs ("features.1.conv.0.0.weight") whose `groups`
  /// argument must follow their channel count.
  std::vector<std::string> depthwise;
  /// Where head counts are spelled in the graph (rewritten when heads go).
  std::vector<HeadCountSite> head_sites;
};

/// Analyses `module` (its forward method) as it is now; its attribute values
/// (training, flags) specialise the graph. `inputs` (one per forward input) run
/// it once so that every value's shape is known (attention is followed by shape).
/// Without inputs, shapes are unknown and attention blocks the groups that reach it.
ChannelAnalysis analyze_channels(const torch::jit::Module& module, const std::vector<c10::IValue>& inputs = {});

}  // namespace pare::detail
