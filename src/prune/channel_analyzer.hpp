#pragma once
// Internal to pare: the walker behind analyze_channels. channel_groups.cpp
// follows channels through convs, linears, batch norm and channel plumbing;
// channel_attention.cpp follows them through attention (head split and merge
// by view/reshape, transpose, permute, matmul, softmax), using the shapes one
// run on the example inputs gives every value.

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "prune/channel_group_set.hpp"
#include "prune/channel_groups.hpp"

namespace pare::detail {

// Where a value's channels are.
enum class Layout {
  Channels,   // dim 1 of an N x C x ... tensor (conv activations)
  Features,   // dim 1 of an N x C matrix
  Last,       // the last dim, rank unknown (linear outputs on unknown inputs)
  Flattened,  // an N x (C*S) matrix from flatten: channel c owns columns [c*S, (c+1)*S)
  Heads,      // attention: heads along `head_axis`, a head's channels along `inner_axis` (-1: reduced away)
};

struct Tracked {
  ChannelMap slots;
  Layout layout;
  int64_t rank = 0, head_axis = -1, inner_axis = -1;  // Layout::Heads only
  bool operator==(const Tracked& o) const {
    return slots == o.slots && layout == o.layout && rank == o.rank && head_axis == o.head_axis &&
           inner_axis == o.inner_axis;
  }
};

struct TrackedList {
  std::vector<std::optional<Tracked>> items;
  bool poisoned = false;  // appended to inside a branch or loop: contents unknown
};

class Analyzer {
 public:
  Analyzer(const torch::jit::Module& root, std::vector<c10::IValue> inputs) : root_(root), inputs_(std::move(inputs)) {}
  ChannelAnalysis run();

 private:
  void walk(torch::jit::Block* block);
  void visit(Node* node);
  void on_get_attr(Node* node);
  std::optional<std::string> tensor_name(Value* value) const;
  torch::Tensor tensor_at(const std::string& name) const;
  bool on_conv(Node* node);
  bool on_linear(Node* node);
  bool on_batch_norm(Node* node);
  bool on_preserving(Node* node);
  bool on_binary(Node* node);
  bool on_flatten(Node* node);
  bool on_mean(Node* node);
  bool on_list(Node* node);
  bool on_append(Node* node);
  bool on_cat(Node* node);
  void on_if(Node* node);
  void on_loop(Node* node);

  // channel_attention.cpp
  void probe_shapes(Graph& graph);
  bool visit_attention(Node* node);
  bool on_view(Node* node);
  bool split_heads(Node* node, const Tracked& input);
  bool merge_heads(Node* node, const Tracked& input);
  bool on_transpose(Node* node);
  bool on_permute(Node* node);
  bool on_matmul(Node* node);
  bool on_softmax(Node* node);
  bool on_heads_binary(Node* node);
  const std::vector<int64_t>* shape(const Value* value) const;

  std::optional<Tracked> tracked(Value* value) const;
  void block_value(Value* value, const std::string& reason);
  void add_cut(const std::string& name, int64_t dim, const ChannelMap& slots, int64_t block, bool producer);

  const torch::jit::Module& root_;
  std::vector<c10::IValue> inputs_;
  AttributeConstants attribute_constants_;
  std::unordered_map<const Value*, std::vector<int64_t>> shapes_;
  std::unordered_map<const Value*, torch::jit::Module> modules_;
  std::unordered_map<const Value*, std::string> paths_;
  std::unordered_map<const Value*, Tracked> tracked_;
  std::unordered_map<const Value*, std::shared_ptr<TrackedList>> lists_;
  ChannelGroupSet groups_;
};

}  // namespace pare::detail
