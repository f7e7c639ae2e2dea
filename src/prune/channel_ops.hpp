#pragma once
// Internal to pare: what the channel analysis knows about individual
// TorchScript ops (which keep channels, which only read metadata, how a conv
// call spells its groups) and small graph helpers shared with PruneChannels.

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>

namespace pare::detail {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

struct ConvSpec {
  int64_t groups = 1;
  size_t groups_input = 6;  ///< where the groups argument sits in the call
};

bool is_conv(c10::Symbol kind);
bool is_linear(c10::Symbol kind);
/// A non-transposed conv call whose groups argument is a constant; nullopt otherwise.
std::optional<ConvSpec> conv_spec(const Node* node);
/// add/sub/mul/div (and in-place forms): two tensors of one channel layout.
bool is_binary(c10::Symbol kind);
/// Ops whose output has the channels of their first input (activations, pooling, dropout).
bool is_channel_preserving(c10::Symbol kind);
/// The preserving ops that need a N x C x spatial input (pooling).
bool is_spatial(c10::Symbol kind);
/// Ops that read a tensor's metadata (size, dim, dtype), never its channels' values.
bool reads_metadata_only(c10::Symbol kind);

std::optional<int64_t> constant_int(const Value* value);
std::optional<std::vector<int64_t>> constant_int_list(const Value* value);

/// Constants that stand for a module's int attribute ("layers.0.attention.heads").
using AttributeConstants = std::unordered_map<const torch::jit::Value*, std::string>;

/// A copy of forward's graph, inlined, with the module's scalar attributes
/// folded to constants and dead branches removed. Its view/reshape nodes carry
/// their site number (view_site). `attributes`, if given, receives the constants
/// that int attributes became.
std::shared_ptr<torch::jit::Graph> specialized_forward_graph(const torch::jit::Module& module,
                                                             AttributeConstants* attributes = nullptr);

/// The aten::view/aten::reshape nodes of an inlined graph, in order (nested blocks
/// included): their index is their site, the same in a copy inlined the same way.
std::vector<Node*> view_nodes(torch::jit::Block* block);
/// The site a node of specialized_forward_graph carries; -1 if none.
int64_t view_site(const Node* node);

/// The tensor a chain of prim::GetAttr from the graph's self input reads, if any.
std::optional<torch::Tensor> attribute_tensor(const torch::jit::Module& root, const torch::jit::Value* value);

/// The submodule at a dotted path ("" is `root`).
torch::jit::Module submodule_at(const torch::jit::Module& root, const std::string& path);

/// Rewrites the depthwise conv calls in the methods of `conv` so their
/// `groups` argument reads the weight's channel count instead of the constant `old_groups`.
void make_groups_follow_weight(const torch::jit::Module& conv, int64_t old_groups);

}  // namespace pare::detail
