#pragma once
// Internal to pare: the bookkeeping of the channel analysis (channel_groups.cpp
// walks the graph and reports here). Dependency groups merge by union-find;
// each tensor to cut is recorded once, and a layer met twice must agree with
// itself; a group anything could not follow stays whole, with the reasons.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "prune/channel_groups.hpp"

namespace pare::detail {

/// The module path of a tensor attribute's name ("layer1.0.conv1.weight" -> "layer1.0.conv1").
inline std::string owner_of(const std::string& tensor_name) {
  const auto dot = tensor_name.rfind('.');
  return dot == std::string::npos ? "" : tensor_name.substr(0, dot);
}

class ChannelGroupSet {
 public:
  /// `channels` new channels, computed by the weight `producer`, in a group of their own.
  ChannelMap new_group(const std::string& producer, int64_t channels);
  /// Channel i of `a` is channel i of `b`: their groups merge. Only identical
  /// channel positions can merge; anything else blocks both sides (false).
  bool tie(const ChannelMap& a, const ChannelMap& b, const std::string& reason);
  /// The groups of `slots` stay whole, because of `reason`.
  void block(const ChannelMap& slots, const std::string& reason);
  /// The entries of tensor `name` along `dim` follow `slots`, `block` entries each.
  void add_cut(const std::string& name, int64_t dim, const ChannelMap& slots, int64_t block, bool producer);
  /// A depthwise conv's weight: its `groups` argument follows its channel count.
  void add_depthwise(const std::string& weight);
  /// `slots` (a whole group, in order) are attention heads of `head_size` channels
  /// each: the group loses whole heads. False (and the group blocked) otherwise.
  bool set_head_size(const ChannelMap& slots, int64_t head_size);
  /// A view/reshape spelling the head count of `site.slot`'s group.
  void add_head_site(HeadCountSite site);
  /// The result, with merged groups numbered densely and their reasons and producers combined.
  ChannelAnalysis finish();

 private:
  int find(int group);

  std::vector<ChannelGroup> groups_;
  std::vector<int> parent_;
  std::vector<TensorCut> cuts_;
  std::map<std::pair<std::string, int64_t>, size_t> cut_at_;
  std::vector<std::string> depthwise_;
  std::vector<HeadCountSite> head_sites_;
};

}  // namespace pare::detail
