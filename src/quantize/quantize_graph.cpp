#include "quantize/quantize_graph.hpp"

#include <set>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>

#include "pare/core/error.hpp"
#include "pare/core/pipeline.hpp"

namespace pare::detail {
namespace {

using c10::Symbol;
using torch::jit::IValue;
using torch::jit::WithInsertPoint;
namespace aten = c10::aten;

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

Value* QuantStep::output() const { return activation ? activation->node->output() : node->output(); }

std::vector<Value*> QuantStep::int8_inputs() const {
  if (kind == Kind::Join) return tensor_inputs_of_join(node);
  return {node->input(0)};
}

namespace {

// Whether `n` reads an int8 result, directly or as an item of a list it reads.
bool reads_int8(Node* n, const std::set<Value*>& int8) {
  for (Value* in : n->inputs()) {
    if (int8.count(in)) return true;
    if (in->node()->kind() == c10::prim::ListConstruct)
      for (Value* item : in->node()->inputs())
        if (int8.count(item)) return true;
  }
  return false;
}

std::string float_op_reason(Node* n) {
  const std::string kind = n->kind().toQualString();
  if (n->kind() == aten::add || n->kind() == aten::mul) return kind + " of a tensor and a scalar, or with alpha != 1";
  if (n->kind() == aten::batch_norm) return "batch_norm in training mode or with non-constant statistics";
  if (n->kind() == aten::cat) return "cat of a list that is also modified or read elsewhere";
  return "no int8 kernel for " + kind;
}

Value* insert_join(Graph& graph, const QuantStep& step, const std::function<Value*(Value*)>& to_int8,
                   const QuantParams& out) {
  Node* n = step.node;
  const std::string suffix = step.activation && step.activation->is_relu() ? "_relu" : "";
  const auto op = [&](const std::string& name) { return Symbol::fromQualString("quantized::" + name + suffix); };
  if (step.name == "add" || step.name == "mul")
    return graph.insert(op(step.name), {to_int8(n->input(0)), to_int8(n->input(1)), out.scale, out.zero_point});
  if (step.name == "cat") {
    std::vector<Value*> items;
    for (Value* v : tensor_inputs_of_join(n)) items.push_back(to_int8(v));
    Value* list = graph.insertNode(graph.createList(c10::TensorType::get(), items))->output();
    return graph.insert(op("cat"), {list, n->input(1), out.scale, out.zero_point});
  }
  if (step.name == "batch_norm")
    return graph.insert(op("batch_norm"), {to_int8(n->input(0)), n->input(1), n->input(2), n->input(3), n->input(4),
                                           n->input(7), out.scale, out.zero_point});
  // hardswish has no fused ReLU kernel: an absorbed activation acts through the output range alone.
  return graph.insert(Symbol::fromQualString("quantized::hardswish"),
                      {to_int8(n->input(0)), out.scale, out.zero_point});
}

Value* insert_layer(Graph& graph, const QuantStep& step, Value* input, const QuantParams& out, bool per_channel,
                    std::pair<double, double>& weight_scales) {
  const auto packed = pack_weight(step.node, step.layer_kind, per_channel, weight_scales);
  const std::string base = step.layer_kind == "Linear" ? "linear" : step.layer_kind == "Conv2d" ? "conv2d" : "conv1d";
  const std::string op = "quantized::" + base + (step.activation && step.activation->is_relu() ? "_relu" : "");
  return graph.insert(Symbol::fromQualString(op), {input, insert_object(graph, packed), out.scale, out.zero_point});
}

// dim()/size() work on the int8 tensor: no dequantize just to read a shape.
void redirect_shape_reads(Value* dq, Value* q) {
  const auto uses = dq->uses();
  for (const auto& use : uses)
    if (reads_only_shape(use.user)) use.user->replaceInput(use.offset, q);
}

}  // namespace

QuantPlan plan_static(Graph& graph, const std::vector<std::string>& skip) {
  QuantPlan plan;
  std::set<Value*> int8, observed;
  std::set<Node*> absorbed;
  const auto observe = [&](Value* v, const std::string& what) {
    if (observed.insert(v).second) plan.observed.emplace_back(v, what);
  };
  const auto add_step = [&](QuantStep step, const std::string& label) {
    for (Value* in : step.int8_inputs())
      if (!int8.count(in)) observe(in, "input of " + label);
    if (step.kind != QuantStep::Kind::Carry) observe(step.output(), "output of " + label);
    if (step.activation) {
      plan.bounds[step.output()] = {step.activation->lo, step.activation->hi};
      absorbed.insert(step.activation->node);
    }
    int8.insert(step.output());
    plan.steps.push_back(std::move(step));
  };
  int64_t index = 0;
  std::map<std::string, int64_t> joins;
  for (Node* n : graph.nodes()) {
    if (absorbed.count(n)) continue;
    if (const auto kind = layer_kind_of(n); !kind.empty()) {
      const auto name = layer_name(n, index++);
      const auto reason = skipped(name, skip) ? "skipped by option" : unsupported_reason(n, kind);
      if (!reason.empty()) {
        plan.float_layers.push_back({name, kind, reason});
        continue;
      }
      add_step({QuantStep::Kind::Layer, n, absorbable_activation(n), name, kind}, name);
      continue;
    }
    const auto join = join_kind_of(n);
    const auto join_inputs = join.empty() ? std::vector<Value*>{} : tensor_inputs_of_join(n);
    if (std::any_of(join_inputs.begin(), join_inputs.end(), [&](Value* v) { return int8.count(v) > 0; })) {
      add_step({QuantStep::Kind::Join, n, absorbable_activation(n), join, ""},
               join + " " + std::to_string(joins[join]++));
    } else if (carries_int8(n) && int8.count(n->input(0))) {
      add_step({QuantStep::Kind::Carry, n, std::nullopt, n->kind().toUnqualString(), ""}, n->kind().toUnqualString());
    } else if (!reads_only_shape(n) && !n->kind().is_prim() && reads_int8(n, int8)) {
      const std::string kind = n->kind().toQualString();
      plan.float_ops.push_back({kind, kind, float_op_reason(n)});
    }
  }
  index = 0;
  list_nested_layers(graph.block(), false, plan.float_layers, index);
  return plan;
}

QuantParams activation_qparams(const Observer& observer, const QuantPlan& plan, Value* value) {
  auto [lo, hi] = observer.range();
  if (const auto it = plan.bounds.find(value); it != plan.bounds.end()) {
    lo = std::clamp(lo, it->second.first, it->second.second);
    hi = std::clamp(hi, it->second.first, it->second.second);
  }
  return choose_qparams(lo, hi);
}

void share_cat_qparams(const QuantPlan& plan, std::map<Value*, QuantParams>& activations) {
  std::map<Value*, Value*> carried_from;  // a Carry step's output -> the int8 value it reads
  for (const auto& step : plan.steps)
    if (step.kind == QuantStep::Kind::Carry) carried_from[step.output()] = step.node->input(0);
  const auto source = [&](Value* v) {
    for (auto it = carried_from.find(v); it != carried_from.end(); it = carried_from.find(v)) v = it->second;
    return v;
  };
  std::map<Value*, Value*> parent;  // union-find over the observed values cats join
  const std::function<Value*(Value*)> root = [&](Value* v) {
    auto it = parent.find(v);
    if (it == parent.end() || it->second == v) return v;
    return it->second = root(it->second);
  };
  for (const auto& step : plan.steps) {
    if (step.kind != QuantStep::Kind::Join || step.name != "cat") continue;
    Value* out = step.output();
    parent.emplace(out, out);
    for (Value* in : step.int8_inputs()) {
      Value* v = source(in);
      if (!activations.count(v)) continue;  // a fixed-scale op's output: quantized::cat requantizes it
      parent.emplace(v, v);
      parent[root(v)] = root(out);
    }
  }
  std::map<Value*, std::pair<double, double>> range;  // per group: the union of its members' ranges
  for (const auto& member : parent) {
    Value* v = member.first;
    const auto& q = activations.at(v);
    const double lo = -double(q.zero_point) * q.scale, hi = double(255 - q.zero_point) * q.scale;
    auto [it, first] = range.emplace(root(v), std::make_pair(lo, hi));
    if (!first) it->second = {std::min(it->second.first, lo), std::max(it->second.second, hi)};
  }
  for (const auto& member : parent) {
    const auto& [lo, hi] = range.at(root(member.first));
    activations[member.first] = choose_qparams(lo, hi);
  }
}

std::vector<Value*> rewrite_static(Graph& graph, const QuantPlan& plan,
                                   const std::map<Value*, QuantParams>& activations, bool per_channel,
                                   std::vector<std::pair<double, double>>& weight_scales) {
  std::map<Value*, Value*> twin;  // float value -> the int8 value it dequantizes
  const std::function<Value*(Value*)> to_int8 = [&](Value* x) -> Value* {
    if (auto it = twin.find(x); it != twin.end()) return it->second;
    const auto& q = activations.at(x);
    Node* producer = x->node();
    WithInsertPoint guard(producer->kind() == c10::prim::Param ? graph.block()->nodes().front() : producer->next());
    Value* quantized =
        graph.insert(aten::quantize_per_tensor, {x, q.scale, q.zero_point, int64_t(c10::ScalarType::QUInt8)});
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
      WithInsertPoint guard(n);  // not at the activation: shape checks between the two read the result
      if (step.kind == QuantStep::Kind::Join) {
        q = insert_join(graph, step, to_int8, out);
      } else {
        weight_scales.emplace_back();
        q = insert_layer(graph, step, to_int8(n->input(0)), out, per_channel, weight_scales.back());
      }
    }
    Value* dq = dequantize_after(graph, q);
    old_output->replaceAllUsesWith(dq);
    redirect_shape_reads(dq, q);
    twin[dq] = q;
    if (step.kind == QuantStep::Kind::Layer) layer_outputs.push_back(dq);
    if (step.activation) {
      step.activation->node->destroy();
      n->output()->replaceAllUsesWith(q);  // only shape reads are left (absorbable_activation)
    }
    n->destroy();
  }
  return layer_outputs;
}

void rewrite_linear_dynamic(Graph& graph, const std::vector<Node*>& linears, bool per_channel) {
  for (Node* n : linears) {
    WithInsertPoint guard(n);
    std::pair<double, double> scales;
    Value* packed = insert_object(graph, pack_weight(n, "Linear", per_channel, scales));
    Value* out = graph.insert(Symbol::fromQualString("quantized::linear_dynamic"), {n->input(0), packed, false});
    n->output()->replaceAllUsesWith(out);
    n->destroy();
  }
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
    auto reason = kind != "Linear"      ? "dynamic int8 covers Linear only"
                  : skipped(name, skip) ? "skipped by option"
                                        : unsupported_reason(n, kind);
    if (!reason.empty()) {
      float_layers.push_back({name, kind, reason});
      continue;
    }
    linears.push_back(n);
    done.push_back(name);
  }
  rewrite_linear_dynamic(graph, linears, per_channel);
  for (Node* n : graph.nodes())
    if (n->kind() == aten::lstm) float_layers.push_back({"lstm", "LSTM", "dynamic int8 LSTM is not supported"});
  index = 0;
  list_nested_layers(graph.block(), false, float_layers, index);
  return done;
}

