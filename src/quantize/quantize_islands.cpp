// One island of int8 ops as a graph of its own, float or rewritten to int8
// with the quantize/dequantize at its borders, and the time each takes on
// the values the island reads in the model (see quantize_speed.cpp).

#include <algorithm>
#include <chrono>
#include <memory>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "quantize/quantize_pass.hpp"

namespace pare::detail {
namespace {

using torch::jit::IValue;

// The nodes of island `which`: its steps, their absorbed activations and the lists cats read.
std::set<Node*> island_nodes(const QuantPlan& plan, const std::vector<size_t>& island, size_t which) {
  std::set<Node*> nodes;
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (island[i] != which) continue;
    const auto& step = plan.steps[i];
    nodes.insert(step.node);
    if (step.activation) nodes.insert(step.activation->node);
    if (step.kind == QuantStep::Kind::Join && step.name == "cat") nodes.insert(step.node->input(0)->node());
  }
  return nodes;
}

// Read outside the island by something other than a shape check (the int8
// model reads shapes from the int8 tensor and needs no dequantize for them).
bool read_outside(Value* v, const std::set<Node*>& nodes) {
  return std::any_of(v->uses().begin(), v->uses().end(),
                     [&](const torch::jit::Use& use) { return !nodes.count(use.user) && !reads_only_shape(use.user); });
}

// Functions return one value: an island read in several places returns them as one tuple.
void return_one_value(Graph& graph) {
  if (graph.outputs().size() == 1) return;
  Node* tuple = graph.appendNode(graph.createTuple(graph.outputs()));
  while (!graph.outputs().empty()) graph.eraseOutput(0);
  graph.registerOutput(tuple->output());
}

double median(std::vector<double> times) {
  std::nth_element(times.begin(), times.begin() + long(times.size() / 2), times.end());
  return times[times.size() / 2];
}

}  // namespace

IslandGraph island_graph(Graph& graph, const QuantPlan& plan, const std::vector<size_t>& island, size_t which,
                         const std::map<Value*, QuantParams>& activations, bool int8, bool per_channel) {
  const auto nodes = island_nodes(plan, island, which);
  IslandGraph out;
  out.graph = std::make_shared<Graph>();
  Graph& sub = *out.graph;
  std::map<Value*, Value*> env;
  std::map<Node*, Node*> cloned;
  const std::function<Value*(Value*)> lookup = [&](Value* v) -> Value* {
    if (auto it = env.find(v); it != env.end()) return it->second;
    if (v->node()->kind() == c10::prim::Constant) {
      Node* constant = sub.appendNode(sub.createClone(v->node(), lookup));
      return env[v] = constant->output()->copyMetadata(v);
    }
    out.inputs.push_back(v);
    return env[v] = sub.addInput()->copyMetadata(v);
  };
  for (Node* n : graph.nodes()) {
    if (!nodes.count(n)) continue;
    Node* copy = sub.createClone(n, lookup);
    for (size_t i = 0; i < n->outputs().size(); ++i) env[n->output(i)] = copy->output(i);
    cloned[n] = sub.appendNode(copy);
  }
  for (Node* n : graph.nodes())
    if (nodes.count(n))
      for (Value* o : n->outputs())
        if (read_outside(o, nodes)) sub.registerOutput(env.at(o));
  if (!int8) {
    return_one_value(sub);
    return out;
  }
  QuantPlan local = plan;
  local.steps.clear();
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (island[i] != which) continue;
    auto step = plan.steps[i];
    step.node = cloned.at(step.node);
    if (step.activation) step.activation->node = cloned.at(step.activation->node);
    local.steps.push_back(step);
  }
  std::map<Value*, QuantParams> local_activations;
  for (const auto& [value, q] : activations)
    if (auto it = env.find(value); it != env.end()) local_activations[it->second] = q;
  std::vector<std::pair<double, double>> scales;
  rewrite_static(sub, local, local_activations, per_channel, scales);
  torch::jit::EliminateDeadCode(out.graph);
  return_one_value(sub);
  return out;
}

std::vector<double> time_graphs(const std::vector<std::shared_ptr<Graph>>& graphs, const std::vector<IValue>& inputs,
                                int runs) {
  std::vector<std::unique_ptr<torch::jit::GraphFunction>> functions;
  for (size_t i = 0; i < graphs.size(); ++i)
    functions.push_back(
        std::make_unique<torch::jit::GraphFunction>("pare_island_" + std::to_string(i), graphs[i]->copy(), nullptr));
  const auto once = [&](torch::jit::GraphFunction& f) {
    torch::jit::Stack stack(inputs.begin(), inputs.end());
    const auto start = std::chrono::steady_clock::now();
    f.run(stack);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  for (int i = 0; i < 3; ++i)
    for (auto& f : functions) once(*f);  // the profiling executor settles on a plan
  std::vector<std::vector<double>> times(functions.size());
  for (int r = 0; r < runs; ++r) {  // taking turns, each first in its turn: load hits them alike
    for (size_t j = 0; j < functions.size(); ++j) {
      const size_t i = (j + size_t(r)) % functions.size();
      times[i].push_back(once(*functions[i]));
    }
  }
  std::vector<double> medians;
  medians.reserve(times.size());
  for (auto& t : times) medians.push_back(median(std::move(t)));
  return medians;
}

std::pair<double, double> time_modules(const torch::jit::Module& a, const torch::jit::Module& b,
                                       const std::vector<IValue>& inputs, int runs) {
  auto first = reloaded(a, "QuantizeInt8"), second = reloaded(b, "QuantizeInt8");  // fresh: specialised to `inputs`
  const auto once = [&](torch::jit::Module& m) {
    const auto start = std::chrono::steady_clock::now();
    m.forward(inputs);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  for (int i = 0; i < 3; ++i) once(first), once(second);
  std::vector<double> ta, tb;
  for (int i = 0; i < runs; ++i) {
    if (i % 2 == 0) ta.push_back(once(first)), tb.push_back(once(second));
    else tb.push_back(once(second)), ta.push_back(once(first));
  }
  return {median(ta), median(tb)};
}

std::vector<IValue> with_batch_size(const std::vector<IValue>& inputs, int64_t rows) {
  std::vector<IValue> out;
  for (const auto& value : inputs) {
    if (!value.isTensor() || value.toTensor().dim() == 0 || value.toTensor().size(0) == 0) {
      out.push_back(value);
      continue;
    }
    const auto& t = value.toTensor();
    out.emplace_back(t.index_select(0, torch::arange(rows, torch::kLong) % t.size(0)).contiguous());
  }
  return out;
}

}  // namespace pare::detail
