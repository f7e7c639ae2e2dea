// Channel scores, and which attention heads go: ranked per layer or across layers, removed whole.

#include "prune/channel_heads.hpp"

#include <algorithm>
#include <cmath>

#include "pare/prune/prune.hpp"
#include "prune/channel_ops.hpp"

namespace pare::detail {
namespace {

struct Head {
  double score = 0.0;
  int group = 0;
  int64_t index = 0;
};

// Every head of the unblocked attention groups, scored; per group, in head order.
std::vector<std::vector<Head>> scored_heads(const ChannelAnalysis& analysis, const ChannelScores& scores,
                                            const HeadChoice& choice) {
  std::vector<std::vector<Head>> out(analysis.groups.size());
  for (int g = 0; g < int(analysis.groups.size()); ++g) {
    const auto& group = analysis.groups[g];
    if (group.head_size == 0 || !group.blocked_by.empty()) continue;
    for (int64_t h = 0; h < group.channels / group.head_size; ++h) {
      double norm = 0.0, weights = 0.0;
      for (int64_t c = h * group.head_size; c < (h + 1) * group.head_size; ++c) {
        norm += scores.norm[g][c];
        weights += scores.weights[g][c];
      }
      // Across layers, heads of different fan-in compare by their mean |w| (or RMS).
      double score = choice.global ? (weights > 0 ? norm / weights : 0.0) : norm;
      if (choice.l2) score = std::sqrt(score);
      out[g].push_back({score, g, h});
    }
  }
  return out;
}

void drop(const ChannelAnalysis& analysis, const Head& head, ChannelKept& kept) {
  const int64_t size = analysis.groups[head.group].head_size;
  for (int64_t c = head.index * size; c < (head.index + 1) * size; ++c) kept[head.group][c] = false;
}

bool lower(const Head& a, const Head& b) { return a.score < b.score; }

}  // namespace

ChannelScores score_channels(const torch::jit::Module& module, const ChannelAnalysis& analysis, bool l2) {
  ChannelScores scores;
  for (const auto& group : analysis.groups) {
    scores.norm.emplace_back(group.channels, 0.0);
    scores.weights.emplace_back(group.channels, 0.0);
  }
  for (const auto& cut : analysis.cuts) {
    if (!cut.producer) continue;
    const auto rows = submodule_at(module, cut.module_path)
                          .attr(cut.attr)
                          .toTensor()
                          .detach()
                          .to(torch::kDouble)
                          .reshape({int64_t(cut.slots.size()), -1});
    const auto per_row = (l2 ? rows.square() : rows.abs()).sum(1).contiguous();
    const double* values = per_row.data_ptr<double>();
    for (size_t i = 0; i < cut.slots.size(); ++i) {
      scores.norm[cut.slots[i].group][cut.slots[i].index] += values[i];
      scores.weights[cut.slots[i].group][cut.slots[i].index] += double(rows.size(1));
    }
  }
  return scores;
}

void choose_heads(const ChannelAnalysis& analysis, const ChannelScores& scores, const HeadChoice& choice,
                  ChannelKept& kept) {
  if (choice.amount <= 0.0) return;
  auto heads = scored_heads(analysis, scores, choice);
  if (!choice.global) {
    for (auto& layer : heads) {
      const int64_t count = std::min(prune_count(choice.amount, int64_t(layer.size())), int64_t(layer.size()) - 1);
      std::stable_sort(layer.begin(), layer.end(), lower);
      for (int64_t k = 0; k < count; ++k) drop(analysis, layer[k], kept);
    }
    return;
  }
  std::vector<Head> all;
  std::vector<int64_t> remaining(heads.size());
  for (size_t g = 0; g < heads.size(); ++g) {
    all.insert(all.end(), heads[g].begin(), heads[g].end());
    remaining[g] = int64_t(heads[g].size());
  }
  std::stable_sort(all.begin(), all.end(), lower);
  int64_t budget = prune_count(choice.amount, int64_t(all.size()));
  for (const auto& head : all) {
    if (budget == 0) break;
    if (remaining[head.group] <= 1) continue;  // every layer keeps a head
    drop(analysis, head, kept);
    --remaining[head.group];
    --budget;
  }
}

}  // namespace pare::detail