namespace {
bool is_tensor_value(const Value* v) { return v->type()->isSubtypeOf(*c10::TensorType::get()); }
}  // namespace

std::shared_ptr<Graph> graph_returning(Graph& graph, const std::vector<Value*>& extra) {
  // Functions return one value, so the copy returns one tuple of everything.
  std::vector<Value*> all(graph.outputs().begin(), graph.outputs().end());
  std::vector<Node*> snapshots;
  for (Value* v : extra) {
    if (!is_tensor_value(v)) {  // ints, lists: nothing later changes them
      all.push_back(v);
      continue;
    }
    WithInsertPoint guard(v->node()->kind() == c10::prim::Param ? graph.block()->nodes().front() : v->node()->next());
    all.push_back(graph.insert(aten::clone, {v}));
    snapshots.push_back(all.back()->node());
  }
  Node* tuple = graph.appendNode(graph.createTuple(all));
  const size_t outputs = graph.outputs().size();
  graph.registerOutput(tuple->output());
  auto copy = graph.copy();
  for (size_t i = 0; i < outputs; ++i) copy->eraseOutput(0);
  graph.eraseOutput(outputs);
  tuple->destroy();
  for (Node* snapshot : snapshots) snapshot->destroy();
  return copy;
}

}  // namespace pare::detail
