#pragma once
// Internal to pare: nn.MultiheadAttention written out as the attention the
// channel analysis follows, so PruneChannels can remove its heads.
//
// Its scripted forward ties the attention's inner width to the residual width
// (the fused kernel checks `in_proj_weight` has 3 * embed_dim rows, the
// functional path derives head_dim from the query), so no choice of weights
// removes a head. Unpacked, each such module keeps its attributes and its
// `out_proj`, its packed `in_proj_weight`/`in_proj_bias` become
// `query_weight`, `key_weight`, `value_weight` (and biases), and its forward,
// with the same signature, is the q/k/v linears, the split into heads by view,
// the scaled softmax and the merge: the same numbers, and a file stock
// PyTorch loads. docs/channels.md lists what stays whole.

#include <vector>

#include <torch/script.h>

#include "pare/prune/prune_channels.hpp"

namespace pare::detail {

/// Rewrites, in place, every nn.MultiheadAttention of `module` whose heads can
/// be followed, and checks on `inputs` that copies of it compute the same
/// outputs before and after. `module` must be a clone the caller owns (its
/// class types change) that has not run yet. Returns a report row for each
/// one left as it was: its heads stay whole, `blocked_by` says why.
std::vector<ChannelGroupReport> unpack_multihead_attention(torch::jit::Module& module,
                                                           const std::vector<c10::IValue>& inputs);

}  // namespace pare::detail
