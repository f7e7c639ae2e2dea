#include "prune/channel_groups.hpp"

#include <torch/csrc/jit/ir/constants.h>

#include <algorithm>
#include <optional>
#include <unordered_map>

#include "prune/channel_analyzer.hpp"

namespace pare::detail {
namespace {

using torch::jit::Block;
using torch::jit::Module;

std::string join_path(const std::string& base, const std::string& name) {
  return base.empty() ? name : base + "." + name;
}

}  // namespace

ChannelAnalysis Analyzer::run() {
  auto graph = specialized_forward_graph(root_, &attribute_constants_);
  if (!inputs_.empty()) probe_shapes(*graph);
  modules_.emplace(graph->inputs()[0], root_);
  paths_.emplace(graph->inputs()[0], "");
  walk(graph->block());
  for (Value* output : graph->outputs()) block_value(output, "model output");
  return groups_.finish();
}

void Analyzer::walk(Block* block) {
  for (Node* node : block->nodes()) visit(node);
}

void Analyzer::visit(Node* node) {
  const auto kind = node->kind();
  if (kind == c10::prim::GetAttr) return on_get_attr(node);
  if (kind == c10::prim::If) return on_if(node);
  if (kind == c10::prim::Loop) return on_loop(node);
  if (is_conv(kind) && on_conv(node)) return;
  if (kind == c10::aten::linear && on_linear(node)) return;
  if (kind == c10::aten::batch_norm && on_batch_norm(node)) return;
  if (kind == c10::prim::ListConstruct && on_list(node)) return;
  if (kind == c10::aten::append && on_append(node)) return;
  if (kind == c10::aten::cat && on_cat(node)) return;
  if (is_binary(kind) && on_binary(node)) return;
  if (is_channel_preserving(kind) && on_preserving(node)) return;
  if (kind == c10::aten::flatten && on_flatten(node)) return;
  if (kind == c10::aten::mean && on_mean(node)) return;
  if (visit_attention(node)) return;
  if (reads_metadata_only(kind)) return;
  for (Value* input : node->inputs()) block_value(input, kind.toQualString());
}

// --- module attributes ---------------------------------------------------

void Analyzer::on_get_attr(Node* node) {
  const auto owner = modules_.find(node->input(0));
  if (owner == modules_.end()) return;
  const std::string name = node->s(c10::attr::name);
  const auto value = owner->second.attr(name);
  const std::string path = join_path(paths_.at(node->input(0)), name);
  if (value.isModule()) modules_.emplace(node->output(), value.toModule());
  if (value.isModule() || value.isTensor()) paths_.emplace(node->output(), path);
}

// The dotted name of a tensor attribute ("layer1.0.conv1.weight"), if `value` reads one.
std::optional<std::string> Analyzer::tensor_name(Value* value) const {
  const auto found = paths_.find(value);
  if (found == paths_.end() || modules_.count(value)) return std::nullopt;
  return found->second;
}

torch::Tensor Analyzer::tensor_at(const std::string& name) const {
  const auto dot = name.rfind('.');
  const auto owner = submodule_at(root_, dot == std::string::npos ? "" : name.substr(0, dot));
  return owner.attr(dot == std::string::npos ? name : name.substr(dot + 1)).toTensor();
}

// --- layers ---------------------------------------------------------------

bool Analyzer::on_conv(Node* node) {
  const auto spec = conv_spec(node);
  const auto weight_name = tensor_name(node->input(1));
  if (!spec || !weight_name) return false;
  const auto weight = tensor_at(*weight_name);
  const auto bias_name = tensor_name(node->input(2));
  const auto input = tracked(node->input(0));
  const int64_t out_channels = weight.size(0);
  const std::string layer = owner_of(*weight_name);
  const bool depthwise = spec->groups > 1 && spec->groups == out_channels && weight.size(1) == 1;
  if (depthwise && input && input->layout == Layout::Channels && int64_t(input->slots.size()) == out_channels) {
    add_cut(*weight_name, 0, input->slots, 1, true);
    if (bias_name) add_cut(*bias_name, 0, input->slots, 1, false);
    groups_.add_depthwise(*weight_name);
    tracked_[node->output()] = *input;
    return true;
  }
  if (spec->groups == 1 && input) {
    if (input->layout == Layout::Channels && int64_t(input->slots.size()) == weight.size(1))
      add_cut(*weight_name, 1, input->slots, 1, false);
    else groups_.block(input->slots, "input layout of " + layer);
  } else if (input) {
    groups_.block(input->slots, "grouped conv " + layer);
  }
  const auto out = groups_.new_group(*weight_name, out_channels);
  if (spec->groups != 1)
    groups_.block(out, depthwise ? "depthwise conv on an unprunable input " + layer : "grouped conv " + layer);
  add_cut(*weight_name, 0, out, 1, true);
  if (bias_name) add_cut(*bias_name, 0, out, 1, false);
  tracked_[node->output()] = {out, Layout::Channels};
  return true;
}

bool Analyzer::on_linear(Node* node) {
  const auto weight_name = tensor_name(node->input(1));
  if (!weight_name) return false;
  const auto weight = tensor_at(*weight_name);
  const auto input = tracked(node->input(0));
  Layout out_layout = Layout::Last;
  if (input && input->layout == Layout::Heads) return false;  // a linear over a head's channels
  if (input) {
    const int64_t in_features = weight.size(1), channels = int64_t(input->slots.size());
    int64_t block = 0;
    if (input->layout == Layout::Flattened && in_features % channels == 0) block = in_features / channels;
    if (input->layout != Layout::Flattened && input->layout != Layout::Channels && in_features == channels) block = 1;
    if (block > 0) add_cut(*weight_name, 1, input->slots, block, false);
    else groups_.block(input->slots, "input layout of " + owner_of(*weight_name));
    if (input->layout != Layout::Last) out_layout = Layout::Features;
  }
  const auto out = groups_.new_group(*weight_name, weight.size(0));
  add_cut(*weight_name, 0, out, 1, true);
  if (const auto bias_name = tensor_name(node->input(2))) add_cut(*bias_name, 0, out, 1, false);
  tracked_[node->output()] = {out, out_layout};
  return true;
}

bool Analyzer::on_batch_norm(Node* node) {
  const auto input = tracked(node->input(0));
  if (!input) return true;  // normalises channels nobody prunes
  if (input->layout != Layout::Channels && input->layout != Layout::Features) return false;
  for (size_t i = 1; i <= 4; ++i) {  // weight, bias, running_mean, running_var
    Value* v = node->input(i);
    if (v->type()->kind() == c10::TypeKind::NoneType) continue;
    const auto name = tensor_name(v);
    if (!name) return false;
    add_cut(*name, 0, input->slots, 1, false);
  }
  tracked_[node->output()] = *input;
  return true;
}

// --- channel plumbing -----------------------------------------------------

bool Analyzer::on_preserving(Node* node) {
  const auto input = tracked(node->input(0));
  if (input && is_spatial(node->kind()) && input->layout != Layout::Channels) return false;
  for (size_t i = 1; i < node->inputs().size(); ++i)
    if (tracked(node->input(i))) return false;
  if (input) tracked_[node->output()] = *input;
  return true;
}

bool Analyzer::on_binary(Node* node) {
  const auto a = tracked(node->input(0));
  const bool tensor_operand = node->input(1)->type()->isSubtypeOf(*c10::TensorType::get());
  if (!tensor_operand) {
    if (a) tracked_[node->output()] = *a;
    return true;
  }
  const auto b = tracked(node->input(1));
  if (!a && !b) return true;
  if ((a && a->layout == Layout::Heads) || (b && b->layout == Layout::Heads)) return on_heads_binary(node);
  if (!a || !b || a->layout != b->layout) return false;  // broadcasting against unknown channels
  if (!groups_.tie(a->slots, b->slots, std::string(node->kind().toQualString()) + " of mismatched channels"))
    return true;
  tracked_[node->output()] = *a;
  return true;
}

bool Analyzer::on_flatten(Node* node) {
  const auto input = tracked(node->input(0));
  const auto start = constant_int(node->input(1)), end = constant_int(node->input(2));
  if (!input) return true;
  if (start != 1 || end != -1 || input->layout == Layout::Last || input->layout == Layout::Heads) return false;
  tracked_[node->output()] = {input->slots, input->layout == Layout::Channels ? Layout::Flattened : input->layout};
  return true;
}

bool Analyzer::on_mean(Node* node) {
  const auto input = tracked(node->input(0));
  if (!input) return true;
  const auto dims = constant_int_list(node->input(1));
  const auto keepdim = torch::jit::toIValue(node->input(2));
  if (input->layout != Layout::Channels || !dims || !keepdim || !keepdim->isBool()) return false;
  for (int64_t d : *dims)
    if (d < 2) return false;
  if (keepdim->toBool()) tracked_[node->output()] = *input;
  else if (*dims == std::vector<int64_t>{2, 3}) tracked_[node->output()] = {input->slots, Layout::Features};
  else return false;
  return true;
}

bool Analyzer::on_list(Node* node) {
  auto list = std::make_shared<TrackedList>();
  for (Value* item : node->inputs()) list->items.push_back(tracked(item));
  lists_[node->output()] = list;
  return true;
}

bool Analyzer::on_append(Node* node) {
  const auto found = lists_.find(node->input(0));
  if (found == lists_.end()) return false;
  auto list = found->second;
  list->items.push_back(tracked(node->input(1)));
  if (node->owningBlock() != node->owningGraph()->block()) {
    list->poisoned = true;  // the list's contents depend on which branch ran
    block_value(node->input(0), "list append in a branch");
  }
  lists_[node->output()] = list;
  return true;
}

bool Analyzer::on_cat(Node* node) {
  const auto found = lists_.find(node->input(0));
  const auto dim = constant_int(node->input(1));
  if (found == lists_.end() || found->second->poisoned || dim != 1) return false;
  Tracked out{{}, Layout::Channels};
  for (const auto& item : found->second->items) {
    if (!item || (item->layout != Layout::Channels && item->layout != Layout::Features)) return false;
    out.layout = item->layout;
    out.slots.insert(out.slots.end(), item->slots.begin(), item->slots.end());
  }
  tracked_[node->output()] = out;
  return true;
}

// --- control flow ---------------------------------------------------------

void Analyzer::on_if(Node* node) {
  for (Block* block : node->blocks()) walk(block);
  for (size_t i = 0; i < node->outputs().size(); ++i) {
    std::vector<Value*> branches;
    for (Block* block : node->blocks()) branches.push_back(block->outputs()[i]);
    const auto first = tracked(branches[0]);
    bool same = first.has_value();
    for (Value* v : branches) same = same && tracked(v) == first;
    if (same) {
      tracked_[node->output(i)] = *first;
      continue;
    }
    for (Value* v : branches) block_value(v, "branch-dependent channels");
  }
}

void Analyzer::on_loop(Node* node) {
  for (Value* input : node->inputs()) block_value(input, "prim::Loop");
  for (Block* block : node->blocks()) {
    walk(block);
    for (Value* output : block->outputs()) block_value(output, "prim::Loop");
  }
}

// --- groups ---------------------------------------------------------------

std::optional<Tracked> Analyzer::tracked(Value* value) const {
  const auto found = tracked_.find(value);
  if (found == tracked_.end()) return std::nullopt;
  return found->second;
}

void Analyzer::block_value(Value* value, const std::string& reason) {
  if (const auto t = tracked(value)) groups_.block(t->slots, reason);
  const auto list = lists_.find(value);
  if (list == lists_.end()) return;
  for (const auto& item : list->second->items)
    if (item) groups_.block(item->slots, reason);
}

// The recorded cut must match the tensor: a shape pare does not expect keeps the group whole.
void Analyzer::add_cut(const std::string& name, int64_t dim, const ChannelMap& slots, int64_t block, bool producer) {
  const auto tensor = tensor_at(name);
  if (tensor.dim() <= dim || tensor.size(dim) != int64_t(slots.size()) * block)
    return groups_.block(slots, "unexpected shape of " + name);
  groups_.add_cut(name, dim, slots, block, producer);
}

ChannelAnalysis analyze_channels(const Module& module, const std::vector<c10::IValue>& inputs) {
  return Analyzer(module, inputs).run();
}

}  // namespace pare::detail
