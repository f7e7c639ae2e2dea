#include "quantize_graph.hpp"

#include <set>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/torch.h>

#include "pare/error.hpp"
#include "pare/pipeline.hpp"

namespace pare::detail {
namespace {

using c10::Symbol;
using torch::jit::IValue;
using torch::jit::WithInsertPoint;
namespace aten = c10::aten;

std::string layer_kind_of(const Node* n) {
  if (n->kind() == aten::linear) return "Linear";
  if (n->kind() == aten::conv2d) return "Conv2d";
  if (n->kind() == aten::conv1d) return "Conv1d";
  return "";
}

int64_t weight_dims(const std::string& kind) { return kind == "Linear" ? 2 : kind == "Conv2d" ? 4 : 3; }

// After freezing, a weight constant keeps its attribute path as debug name
// ("self.fc1.weight"); the inlined call stack names the module otherwise.
std::string layer_name(Node* n, int64_t index) {
  const std::string debug = n->input(1)->debugName();
  if (debug.rfind("self.", 0) == 0) {
    const auto end = debug.rfind(".weight");
    if (end != std::string::npos && end > 5) return debug.substr(5, end - 5);
  }
  if (auto stack = n->callstack()) {
    std::string name;
    for (const auto& entry : (*stack)->vec())
      if (const auto& info = std::get<2>(entry)) name += (name.empty() ? "" : ".") + info->instance_name();
    if (!name.empty()) return name;
  }
  std::string kind = layer_kind_of(n);
  std::transform(kind.begin(), kind.end(), kind.begin(), ::tolower);
  return kind + "_" + std::to_string(index);
}

bool skipped(const std::string& name, const std::vector<std::string>& skip) {
  for (const auto& pattern : skip)
    if (glob_match(pattern, name)) return true;
  return false;
}

// Why this Linear/Conv cannot become int8; empty when it can.
std::string unsupported_reason(Node* n, const std::string& kind) {
  const auto weight = torch::jit::toIValue(n->input(1));
  if (!weight || !weight->isTensor()) return "weight is not a constant after freezing";
  const auto& w = weight->toTensor();
  if (w.scalar_type() != torch::kFloat) return "weight dtype is not float32";
  if (w.dim() != weight_dims(kind)) return "weight has " + std::to_string(w.dim()) + " dims";
  const auto bias = torch::jit::toIValue(n->input(2));
  if (!bias || !(bias->isNone() || (bias->isTensor() && bias->toTensor().scalar_type() == torch::kFloat)))
    return "bias is not a float32 constant";
  if (kind != "Linear") {
    for (size_t i = 3; i < 7; ++i)
      if (!torch::jit::toIValue(n->input(i))) return "stride/padding/dilation/groups are not constants";
    if (!torch::jit::toIValue(n->input(4))->isIntList()) return "string padding (\"same\"/\"valid\") is not supported";
  }
  return "";
}

Node* fused_relu(Node* n) {
  const auto& uses = n->output()->uses();
  if (uses.size() != 1) return nullptr;
  Node* user = uses[0].user;
  return user->kind() == aten::relu && user->owningBlock() == n->owningBlock() ? user : nullptr;
}

// Ops PyTorch runs on quantized tensors with the input's scale and zero point.
bool carries_int8(const Node* n) {
  static const std::set<Symbol> kinds = {aten::relu, aten::max_pool2d, aten::flatten, aten::reshape, aten::view,
                                         aten::avg_pool2d, aten::adaptive_avg_pool2d};
  return kinds.count(n->kind()) && n->outputs().size() == 1;
}

bool is_plain_add(Node* n) {
  if (n->kind() != aten::add || n->inputs().size() != 3) return false;
  if (!n->input(1)->type()->isSubtypeOf(*c10::TensorType::get())) return false;
  const auto alpha = torch::jit::toIValue(n->input(2));
  return alpha && alpha->isInt() && alpha->toInt() == 1;
}

// Layers inside loops or branches stay float; list them so nothing is silent.
void list_nested_layers(torch::jit::Block* block, bool nested, std::vector<FloatLayer>& out, int64_t& index) {
  for (Node* n : block->nodes()) {
    const auto kind = layer_kind_of(n);
    if (!kind.empty() && nested) out.push_back({layer_name(n, index), kind, "inside control flow"});
    if (!kind.empty()) ++index;
    for (auto* sub : n->blocks()) list_nested_layers(sub, true, out, index);
  }
}

IValue call_op(const char* name, torch::jit::Stack stack) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  op.callBoxed(stack);
  return stack.at(0);
}

torch::Tensor quantize_weight(const torch::Tensor& weight, bool per_channel, std::pair<double, double>& scales) {
  const auto rows = weight.size(0);
  const auto flat = weight.reshape({rows, -1}).contiguous();
  const auto params = symmetric_weight_qparams(flat.data_ptr<float>(), rows, flat.size(1), per_channel);
  scales = {params.front().scale, params.front().scale};
  for (const auto& p : params) scales = {std::min(scales.first, p.scale), std::max(scales.second, p.scale)};
  if (!per_channel) return at::quantize_per_tensor(weight.contiguous(), params[0].scale, 0, torch::kQInt8);
  auto scale = torch::empty({rows}, torch::kDouble);
  for (int64_t r = 0; r < rows; ++r) scale[r] = params[size_t(r)].scale;
  return at::quantize_per_channel(weight.contiguous(), scale, torch::zeros({rows}, torch::kLong), 0, torch::kQInt8);
}

// The prepacked weight of a Linear/Conv node: a LinearPackedParamsBase or
// ConvPackedParamsBase object for the current engine.
IValue pack_weight(Node* n, const std::string& kind, bool per_channel, std::pair<double, double>& scales) {
  const auto qweight = quantize_weight(torch::jit::toIValue(n->input(1))->toTensor(), per_channel, scales);
  const IValue bias = *torch::jit::toIValue(n->input(2));
  if (kind == "Linear") return call_op("quantized::linear_prepack", {qweight, bias});
  const char* prepack = kind == "Conv2d" ? "quantized::conv2d_prepack" : "quantized::conv1d_prepack";
  torch::jit::Stack stack{qweight, bias};
  for (size_t i = 3; i < 7; ++i) stack.push_back(*torch::jit::toIValue(n->input(i)));
  return call_op(prepack, std::move(stack));
}

Value* insert_object(Graph& graph, const IValue& object) {
  if (auto value = torch::jit::tryInsertConstant(graph, object)) return *value;
  Node* constant = graph.create(c10::prim::Constant);
  constant->ival_(c10::attr::value, object);
  constant->output()->setType(object.type());
  return graph.insertNode(constant)->output();
}

Value* dequantize_after(Graph& graph, Value* q) {
  WithInsertPoint guard(q->node()->next());
  return graph.insert(aten::dequantize, {q});
}

}  // namespace

