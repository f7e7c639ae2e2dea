// Following channels through attention. A linear's output split into heads by
// view/reshape (b, t, h, hd) becomes a group of heads: q, k and v meet in the
// two matmuls and are tied there, transpose/permute move the head axis, the
// merge back (b, t, h * hd) feeds the output projection, whose input columns
// follow. Every step checks the shapes of one run on the example inputs, so a
// view that does not split the channels into heads blocks the group as before.

#include <torch/csrc/jit/api/function_impl.h>

#include <algorithm>

#include "pare/core/error.hpp"
#include "prune/channel_analyzer.hpp"

namespace pare::detail {
namespace {

int64_t normalized_dim(int64_t dim, int64_t rank) { return dim < 0 ? dim + rank : dim; }

bool same_prefix(const std::vector<int64_t>& a, const std::vector<int64_t>& b, size_t n) {
  return a.size() >= n && b.size() >= n && std::equal(a.begin(), a.begin() + int64_t(n), b.begin());
}

bool is_tensor(const Value* value) { return value->type()->cast<c10::TensorType>() != nullptr; }

// Element `index` of a view/reshape's size list: its value when constant, and
// the Value that spells it when the list is built element by element.
struct SizeElement {
  std::optional<int64_t> constant;
  const Value* value = nullptr;
};

SizeElement size_element(const Value* list, size_t index) {
  if (list->node()->kind() == c10::prim::ListConstruct) {
    if (index >= list->node()->inputs().size()) return {};
    const Value* element = list->node()->input(index);
    return {constant_int(element), element};
  }
  const auto all = constant_int_list(list);
  if (!all || index >= all->size()) return {};
  return {(*all)[index], nullptr};
}

}  // namespace

// One run of the specialised graph with every top-level tensor as an extra
// output: the shapes that attention is followed by.
void Analyzer::probe_shapes(Graph& graph) {
  std::vector<Value*> taps;
  for (Value* input : graph.inputs())
    if (is_tensor(input)) taps.push_back(input);
  for (Node* node : graph.nodes())
    for (Value* output : node->outputs())
      if (is_tensor(output)) taps.push_back(output);
  const auto outputs = graph.outputs().vec();
  while (!graph.outputs().empty()) graph.eraseOutput(0);
  Node* list = graph.insertNode(graph.createList(c10::TensorType::get(), taps));
  graph.registerOutput(list->output());
  torch::jit::GraphFunction probe("pare_probe_shapes", graph.copy(), nullptr);
  graph.eraseOutput(0);
  list->destroy();
  for (Value* output : outputs) graph.registerOutput(output);

  std::vector<c10::IValue> stack{root_._ivalue()};
  stack.insert(stack.end(), inputs_.begin(), inputs_.end());
  std::vector<torch::Tensor> values;
  try {
    values = probe(stack).toTensorVector();
  } catch (const std::exception& e) {  // the interpreter's errors are not all c10::Error
    throw Error(std::string("PruneChannels: the model does not run on its example inputs: ") + e.what(),
                Error::Kind::Runtime);
  }
  for (size_t i = 0; i < taps.size() && i < values.size(); ++i) shapes_[taps[i]] = values[i].sizes().vec();
}

const std::vector<int64_t>* Analyzer::shape(const Value* value) const {
  const auto found = shapes_.find(value);
  return found == shapes_.end() ? nullptr : &found->second;
}

bool Analyzer::visit_attention(Node* node) {
  const auto kind = node->kind();
  if (kind == c10::aten::view || kind == c10::aten::reshape) return on_view(node);
  if (kind == c10::aten::transpose) return on_transpose(node);
  if (kind == c10::aten::permute) return on_permute(node);
  if (kind == c10::aten::matmul) return on_matmul(node);
  if (kind == c10::aten::softmax || kind == c10::aten::log_softmax) return on_softmax(node);
  return false;
}

bool Analyzer::on_view(Node* node) {
  const auto input = tracked(node->input(0));
  if (!input) return true;
  if (input->layout == Layout::Heads) return merge_heads(node, *input);
  if (input->layout == Layout::Last || input->layout == Layout::Features) return split_heads(node, *input);
  return false;
}

// (..., h * hd) -> (..., h, hd): the channels become h heads of hd channels.
bool Analyzer::split_heads(Node* node, const Tracked& input) {
  const auto* in = shape(node->input(0));
  const auto* out = shape(node->output());
  if (!in || !out || in->empty() || out->size() != in->size() + 1) return false;
  const int64_t rank = int64_t(out->size()), channels = in->back();
  const int64_t heads = (*out)[rank - 2], head_size = (*out)[rank - 1];
  if (channels != int64_t(input.slots.size()) || heads * head_size != channels ||
      !same_prefix(*in, *out, in->size() - 1))
    return false;
  const auto count = size_element(node->input(1), size_t(rank - 2));
  if (!count.constant || view_site(node) < 0) {
    groups_.block(input.slots, "head count computed at run time in " + std::string(node->kind().toQualString()));
    return true;
  }
  if (!groups_.set_head_size(input.slots, head_size)) return true;
  if (*count.constant != -1) {
    const auto attribute = attribute_constants_.find(count.value);
    groups_.add_head_site({view_site(node), size_t(rank - 2), input.slots.front(), false,
                           attribute == attribute_constants_.end() ? "" : attribute->second});
  }
  tracked_[node->output()] = {input.slots, Layout::Heads, rank, rank - 2, rank - 1};
  return true;
}

// (..., h, hd) -> (..., h * hd): heads back to channels in the last dim.
bool Analyzer::merge_heads(Node* node, const Tracked& input) {
  const auto* in = shape(node->input(0));
  const auto* out = shape(node->output());
  const int64_t rank = input.rank;
  if (!in || !out || int64_t(in->size()) != rank || int64_t(out->size()) != rank - 1) return false;
  if (input.head_axis != rank - 2 || input.inner_axis != rank - 1) return false;
  if (!same_prefix(*in, *out, size_t(rank - 2)) || out->back() != (*in)[rank - 2] * (*in)[rank - 1]) return false;
  const auto count = size_element(node->input(1), size_t(rank - 2));
  if (!count.constant || view_site(node) < 0) {
    groups_.block(input.slots, "merged head width computed at run time in " + std::string(node->kind().toQualString()));
    return true;
  }
  if (*count.constant != -1) groups_.add_head_site({view_site(node), size_t(rank - 2), input.slots.front(), true, ""});
  tracked_[node->output()] = {input.slots, Layout::Last};
  return true;
}

bool Analyzer::on_transpose(Node* node) {
  const auto input = tracked(node->input(0));
  if (!input) return true;
  const auto first = constant_int(node->input(1)), second = constant_int(node->input(2));
  if (input->layout != Layout::Heads || !first || !second) return false;
  const int64_t a = normalized_dim(*first, input->rank), b = normalized_dim(*second, input->rank);
  const auto swapped = [&](int64_t axis) { return axis == a ? b : axis == b ? a : axis; };
  auto out = *input;
  out.head_axis = swapped(input->head_axis);
  if (input->inner_axis >= 0) out.inner_axis = swapped(input->inner_axis);
  tracked_[node->output()] = out;
  return true;
}

bool Analyzer::on_permute(Node* node) {
  const auto input = tracked(node->input(0));
  if (!input) return true;
  const auto dims = constant_int_list(node->input(1));
  if (input->layout != Layout::Heads || !dims || int64_t(dims->size()) != input->rank) return false;
  auto out = *input;
  for (int64_t axis = 0; axis < input->rank; ++axis) {
    const int64_t from = normalized_dim((*dims)[axis], input->rank);
    if (from == input->head_axis) out.head_axis = axis;
    if (from == input->inner_axis) out.inner_axis = axis;
  }
  tracked_[node->output()] = out;
  return true;
}

// q @ k^T contracts a head's channels (q's and k's heads and channels are tied);
// probabilities @ v keeps v's (the probabilities' heads are v's heads).
bool Analyzer::on_matmul(Node* node) {
  const auto a = tracked(node->input(0)), b = tracked(node->input(1));
  if (!a && !b) return true;
  if (!a || !b || a->layout != Layout::Heads || b->layout != Layout::Heads || a->rank != b->rank) return false;
  const int64_t rank = a->rank;
  if (a->head_axis != b->head_axis || a->head_axis >= rank - 2) return false;
  const bool scores = a->inner_axis == rank - 1 && b->inner_axis == rank - 2;
  const bool context = a->inner_axis == -1 && b->inner_axis == rank - 1;
  if (!scores && !context) return false;
  if (!groups_.tie(a->slots, b->slots, "aten::matmul of mismatched heads")) return true;
  tracked_[node->output()] = {scores ? a->slots : b->slots, Layout::Heads, rank, a->head_axis, scores ? -1 : rank - 1};
  return true;
}

bool Analyzer::on_softmax(Node* node) {
  const auto input = tracked(node->input(0));
  if (!input) return true;
  const auto dim = constant_int(node->input(1));
  if (input->layout != Layout::Heads || !dim) return false;
  const int64_t axis = normalized_dim(*dim, input->rank);
  if (axis == input->head_axis || axis == input->inner_axis) return false;
  tracked_[node->output()] = *input;
  return true;
}

// Heads with heads of the same layout tie; with an untracked tensor (an
// attention mask, a scale) only if it broadcasts along the heads and their channels.
bool Analyzer::on_heads_binary(Node* node) {
  const auto a = tracked(node->input(0)), b = tracked(node->input(1));
  if (a && b) {
    if (a->layout != b->layout || a->rank != b->rank || a->head_axis != b->head_axis || a->inner_axis != b->inner_axis)
      return false;
    if (groups_.tie(a->slots, b->slots, std::string(node->kind().toQualString()) + " of mismatched heads"))
      tracked_[node->output()] = *a;
    return true;
  }
  const Tracked& heads = a ? *a : *b;
  const auto* other = shape(node->input(a ? 1 : 0));
  if (!other || int64_t(other->size()) > heads.rank) return false;
  const auto size_at = [&](int64_t axis) {
    const int64_t i = axis - (heads.rank - int64_t(other->size()));
    return i < 0 ? int64_t(1) : (*other)[i];
  };
  if (size_at(heads.head_axis) != 1 || (heads.inner_axis >= 0 && size_at(heads.inner_axis) != 1)) return false;
  tracked_[node->output()] = heads;
  return true;
}

}  // namespace pare::detail
