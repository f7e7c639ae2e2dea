#pragma once
// Internal to pare: which attention heads PruneChannels removes. A head is
// scored by the norm of the q/k/v rows that compute it; heads go whole, and
// every attention layer keeps at least one.

#include <vector>

#include "prune/channel_cut.hpp"

namespace pare::detail {

/// Per group, per channel: the norm summed over its producing rows, and how many weights those hold.
struct ChannelScores {
  std::vector<std::vector<double>> norm, weights;
};

/// Every channel's scores from the producer cuts of `analysis`: sum of |w| (or of w² when `l2`).
ChannelScores score_channels(const torch::jit::Module& module, const ChannelAnalysis& analysis, bool l2);

/// How heads are ranked and how many go.
struct HeadChoice {
  double amount = 0.0;  ///< fraction of heads removed
  bool global = false;  ///< one ranking across layers (by mean |w| or RMS) instead of per layer
  bool l2 = false;      ///< scores are square roots of summed squares
};

/// Marks the channels of the removed heads of every unblocked attention group in `kept`.
void choose_heads(const ChannelAnalysis& analysis, const ChannelScores& scores, const HeadChoice& choice,
                  ChannelKept& kept);

}  // namespace pare::detail
