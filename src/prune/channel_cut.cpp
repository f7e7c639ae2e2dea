// Cutting the tensors of a channel analysis down to the kept channels.

#include "prune/channel_cut.hpp"

#include <torch/csrc/jit/passes/inliner.h>

#include <algorithm>

#include "pare/core/error.hpp"
#include "prune/channel_ops.hpp"

namespace pare::detail {
namespace {

// The view's size list, element `index` replaced by the constant `value`.
void set_size_element(Node* view, size_t index, int64_t value) {
  Graph* graph = view->owningGraph();
  torch::jit::WithInsertPoint guard(view);
  Value* list = view->input(1);
  std::vector<Value*> elements;
  if (list->node()->kind() == c10::prim::ListConstruct) {
    elements = list->node()->inputs().vec();
  } else {
    for (int64_t size : torch::jit::toIValue(list)->toIntVector()) elements.push_back(graph->insertConstant(size));
  }
  require(index < elements.size(), "PruneChannels: a head count's place in a size list moved; this is a bug in pare",
          Error::Kind::Runtime);
  elements[index] = graph->insertConstant(value);
  view->replaceInput(1, graph->insertNode(graph->createList(c10::IntType::get(), elements))->output());
}

int64_t kept_count(const std::vector<bool>& kept) { return std::count(kept.begin(), kept.end(), true); }

}  // namespace

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

bool rewrite_head_counts(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelKept& kept) {
  const auto lost_heads = [&](const HeadCountSite& site) {
    return kept_count(kept[site.slot.group]) < analysis.groups[site.slot.group].channels;
  };
  if (std::none_of(analysis.head_sites.begin(), analysis.head_sites.end(), lost_heads)) return false;
  // Inlined, every layer has views of its own: each reads its own head count.
  auto graph = module.get_method("forward").graph();
  torch::jit::Inline(*graph);
  const auto views = view_nodes(graph->block());
  for (const auto& site : analysis.head_sites) {
    if (!lost_heads(site)) continue;
    require(site.site >= 0 && size_t(site.site) < views.size(),
            "PruneChannels: the forward graph has fewer views than analysed; this is a bug in pare",
            Error::Kind::Runtime);
    const auto& group = analysis.groups[site.slot.group];
    const int64_t channels = kept_count(kept[site.slot.group]);
    const int64_t count = site.merged ? channels : channels / group.head_size;
    set_size_element(views[size_t(site.site)], site.element, count);
    if (!site.attribute.empty()) {
      const auto dot = site.attribute.rfind('.');
      auto owner = submodule_at(module, dot == std::string::npos ? "" : site.attribute.substr(0, dot));
      owner.setattr(dot == std::string::npos ? site.attribute : site.attribute.substr(dot + 1), c10::IValue(count));
    }
  }
  return true;
}

torch::jit::Module pruned_copy(const torch::jit::Module& module, const ChannelAnalysis& analysis, const ChannelKept& kept) {
  auto copy = module.clone();
  const auto indices = cut_tensors(copy, analysis, kept);
  // Methods cache their optimized graphs; a clone starts from the rewritten ones.
  // Depthwise convs first: inlining copies their rewritten calls.
  const bool depthwise = follow_depthwise(copy, analysis, indices);
  return rewrite_head_counts(copy, analysis, kept) || depthwise ? copy.clone() : copy;
}

}  // namespace pare::detail
