#include "prune/channel_group_set.hpp"

#include <algorithm>
#include <set>

namespace pare::detail {

ChannelMap ChannelGroupSet::new_group(const std::string& producer, int64_t channels) {
  const int id = int(groups_.size());
  groups_.push_back({{owner_of(producer)}, channels, {}});
  parent_.push_back(id);
  ChannelMap slots(channels);
  for (int64_t i = 0; i < channels; ++i) slots[i] = {id, i};
  return slots;
}

int ChannelGroupSet::find(int group) {
  while (parent_[group] != group) group = parent_[group] = parent_[parent_[group]];
  return group;
}

bool ChannelGroupSet::tie(const ChannelMap& a, const ChannelMap& b, const std::string& reason) {
  bool aligned = a.size() == b.size();
  for (size_t i = 0; aligned && i < a.size(); ++i) aligned = a[i].index == b[i].index;
  if (!aligned) {
    block(a, reason);
    block(b, reason);
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) parent_[find(a[i].group)] = find(b[i].group);
  return true;
}

void ChannelGroupSet::block(const ChannelMap& slots, const std::string& reason) {
  std::set<int> seen;
  for (const auto& slot : slots)
    if (seen.insert(slot.group).second) groups_[slot.group].blocked_by.push_back(reason);
}

void ChannelGroupSet::add_cut(const std::string& name, int64_t dim, const ChannelMap& slots, int64_t block_size,
                              bool producer) {
  const auto key = std::make_pair(name, dim);
  const auto found = cut_at_.find(key);
  if (found == cut_at_.end()) {
    const auto dot = name.rfind('.');
    cut_at_.emplace(key, cuts_.size());
    cuts_.push_back({owner_of(name), dot == std::string::npos ? name : name.substr(dot + 1), dim, slots, block_size,
                     producer});
    return;
  }
  auto& cut = cuts_[found->second];  // a layer called twice: both calls must agree
  cut.producer = cut.producer || producer;
  if (cut.block != block_size) {
    block(cut.slots, "shared layer " + name);
    block(slots, "shared layer " + name);
    return;
  }
  tie(cut.slots, slots, "shared layer " + name);
}

void ChannelGroupSet::add_depthwise(const std::string& weight) {
  if (std::find(depthwise_.begin(), depthwise_.end(), weight) == depthwise_.end()) depthwise_.push_back(weight);
}

bool ChannelGroupSet::set_head_size(const ChannelMap& slots, int64_t head_size) {
  bool whole = !slots.empty() && head_size > 0 && int64_t(slots.size()) % head_size == 0 &&
               groups_[slots[0].group].channels == int64_t(slots.size());
  for (size_t i = 0; whole && i < slots.size(); ++i)
    whole = slots[i].group == slots[0].group && slots[i].index == int64_t(i);
  if (!whole) {
    block(slots, "attention heads over a part of a channel group");
    return false;
  }
  auto& group = groups_[slots[0].group];
  if (group.head_size != 0 && group.head_size != head_size) {
    block(slots, "attention heads of different sizes");
    return false;
  }
  group.head_size = head_size;
  return true;
}

void ChannelGroupSet::add_head_site(HeadCountSite site) { head_sites_.push_back(std::move(site)); }

ChannelAnalysis ChannelGroupSet::finish() {
  ChannelAnalysis out;
  std::map<int, int> dense;
  for (int g = 0; g < int(groups_.size()); ++g) {
    const int root = find(g);
    if (!dense.count(root)) {
      dense[root] = int(out.groups.size());
      out.groups.push_back({{}, groups_[root].channels, {}});
    }
    auto& group = out.groups[dense[root]];
    if (groups_[g].head_size != 0 && group.head_size != 0 && group.head_size != groups_[g].head_size)
      group.blocked_by.emplace_back("attention heads of different sizes");
    if (groups_[g].head_size != 0) group.head_size = groups_[g].head_size;
    group.producers.insert(group.producers.end(), groups_[g].producers.begin(), groups_[g].producers.end());
    for (const auto& reason : groups_[g].blocked_by)
      if (std::find(group.blocked_by.begin(), group.blocked_by.end(), reason) == group.blocked_by.end())
        group.blocked_by.push_back(reason);
  }
  for (auto cut : cuts_) {
    for (auto& slot : cut.slots) slot.group = dense.at(find(slot.group));
    out.cuts.push_back(std::move(cut));
  }
  out.depthwise = depthwise_;
  for (auto site : head_sites_) {
    site.slot.group = dense.at(find(site.slot.group));
    out.head_sites.push_back(std::move(site));
  }
  return out;
}

}  // namespace pare::detail