Value* QuantStep::output() const { return relu ? relu->output() : node->output(); }

QuantPlan plan_static(Graph& graph, const std::vector<std::string>& skip) {
  QuantPlan plan;
  std::set<Value*> int8, observed;
  const auto observe = [&](Value* v, const std::string& what) {
    if (observed.insert(v).second) plan.observed.emplace_back(v, what);
  };
  int64_t index = 0, adds = 0;
  for (Node* n : graph.nodes()) {
    const auto kind = layer_kind_of(n);
    if (!kind.empty()) {
      const auto name = layer_name(n, index++);
      const auto reason = skipped(name, skip) ? "skipped by option" : unsupported_reason(n, kind);
      if (!reason.empty()) { plan.float_layers.push_back({name, kind, reason}); continue; }
      QuantStep step{QuantStep::Kind::Layer, n, fused_relu(n), name, kind};
      if (!int8.count(n->input(0))) observe(n->input(0), "input of " + name);
      observe(step.output(), "output of " + name);
      int8.insert(step.output());
      plan.steps.push_back(step);
    } else if (carries_int8(n) && int8.count(n->input(0))) {
      plan.steps.push_back({QuantStep::Kind::Carry, n});
      int8.insert(n->output());
    } else if (is_plain_add(n) && int8.count(n->input(0)) && int8.count(n->input(1))) {
      QuantStep step{QuantStep::Kind::Add, n, fused_relu(n)};
      observe(step.output(), "output of add " + std::to_string(adds++));
      int8.insert(step.output());
      plan.steps.push_back(step);
    }
  }
  index = 0;
  list_nested_layers(graph.block(), false, plan.float_layers, index);
  return plan;
}

