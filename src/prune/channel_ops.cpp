#include "prune/channel_ops.hpp"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/script.h>

#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <functional>
#include <unordered_map>
#include <unordered_set>

#include "pare/core/error.hpp"

namespace pare::detail {
namespace {

using Kinds = std::unordered_set<c10::Symbol>;

Kinds symbols(std::initializer_list<const char*> names) {
  Kinds out;
  for (const char* name : names) out.insert(c10::Symbol::fromQualString(name));
  return out;
}

const Kinds& spatial_ops() {
  static const Kinds kinds = symbols({
      "aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d", "aten::avg_pool1d", "aten::avg_pool2d",
      "aten::avg_pool3d", "aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool3d",
      "aten::upsample_nearest2d", "aten::upsample_bilinear2d"});
  return kinds;
}

const Kinds& elementwise_ops() {
  static const Kinds kinds = symbols({
      "aten::relu", "aten::relu_", "aten::relu6", "aten::relu6_", "aten::hardtanh", "aten::hardtanh_",
      "aten::sigmoid", "aten::sigmoid_", "aten::tanh", "aten::tanh_", "aten::hardswish", "aten::hardswish_",
      "aten::hardsigmoid", "aten::hardsigmoid_", "aten::silu", "aten::silu_", "aten::gelu", "aten::mish",
      "aten::leaky_relu", "aten::leaky_relu_", "aten::elu", "aten::elu_", "aten::softplus", "aten::dropout",
      "aten::dropout_", "aten::feature_dropout", "aten::feature_dropout_", "aten::alpha_dropout",
      "aten::contiguous", "aten::clone", "aten::detach"});
  return kinds;
}

}  // namespace

bool is_conv(c10::Symbol kind) {
  static const Kinds kinds = symbols({"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution"});
  return kinds.count(kind) > 0;
}

bool is_linear(c10::Symbol kind) { return kind == c10::aten::linear; }

std::optional<ConvSpec> conv_spec(const Node* node) {
  ConvSpec spec;
  if (node->kind() == c10::aten::_convolution) {
    const auto transposed = torch::jit::toIValue(node->input(6));
    if (!transposed || !transposed->isBool() || transposed->toBool()) return std::nullopt;
    spec.groups_input = 8;
  }
  if (node->inputs().size() <= spec.groups_input) return std::nullopt;
  const auto groups = constant_int(node->input(spec.groups_input));
  if (!groups) return std::nullopt;
  spec.groups = *groups;
  return spec;
}

bool is_binary(c10::Symbol kind) {
  static const Kinds kinds = symbols({"aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul",
                                      "aten::mul_", "aten::div", "aten::div_"});
  return kinds.count(kind) > 0;
}

bool is_channel_preserving(c10::Symbol kind) {
  return elementwise_ops().count(kind) > 0 || spatial_ops().count(kind) > 0;
}

bool is_spatial(c10::Symbol kind) { return spatial_ops().count(kind) > 0; }

bool reads_metadata_only(c10::Symbol kind) {
  static const Kinds kinds = symbols({"aten::size", "aten::dim", "aten::len", "prim::requires_grad", "prim::device",
                                      "prim::dtype", "prim::layout", "prim::is_cuda", "aten::is_floating_point",
                                      "aten::__is__", "aten::__isnot__"});
  return kinds.count(kind) > 0;
}

std::optional<int64_t> constant_int(const Value* value) {
  const auto ivalue = torch::jit::toIValue(value);
  if (!ivalue || !ivalue->isInt()) return std::nullopt;
  return ivalue->toInt();
}

std::optional<std::vector<int64_t>> constant_int_list(const Value* value) {
  const auto ivalue = torch::jit::toIValue(value);
  if (!ivalue || !ivalue->isIntList()) return std::nullopt;
  return ivalue->toIntVector();
}

void make_groups_follow_weight(const torch::jit::Module& conv, int64_t old_groups) {
  // The conv's type (shared by every conv with the same constants) carries
  // `groups` as a constant; reading weight.size(0) instead stays right for
  // every depthwise instance, pruned or not.
  std::function<void(torch::jit::Block*)> rewrite = [&](torch::jit::Block* block) {
    for (Node* node : block->nodes()) {
      for (auto* sub : node->blocks()) rewrite(sub);
      if (!is_conv(node->kind())) continue;
      const auto spec = conv_spec(node);
      if (!spec || spec->groups != old_groups) continue;
      torch::jit::WithInsertPoint guard(node);
      Value* channels = node->owningGraph()->insert(c10::aten::size, {node->input(1), int64_t(0)});
      node->replaceInput(spec->groups_input, channels);
    }
  };
  for (const auto& method : conv.get_methods()) rewrite(method.graph()->block());
}

namespace {

using torch::jit::Block;
using torch::jit::Module;

// Replaces reads of bool/int/float/str module attributes (training, flags
// such as use_res_connect or memory_efficient) with their current values, so
// that constant propagation removes the branches this instance never takes.
void fold_scalar_attributes(Graph& graph, const Module& root, AttributeConstants* attributes) {
  std::unordered_map<const Value*, Module> modules{{graph.inputs()[0], root}};
  std::unordered_map<const Value*, std::string> paths{{graph.inputs()[0], ""}};
  std::function<void(Block*)> walk = [&](Block* block) {
    for (Node* node : block->nodes()) {
      for (Block* sub : node->blocks()) walk(sub);
      if (node->kind() != c10::prim::GetAttr) continue;
      const auto owner = modules.find(node->input(0));
      if (owner == modules.end()) continue;
      const std::string name = node->s(c10::attr::name);
      const auto value = owner->second.attr(name);
      const std::string& base = paths.at(node->input(0));
      const std::string path = base.empty() ? name : base + "." + name;
      if (value.isModule()) {
        modules.emplace(node->output(), value.toModule());
        paths.emplace(node->output(), path);
      } else if (value.isBool() || value.isInt() || value.isDouble() || value.isString()) {
        torch::jit::WithInsertPoint guard(node);
        Value* constant = graph.insertConstant(value);
        node->output()->replaceAllUsesWith(constant);
        if (attributes && value.isInt()) attributes->emplace(constant, path);
      }
    }
  };
  walk(graph.block());
}

const c10::Symbol& site_attribute() {
  static const auto symbol = c10::Symbol::attr("pare_view_site");
  return symbol;
}

}  // namespace

std::vector<Node*> view_nodes(Block* block) {
  std::vector<Node*> out;
  for (Node* node : block->nodes()) {
    for (Block* sub : node->blocks())
      for (Node* inner : view_nodes(sub)) out.push_back(inner);
    if (node->kind() == c10::aten::view || node->kind() == c10::aten::reshape) out.push_back(node);
  }
  return out;
}

int64_t view_site(const Node* node) { return node->hasAttribute(site_attribute()) ? node->i(site_attribute()) : -1; }

std::shared_ptr<Graph> specialized_forward_graph(const Module& module, AttributeConstants* attributes) {
  require(module.find_method("forward").has_value(), "PruneChannels: the module has no forward method");
  auto graph = module.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  const auto views = view_nodes(graph->block());
  for (size_t i = 0; i < views.size(); ++i) views[i]->i_(site_attribute(), int64_t(i));
  fold_scalar_attributes(*graph, module, attributes);
  torch::jit::ConstantPropagation(graph);
  torch::jit::EliminateDeadCode(graph);
  return graph;
}

Module submodule_at(const Module& root, const std::string& path) {
  Module current = root;
  size_t begin = 0;
  while (begin < path.size()) {
    const auto end = std::min(path.find('.', begin), path.size());
    current = current.attr(path.substr(begin, end - begin)).toModule();
    begin = end + 1;
  }
  return current;
}


std::optional<torch::Tensor> attribute_tensor(const Module& root, const Value* value) {
  std::vector<std::string> names;
  while (value->node()->kind() == c10::prim::GetAttr) {
    names.push_back(value->node()->s(c10::attr::name));
    value = value->node()->input(0);
  }
  if (names.empty() || value != value->owningGraph()->inputs()[0]) return std::nullopt;
  c10::IValue current = root._ivalue();
  for (auto name = names.rbegin(); name != names.rend(); ++name) {
    if (!current.isObject()) return std::nullopt;
    current = current.toObjectRef().getAttr(*name);
  }
  if (!current.isTensor()) return std::nullopt;
  return current.toTensor();
}

}  // namespace pare::detail
