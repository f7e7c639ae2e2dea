// pare::SubmoduleOutputs and the match losses. TorchScript in LibTorch 1.13
// has no forward hooks that can be added to a compiled module (hooks are
// compiled into the callers when a model is scripted), so the outputs are read
// by graph rewriting instead: a copy of forward's graph has the method calls
// on each path inlined level by level until the submodule's own forward call
// shows, and that call's output (cloned, so later in-place ops cannot change
// it) becomes an extra output. Where a pass already inlined the call, the
// inliner's call stacks on the nodes tell which of them came from it. The copy runs as a free function on the
// module's object: its own parameters, no new type, nothing changed.

#include "pare/distill/match.hpp"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>

#include "core/enum_names.hpp"
#include "core/torch_errors.hpp"
#include "pare/core/error.hpp"

namespace pare {
namespace {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

constexpr std::pair<MatchLoss, const char*> kMatchLossNames[] = {{MatchLoss::MSE, "mse"},
                                                                 {MatchLoss::Cosine, "cosine"}};

std::vector<std::string> path_parts(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream in(path);
  for (std::string part; std::getline(in, part, '.');) parts.push_back(part);
  return parts;
}

std::string sizes_text(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

// The submodule at `path`; pare::Error unless there is one, listing the
// children of the deepest module the path reaches.
torch::jit::Module checked_submodule(const torch::jit::Module& module, const std::string& path,
                                     const std::string& who) {
  const auto parts = path_parts(path);
  require(!path.empty() && std::none_of(parts.begin(), parts.end(), [](const auto& p) { return p.empty(); }),
          who + ": submodule path '" + path + "' is malformed; expected a dotted name such as 'layers.3'");
  auto current = module;
  std::string walked;
  for (const auto& part : parts) {
    std::vector<std::string> children;
    std::optional<torch::jit::Module> next;
    for (const auto& child : current.named_children()) {
      if (child.name == part) next = child.value;
      if (children.size() < 40) children.push_back(child.name);
    }
    if (!next)
      throw Error(who + " has no submodule '" + path + "': " + (walked.empty() ? "the model" : "'" + walked + "'") +
                  " has the submodules [" + detail::join(children) +
                  "]; expected a name as named_modules() gives it, such as 'layers.3'");
    walked += (walked.empty() ? "" : ".") + part;
    current = *next;
  }
  return current;
}

void collect_graph_nodes(torch::jit::Block* block, std::vector<Node*>& out) {
  for (Node* node : block->nodes()) {
    out.push_back(node);
    for (auto* inner : node->blocks()) collect_graph_nodes(inner, out);
  }
}

// Every node of the graph, those in loops and branches included.
std::vector<Node*> every_node(Graph& graph) {
  std::vector<Node*> out;
  collect_graph_nodes(graph.block(), out);
  return out;
}

// The values `owner.name` for every value in `owners`.
std::set<Value*> attributes_named(Graph& graph, const std::set<Value*>& owners, const std::string& name) {
  std::set<Value*> out;
  for (Node* node : every_node(graph))
    if (node->kind() == c10::prim::GetAttr && owners.count(node->input(0)) && node->s(c10::attr::name) == name)
      out.insert(node->output());
  return out;
}

// Inlines every method call on `owners` until none is left, so what those
// methods do (the calls on their own submodules) shows in the graph.
void inline_calls_on(Graph& graph, const std::set<Value*>& owners) {
  for (bool changed = true; changed;) {
    changed = false;
    for (Node* node : every_node(graph)) {
      if (node->kind() != c10::prim::CallMethod || !owners.count(node->input(0))) continue;
      const auto type = node->input(0)->type()->expect<c10::ClassType>();
      auto& method = torch::jit::toGraphFunction(type->getMethod(node->s(c10::attr::name)));
      // The method's own graph, whose calls are still calls: its optimized graph has them inlined away.
      torch::jit::inlineCallTo(node, &method, method.graph().get());
      changed = true;
      break;  // the node list changed
    }
  }
}

// Module classes by their names: clone() gives the copy new types of the same
// name, and a pass may clone after inlining (mangled prefixes aside).
bool same_class(const c10::ClassTypePtr& a, const c10::ClassTypePtr& b) {
  return a && b && a->name() && b->name() && a->name()->name() == b->name()->name();
}

// Whether the inliner moved `node` out of a call of the submodule at `parts`
// (of class `type`). Its call stack names each module called on the way, by
// the attribute it was read from; containers that are iterated, not called
// (ModuleList), have no entry, so the names need only appear in path order.
bool inlined_from(Node* node, const c10::ClassTypePtr& type, const std::vector<std::string>& parts) {
  const auto stack = node->callstack();
  if (!stack) return false;
  size_t part = 0;
  for (const auto& entry : (*stack)->vec()) {
    const auto& module = std::get<torch::jit::kModuleInstanceInfo>(entry);
    if (!module || module->instance_name() == "SELF") continue;  // a method of the module the last entry named
    while (part < parts.size() && parts[part] != module->instance_name()) ++part;
    if (part == parts.size()) return false;
    if (part + 1 == parts.size()) return same_class(module->class_type(), type);
    ++part;
  }
  return false;
}

// The top-level node that holds `node` (itself, or the loop or branch it sits in).
Node* top_level(Node* node, const Graph& graph) {
  while (node->owningBlock() != graph.block()) node = node->owningBlock()->owningNode();
  return node;
}

// A submodule whose call a pass has inlined into forward (PruneChannels
// removing heads does, so each layer's views read its own head count): its
// output is the one value its inlined nodes compute that later nodes read.
Value* capture_inlined(Graph& graph, const torch::jit::Module& submodule, const std::string& path,
                       const std::string& who) {
  const auto parts = path_parts(path);
  std::vector<Node*> order;
  for (Node* node : graph.block()->nodes()) order.push_back(node);
  // Constants are left out: constant pooling hoists them to the top of the
  // graph, far from the call they came from (mobilenet_v2's features.3).
  const auto is_constant = [](Node* n) { return n->kind() == c10::prim::Constant; };
  const auto is_inside = [&](Node* n) { return !is_constant(n) && inlined_from(n, submodule.type(), parts); };
  const auto first = std::find_if(order.begin(), order.end(), is_inside);
  require(first != order.end(), who + ": forward never calls submodule '" + path +
                                    "' (unused, or inlined away by freezing); expected a submodule forward runs");
  // The inlined call is one stretch of nodes; nodes a pass added inside it (constants, size lists) belong to it.
  const auto last = std::find_if(order.rbegin(), order.rend(), is_inside).base();
  const std::set<Node*> inside(first, last);
  std::vector<Value*> leaving;
  for (Node* node : inside) {
    if (is_constant(node)) continue;
    for (Value* value : node->outputs())
      for (const auto& use : value->uses())
        if (!inside.count(top_level(use.user, graph))) {
          leaving.push_back(value);
          break;
        }
  }
  require(leaving.size() == 1 && leaving.front()->type()->isSubtypeOf(*c10::TensorType::get()),
          who + ": submodule '" + path + "' was inlined into forward, and " + std::to_string(leaving.size()) +
              " of the values it computes are read after it; expected one tensor (match the submodule inside it)");
  torch::jit::WithInsertPoint after(leaving.front()->node()->next());
  return graph.insert(c10::aten::clone, {leaving.front()});
}

// The value forward computes at submodule `path`: a clone right after the call.
Value* capture(Graph& graph, const torch::jit::Module& submodule, const std::string& path, const std::string& who) {
  std::set<Value*> owners{graph.inputs()[0]};
  const auto parts = path_parts(path);
  for (size_t i = 0; i < parts.size(); ++i) {
    inline_calls_on(graph, owners);  // the root too: forward may reach its submodules through helpers (_forward_impl)
    owners = attributes_named(graph, owners, parts[i]);
  }
  std::vector<Node*> calls;
  for (Node* node : every_node(graph))
    if (node->kind() == c10::prim::CallMethod && owners.count(node->input(0)) && node->s(c10::attr::name) == "forward")
      calls.push_back(node);
  if (calls.empty()) return capture_inlined(graph, submodule, path, who);
  require(calls.size() == 1, who + ": forward calls submodule '" + path + "' " + std::to_string(calls.size()) +
                                 " times (shared weights?); expected one call, whose output is one tensor");
  Node* call = calls.front();
  require(call->owningBlock() == graph.block(),
          who + ": submodule '" + path +
              "' is called inside a loop or branch of forward; expected a call that runs once on every input");
  require(call->outputs().size() == 1 && call->output()->type()->isSubtypeOf(*c10::TensorType::get()),
          who + ": submodule '" + path + "' returns " + call->output()->type()->repr_str() +
              "; expected a submodule that returns one tensor (match the submodule inside it that does)");
  torch::jit::WithInsertPoint after(call->next());
  return graph.insert(c10::aten::clone, {call->output()});
}

}  // namespace

std::string to_string(MatchLoss kind) { return detail::name_of(kMatchLossNames, kind); }
MatchLoss parse_match_loss(const std::string& name) { return detail::parse_name(kMatchLossNames, name, "match loss"); }
std::vector<std::string> match_loss_names() { return detail::names_of(kMatchLossNames); }

std::vector<DistillMatch> DistillMatch::layers(const std::string& teacher_prefix, int64_t teacher_layers,
                                               const std::string& student_prefix, int64_t student_layers,
                                               MatchLoss loss, double weight) {
  require(student_layers >= 1 && student_layers <= teacher_layers,
          "DistillMatch::layers: " + std::to_string(student_layers) + " student layers onto " +
              std::to_string(teacher_layers) + " teacher layers; expected 1 <= student_layers <= teacher_layers");
  std::vector<DistillMatch> out;
  for (int64_t j = 0; j < student_layers; ++j) {
    const int64_t t = (j + 1) * teacher_layers / student_layers - 1;
    out.push_back(DistillMatch(teacher_prefix + "." + std::to_string(t), student_prefix + "." + std::to_string(j))
                      .loss(loss)
                      .weight(weight));
  }
  return out;
}

torch::Tensor match_loss(const torch::Tensor& student, const torch::Tensor& teacher, MatchLoss kind) {
  require(student.defined() && teacher.defined(), "match_loss: student and teacher outputs must be defined tensors");
  require(student.is_floating_point() && teacher.scalar_type() == student.scalar_type(),
          "match_loss: outputs of dtypes " + std::string(c10::toString(student.scalar_type())) + " and " +
              c10::toString(teacher.scalar_type()) + "; expected one floating-point dtype");
  require(student.sizes() == teacher.sizes(), "match_loss: student output " + sizes_text(student) +
                                                  " but teacher output " + sizes_text(teacher) +
                                                  "; expected one shape");
  const auto target = teacher.detach();
  if (kind == MatchLoss::Cosine)
    return (1.0 - torch::cosine_similarity(student, target, /*dim=*/-1, /*eps=*/1e-8)).mean();
  return torch::mse_loss(student, target);
}

SubmoduleOutputs::SubmoduleOutputs(const torch::jit::Module& module, const std::vector<std::string>& paths,
                                   const std::string& who)
    : module_(module), paths_(paths), who_(who) {
  require(module.find_method("forward").has_value(), who + ": the model has no forward method");
  std::vector<torch::jit::Module> submodules;
  for (const auto& path : paths) submodules.push_back(checked_submodule(module, path, who));
  auto graph = torch::jit::toGraphFunction(module.get_method("forward").function()).graph()->copy();
  // Shallower paths first: capturing "layers.1.fc" inlines the call of
  // "layers.1", whose capture then reads the inlined result.
  std::vector<size_t> order(paths.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return path_parts(paths[a]).size() < path_parts(paths[b]).size(); });
  std::vector<Value*> outputs(paths.size());
  detail::translate_torch_errors(who + ": reading the outputs of " + detail::join(paths), [&] {
    for (const size_t i : order) outputs[i] = capture(*graph, submodules[i], paths[i], who);
  });
  for (Value* output : graph->outputs()) outputs.push_back(output);
  torch::jit::WithInsertPoint at_return(graph->return_node());
  Value* tuple = graph->insertNode(graph->createTuple(outputs))->output();
  while (!graph->outputs().empty()) graph->eraseOutput(0);
  graph->registerOutput(tuple);
  function_ = std::make_shared<torch::jit::GraphFunction>("pare_submodule_outputs", graph, nullptr);
}

std::pair<std::vector<torch::Tensor>, c10::IValue> SubmoduleOutputs::run(std::vector<c10::IValue> inputs) const {
  inputs.insert(inputs.begin(), module_._ivalue());
  const auto result = (*function_)(std::move(inputs)).toTuple();
  const auto& items = result->elements();
  std::vector<torch::Tensor> captured;
  for (size_t i = 0; i < paths_.size(); ++i) captured.push_back(items[i].toTensor());
  return {std::move(captured), items[paths_.size()]};
}

std::vector<torch::Tensor> submodule_outputs(const torch::jit::Module& module, std::vector<c10::IValue> inputs,
                                             const std::vector<std::string>& paths) {
  const SubmoduleOutputs outputs(module, paths);
  return detail::translate_torch_errors(
      "submodule_outputs: forward failed", [&] { return outputs.run(std::move(inputs)).first; },
      Error::Kind::InvalidArgument);
}

}  // namespace pare