std::vector<Value*> rewrite_static(Graph& graph, const QuantPlan& plan,
                                   const std::map<Value*, QuantParams>& activations, bool per_channel,
                                   std::vector<std::pair<double, double>>& weight_scales) {
  std::map<Value*, Value*> twin;  // float value -> the int8 value it dequantizes
  const auto to_int8 = [&](Value* x) -> Value* {
    if (auto it = twin.find(x); it != twin.end()) return it->second;
    const auto& q = activations.at(x);
    Node* producer = x->node();
    WithInsertPoint guard(producer->kind() == c10::prim::Param ? graph.block()->nodes().front() : producer->next());
    Value* quantized = graph.insert(aten::quantize_per_tensor,
                                    {x, q.scale, q.zero_point, int64_t(c10::ScalarType::QUInt8)});
    return twin[x] = quantized;
  };
  std::vector<Value*> layer_outputs;
  for (const auto& step : plan.steps) {
    Node* n = step.node;
    Value* old_output = step.output();
    Value* q = nullptr;
    if (step.kind == QuantStep::Kind::Carry) {
      Value* in = twin.at(n->input(0));
      Node* copy = graph.createClone(n, [&](Value* v) { return v == n->input(0) ? in : v; });
      copy->insertBefore(n);
      q = copy->output()->setType(c10::TensorType::get());
    } else {
      const auto& out = activations.at(old_output);
      WithInsertPoint guard(step.relu ? step.relu : n);
      std::string op;
      std::vector<torch::jit::NamedValue> args;
      if (step.kind == QuantStep::Kind::Add) {
        op = step.relu ? "quantized::add_relu" : "quantized::add";
        args = {twin.at(n->input(0)), twin.at(n->input(1))};
      } else {
        weight_scales.emplace_back();
        const auto packed = pack_weight(n, step.layer_kind, per_channel, weight_scales.back());
        std::string base = step.layer_kind == "Linear" ? "linear" : step.layer_kind == "Conv2d" ? "conv2d" : "conv1d";
        op = "quantized::" + base + (step.relu ? "_relu" : "");
        args = {to_int8(n->input(0)), insert_object(graph, packed)};
      }
      args.emplace_back(out.scale);
      args.emplace_back(out.zero_point);
      q = graph.insert(Symbol::fromQualString(op), args);
    }
    Value* dq = dequantize_after(graph, q);
    old_output->replaceAllUsesWith(dq);
    twin[dq] = q;
    if (step.kind == QuantStep::Kind::Layer) layer_outputs.push_back(dq);
    if (step.relu) step.relu->destroy();
    n->destroy();
  }
  return layer_outputs;
}

std::vector<std::string> rewrite_dynamic(Graph& graph, const std::vector<std::string>& skip, bool per_channel,
                                         std::vector<FloatLayer>& float_layers) {
  std::vector<std::string> done;
  std::vector<Node*> linears;
  int64_t index = 0;
  for (Node* n : graph.nodes()) {
    const auto kind = layer_kind_of(n);
    if (kind.empty()) continue;
    const auto name = layer_name(n, index++);
    auto reason = kind != "Linear" ? "dynamic int8 covers Linear only" : skipped(name, skip) ? "skipped by option"
                                                                      : unsupported_reason(n, kind);
    if (!reason.empty()) { float_layers.push_back({name, kind, reason}); continue; }
    WithInsertPoint guard(n);
    std::pair<double, double> scales;
    Value* packed = insert_object(graph, pack_weight(n, kind, per_channel, scales));
    Value* out = graph.insert(Symbol::fromQualString("quantized::linear_dynamic"), {n->input(0), packed, false});
    n->output()->replaceAllUsesWith(out);
    linears.push_back(n);
    done.push_back(name);
  }
  for (Node* n : linears) n->destroy();
  for (Node* n : graph.nodes())
    if (n->kind() == aten::lstm) float_layers.push_back({"lstm", "LSTM", "dynamic int8 LSTM is not supported"});
  index = 0;
  list_nested_layers(graph.block(), false, float_layers, index);
  return done;
}

std::shared_ptr<Graph> graph_returning(Graph& graph, const std::vector<Value*>& extra) {
  // Functions return one value, so the copy returns one tuple of everything.
  std::vector<Value*> all(graph.outputs().begin(), graph.outputs().end());
  all.insert(all.end(), extra.begin(), extra.end());
  Node* tuple = graph.appendNode(graph.createTuple(all));
  const size_t outputs = graph.outputs().size();
  graph.registerOutput(tuple->output());
  auto copy = graph.copy();
  for (size_t i = 0; i < outputs; ++i) copy->eraseOutput(0);
  graph.eraseOutput(outputs);
  tuple->destroy();
  return copy;
}

}  // namespace pare::detail
