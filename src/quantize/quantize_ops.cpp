// Which TorchScript ops int8 quantization understands, and the preparation
// of a frozen graph before planning (see quantize_graph.hpp).

#include <cmath>
#include <limits>
#include <numeric>

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/remove_mutation.h>
#include <torch/script.h>

#include "quantize/quantize_graph.hpp"

namespace pare::detail {
namespace {

using c10::Symbol;
using torch::jit::WithInsertPoint;
namespace aten = c10::aten;

bool is_tensor(const Value* v) { return v->type()->isSubtypeOf(*c10::TensorType::get()); }

std::optional<double> constant_number(Value* v) {
  const auto value = torch::jit::toIValue(v);
  if (!value) return std::nullopt;
  if (value->isDouble()) return value->toDouble();
  if (value->isInt()) return double(value->toInt());
  return std::nullopt;
}

std::optional<torch::Tensor> constant_tensor(Value* v) {
  const auto value = torch::jit::toIValue(v);
  if (!value || !value->isTensor()) return std::nullopt;
  return value->toTensor();
}

// The bound of clamp(min=None, ...): none is open.
std::optional<double> clamp_bound(Value* v, double open) {
  const auto value = torch::jit::toIValue(v);
  if (value && value->isNone()) return open;
  return constant_number(v);
}

bool is_inference_batch_norm(Node* n) {
  if (n->kind() != aten::batch_norm || n->inputs().size() != 9) return false;
  const auto training = torch::jit::toIValue(n->input(5));
  if (!training || !training->isBool() || training->toBool()) return false;
  for (size_t i : {1, 2}) {
    const auto value = torch::jit::toIValue(n->input(i));
    if (!value || !(value->isNone() || value->isTensor())) return false;
  }
  return constant_tensor(n->input(3)) && constant_tensor(n->input(4)) && constant_number(n->input(7));
}

// A list that nothing but cat reads: its items are what cat sees.
bool only_concatenated(Value* list) {
  for (const auto& use : list->uses())
    if (use.user->kind() != aten::cat) return false;
  return true;
}

Value* insert_tensor(Graph& graph, const torch::Tensor& t, const std::string& name) {
  Value* v = graph.insertConstant(t);
  v->setDebugName(name);
  return v;
}

// conv -> batch_norm where the conv output is also read by shape checks
// (torchvision's `_check_input_dim`), which stops LibTorch's own folding.
void fold_batch_norm_past_shape_checks(Graph& graph) {
  for (auto it = graph.nodes().begin(); it != graph.nodes().end();) {
    Node* bn = *it++;
    if (!is_inference_batch_norm(bn)) continue;
    Node* conv = bn->input(0)->node();
    if (conv->kind() != aten::conv2d && conv->kind() != aten::conv1d) continue;
    bool only_shapes = true;
    for (const auto& use : conv->output()->uses()) only_shapes &= use.user == bn || reads_only_shape(use.user);
    const auto weight = constant_tensor(conv->input(1));
    const auto bias_value = torch::jit::toIValue(conv->input(2));
    if (!only_shapes || !weight || !bias_value || !(bias_value->isNone() || bias_value->isTensor())) continue;
    const auto mean = *constant_tensor(bn->input(3)), var = *constant_tensor(bn->input(4));
    const auto gamma = constant_tensor(bn->input(1)).value_or(torch::ones_like(mean));
    const auto beta = constant_tensor(bn->input(2)).value_or(torch::zeros_like(mean));
    const auto bias = bias_value->isTensor() ? bias_value->toTensor() : torch::zeros_like(mean);
    const auto factor = gamma * torch::rsqrt(var + *constant_number(bn->input(7)));
    std::vector<int64_t> shape(size_t(weight->dim()), 1);
    shape[0] = -1;
    WithInsertPoint guard(graph.block()->nodes().front());
    const std::string name = conv->input(1)->debugName();
    conv->replaceInput(1, insert_tensor(graph, (*weight * factor.reshape(shape)).contiguous(), name + "_fused_bn"));
    conv->replaceInput(2, insert_tensor(graph, (bias - mean) * factor + beta, name + "_bias_fused_bn"));
    bn->output()->replaceAllUsesWith(conv->output());
    bn->destroy();
  }
}

// Whether `list` is only appended to (append's result unused) and concatenated, all in the graph's top block.
bool only_appended_and_concatenated(Graph& graph, Value* list) {
  for (const auto& use : list->uses()) {
    const bool append = use.user->kind() == aten::append && use.user->output()->uses().empty();
    if (use.user->owningBlock() != graph.block() || use.offset != 0 || !(append || use.user->kind() == aten::cat))
      return false;
  }
  return !list->uses().empty();
}

// `features = [x]; features.append(y); cat(features)` (DenseNet): each cat gets
// a list of the items appended before it, and the appends go. LibTorch's
// RemoveListMutation leaves lists read between appends alone.
void unroll_list_appends(Graph& graph) {
  std::vector<Node*> lists;
  for (Node* n : graph.nodes())
    if (n->kind() == c10::prim::ListConstruct && only_appended_and_concatenated(graph, n->output())) lists.push_back(n);
  for (Node* list : lists) {
    std::vector<Node*> users;
    for (const auto& use : list->output()->uses()) users.push_back(use.user);
    std::sort(users.begin(), users.end(), [](Node* a, Node* b) { return a->isBefore(b); });
    const auto element = list->output()->type()->castRaw<c10::ListType>()->getElementType();
    std::vector<Value*> items(list->inputs().begin(), list->inputs().end());
    for (Node* user : users) {
      if (user->kind() == aten::append) {
        items.push_back(user->input(1));
        user->destroy();
        continue;
      }
      WithInsertPoint guard(user);
      user->replaceInput(0, graph.insertNode(graph.createList(element, items))->output());
    }
  }
}

}  // namespace

bool Activation::is_relu() const { return node->kind() == aten::relu; }

std::string layer_kind_of(const Node* n) {
  if (n->kind() == aten::linear) return "Linear";
  if (n->kind() == aten::conv2d) return "Conv2d";
  if (n->kind() == aten::conv1d) return "Conv1d";
  return "";
}

std::string join_kind_of(Node* n) {
  if (n->outputs().size() != 1) return "";
  if (n->kind() == aten::add && n->inputs().size() == 3 && is_tensor(n->input(0)) && is_tensor(n->input(1)))
    return constant_number(n->input(2)) == 1.0 ? "add" : "";
  if (n->kind() == aten::mul && n->inputs().size() == 2 && is_tensor(n->input(0)) && is_tensor(n->input(1)))
    return "mul";
  if (n->kind() == aten::cat && n->input(0)->node()->kind() == c10::prim::ListConstruct &&
      torch::jit::toIValue(n->input(1)) && only_concatenated(n->input(0)))
    return "cat";
  if (is_inference_batch_norm(n)) return "batch_norm";
  if (n->kind() == aten::hardswish && n->inputs().size() == 1) return "hardswish";
  return "";
}

std::vector<Value*> tensor_inputs_of_join(Node* n) {
  if (n->kind() == aten::cat) {
    const auto items = n->input(0)->node()->inputs();
    return {items.begin(), items.end()};
  }
  if (n->kind() == aten::add || n->kind() == aten::mul) return {n->input(0), n->input(1)};
  return {n->input(0)};
}

bool carries_int8(const Node* n) {
  static const std::set<Symbol> kinds = {
      aten::relu,    aten::hardtanh, aten::max_pool2d, aten::avg_pool2d, aten::adaptive_avg_pool2d,
      aten::flatten, aten::reshape,  aten::view,       aten::dropout,    aten::sigmoid,
      aten::hardsigmoid, aten::contiguous};
  if (n->outputs().size() != 1 || n->inputs().empty()) return false;
  if (n->kind() == aten::clamp) return n->inputs().size() == 3 && !is_tensor(n->input(1)) && !is_tensor(n->input(2));
  return kinds.count(n->kind()) > 0;
}

bool reads_only_shape(const Node* n) {
  static const std::set<Symbol> kinds = {aten::dim, aten::size, Symbol::aten("numel"), aten::len};
  return kinds.count(n->kind()) > 0;
}

std::optional<Activation> absorbable_activation(Node* producer) {
  Node* user = nullptr;
  for (const auto& use : producer->output()->uses()) {
    // A shape check between the two (what is left of a folded BatchNorm's
    // `input.dim() != 4`) reads the same shape from the activation's output.
    if (reads_only_shape(use.user)) continue;
    if (user || use.offset != 0) return std::nullopt;
    user = use.user;
  }
  if (!user || user->owningBlock() != producer->owningBlock()) return std::nullopt;
  const double inf = std::numeric_limits<double>::infinity();
  Activation a{user, 0, inf};
  if (user->kind() == aten::relu && user->inputs().size() == 1) return a;
  if (user->kind() != aten::hardtanh && !(user->kind() == aten::clamp && carries_int8(user))) return std::nullopt;
  const auto lo = clamp_bound(user->input(1), -inf), hi = clamp_bound(user->input(2), inf);
  if (!lo || !hi || *lo > 0 || *hi < 0) return std::nullopt;
  a.lo = *lo;
  a.hi = *hi;
  return a;
}

void prepare_for_int8(const std::shared_ptr<Graph>& graph) {
  unroll_list_appends(*graph);
  torch::jit::RemoveListMutation(graph);
  torch::jit::RemoveTensorMutation(graph);
  fold_batch_norm_past_shape_checks(*graph);
  torch::jit::EliminateDeadCode(graph);
}

GraphCorrespondence correspond(Graph& from, Graph& to) {
  GraphCorrespondence map;
  const std::function<void(torch::jit::Block*, torch::jit::Block*)> walk = [&](auto* a, auto* b) {
    for (size_t i = 0; i < a->inputs().size(); ++i) map.values[a->inputs()[i]] = b->inputs()[i];
    auto bn = b->nodes().begin();
    for (Node* an : a->nodes()) {
      Node* other = *bn++;
      map.nodes[an] = other;
      for (size_t i = 0; i < an->outputs().size(); ++i) map.values[an->output(i)] = other->output(i);
      for (size_t i = 0; i < an->blocks().size(); ++i) walk(an->blocks()[i], other->blocks()[i]);
    }
  };
  walk(from.block(), to.block());
  return map;
}

std::vector<size_t> island_of_steps(const QuantPlan& plan) {
  std::vector<size_t> parent(plan.steps.size());
  std::iota(parent.begin(), parent.end(), 0);
  const std::function<size_t(size_t)> root = [&](size_t i) { return parent[i] == i ? i : parent[i] = root(parent[i]); };
  std::map<Value*, size_t> producer;
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    for (Value* in : plan.steps[i].int8_inputs())
      if (auto it = producer.find(in); it != producer.end()) parent[root(i)] = root(it->second);
    producer[plan.steps[i].output()] = i;
  }
  std::map<size_t, size_t> numbering;
  std::vector<size_t> island;
  for (size_t i = 0; i < plan.steps.size(); ++i) island.push_back(numbering.emplace(root(i), numbering.size()).first->second);
  return island;
}

QuantPlan without_islands(const QuantPlan& plan, const std::set<size_t>& dropped, const std::string& reason) {
  const auto island = island_of_steps(plan);
  QuantPlan out = plan;
  out.steps.clear();
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const auto& step = plan.steps[i];
    if (!dropped.count(island[i])) {
      out.steps.push_back(step);
    } else if (step.kind == QuantStep::Kind::Layer) {
      out.float_layers.push_back({step.name, step.layer_kind, reason});
    } else {
      out.float_ops.push_back({step.node->kind().toQualString(), step.node->kind().toQualString(), reason});
    }
  }
  return out;
}

QuantPlan translated(const QuantPlan& plan, const GraphCorrespondence& map) {
  QuantPlan out = plan;
  for (auto& step : out.steps) {
    step.node = map.nodes.at(step.node);
    if (step.activation) step.activation->node = map.nodes.at(step.activation->node);
  }
  for (auto& [value, what] : out.observed) value = map.values.at(value);
  out.bounds.clear();
  for (const auto& [value, range] : plan.bounds) out.bounds[map.values.at(value)] = range;
  return out;
}

}  // namespace pare::detail
