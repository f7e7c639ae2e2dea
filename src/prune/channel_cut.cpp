// Cutting the tensors of a channel analysis down to the kept channels.

#include "prune/channel_cut.hpp"

#include "prune/channel_ops.hpp"

namespace pare::detail {

// Shrinks every cut tensor to its kept entries; returns the kept indices per tensor and dim.
KeptIndices cut_tensors(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelKept& kept) {
  std::map<std::string, std::vector<std::pair<int64_t, torch::Tensor>>> indices;
  std::map<std::string, torch::Tensor> resized;
  for (const auto& cut : analysis.cuts) {
    std::vector<int64_t> keep;
    for (int64_t p = 0; p < int64_t(cut.slots.size()) * cut.block; ++p) {
      const auto& slot = cut.slots[p / cut.block];
      if (kept[slot.group][slot.index]) keep.push_back(p);
    }
    if (int64_t(keep.size()) == int64_t(cut.slots.size()) * cut.block) continue;
    const auto owner = detail::submodule_at(module, cut.module_path);
    auto& tensor = resized.emplace(cut.name(), owner.attr(cut.attr).toTensor()).first->second;
    const auto index = torch::tensor(keep, torch::kLong);
    tensor = tensor.detach().index_select(cut.dim, index);
    indices[cut.name()].emplace_back(cut.dim, index);
  }
  for (auto& [name, tensor] : resized) {
    const auto dot = name.rfind('.');
    auto owner = detail::submodule_at(module, dot == std::string::npos ? "" : name.substr(0, dot));
    const std::string attr = dot == std::string::npos ? name : name.substr(dot + 1);
    tensor.set_requires_grad(owner.attr(attr).toTensor().requires_grad());
    owner.setattr(attr, tensor);
  }
  return indices;
}

// Depthwise convs carry `groups` as a constant of their type; those that lost
// channels read it from their weight instead.
// Returns whether any method changed.
bool follow_depthwise(const torch::jit::Module& module, const ChannelAnalysis& analysis,
                      const KeptIndices& kept) {
  bool changed = false;
  for (const auto& name : analysis.depthwise) {
    if (!kept.count(name)) continue;
    changed = true;
    int64_t before = 0;
    for (const auto& cut : analysis.cuts)
      if (cut.name() == name && cut.dim == 0) before = int64_t(cut.slots.size());
    const auto dot = name.rfind('.');
    detail::make_groups_follow_weight(detail::submodule_at(module, dot == std::string::npos ? "" : name.substr(0, dot)),
                                      before);
  }
  return changed;
}

torch::jit::Module pruned_copy(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelKept& kept) {
  auto copy = module.clone();
  const auto indices = cut_tensors(copy, analysis, kept);
  // Methods cache their optimized graphs; a clone starts from the rewritten ones.
  return follow_depthwise(copy, analysis, indices) ? copy.clone() : copy;
}

}  // namespace pare::detail
