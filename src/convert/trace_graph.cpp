#include "convert/trace_graph.hpp"

#include <sstream>
#include <unordered_map>
#include <vector>

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_pooling.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "pare/core/error.hpp"

namespace pare::detail {
namespace {

using torch::jit::Graph;
using torch::jit::IValue;
using torch::jit::Node;
using torch::jit::Value;

const char* const kControlFlowHint =
    " The forward's control flow depends on its input (an `if` on a tensor's value, a loop over a size):"
    " a trace records the one path the example inputs took. Write the branch as tensor operations"
    " (torch::where, masks), or script the model from Python (torch.jit.script).";

std::vector<Node*> operations(Graph& graph) {
  std::vector<Node*> out;
  for (Node* n : graph.nodes())
    if (n->kind() != c10::prim::Constant) out.push_back(n);
  return out;
}

std::string describe(const Node* n, size_t index) {
  std::string text = "operation " + std::to_string(index) + " (" + n->kind().toQualString();
  if (n->kind() == c10::prim::GetAttr) text += " " + n->s(c10::attr::name);
  return text + ")";
}

std::string show(const IValue& value) {
  std::ostringstream out;
  if (value.isTensor()) out << "a tensor of shape " << value.toTensor().sizes();
  else out << value;
  return out.str();
}

// "argument 1 of operation 7 (aten::view)", or for a size list "element 0 of the
// list given to aten::view (operation 6 (prim::ListConstruct))".
std::string argument_name(const Node* user, size_t i, const std::string& where) {
  if (user->kind() == c10::prim::ListConstruct && !user->output()->uses().empty())
    return "element " + std::to_string(i) + " of the list given to " +
           user->output()->uses()[0].user->kind().toQualString() + " (" + where + ")";
  return "argument " + std::to_string(i) + " of " + where;
}

bool same_constant(const IValue& a, const IValue& b) {
  if (a.isTensor() != b.isTensor()) return false;
  if (!a.isTensor()) return a == b;
  const auto &x = a.toTensor(), &y = b.toTensor();
  if (!x.defined() || !y.defined()) return x.defined() == y.defined();
  return x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type() && x.equal(y);
}

// Rewrites the example trace as the two traces are walked: operation pairs,
// value correspondence, and the one `aten::size(input, 0)` batch-size value.
class Walk {
 public:
  Walk(Graph& example, Graph& check, TracedBatches batches, bool dynamic_batch)
      : example_(example), check_(check), batches_(batches), dynamic_batch_(dynamic_batch) {}

  void run() {
    const auto a = operations(example_), b = operations(check_);
    require(example_.inputs().size() == check_.inputs().size(), "trace: the two input sets have different structure");
    for (size_t i = 0; i < example_.inputs().size(); ++i) same_[example_.inputs()[i]] = check_.inputs()[i];
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) match(a[i], b[i], i);
    if (a.size() != b.size())
      fail("the forward runs " + std::to_string(a.size()) + " operations on the example inputs and " +
           std::to_string(b.size()) + " on the check inputs." + kControlFlowHint);
    for (size_t i = 0; i < example_.outputs().size(); ++i) match_input(example_.return_node(), check_.return_node(), i, a.size());
    torch::jit::EliminateDeadCode(example_.block());
  }

 private:
  [[noreturn]] void fail(const std::string& why) const { throw Error("trace: " + why); }

  void match(Node* a, Node* b, size_t index) {
    const bool same_kind = a->kind() == b->kind() && a->inputs().size() == b->inputs().size() &&
                           a->outputs().size() == b->outputs().size() &&
                           (a->kind() != c10::prim::GetAttr || a->s(c10::attr::name) == b->s(c10::attr::name));
    if (!same_kind)
      fail("the forward runs different operations on the example and the check inputs: " + describe(a, index) +
           " against " + describe(b, index) + "." + kControlFlowHint);
    for (size_t i = 0; i < a->inputs().size(); ++i) match_input(a, b, i, index);
    for (size_t i = 0; i < a->outputs().size(); ++i) same_[a->output(i)] = b->output(i);
  }

  void match_input(Node* a, Node* b, size_t i, size_t index) {
    const auto x = torch::jit::toIValue(a->input(i)), y = torch::jit::toIValue(b->input(i));
    const bool x_constant = a->input(i)->node()->kind() == c10::prim::Constant;
    const bool y_constant = b->input(i)->node()->kind() == c10::prim::Constant;
    if (x_constant && y_constant && x && y) {
      if (!same_constant(*x, *y)) a->replaceInput(i, generalized(a, *x, *y, describe(a, index), i));
      return;
    }
    const auto found = same_.find(a->input(i));
    if (x_constant || y_constant || found == same_.end() || found->second != b->input(i))
      fail("the forward wires " + describe(a, index) + " differently on the example and the check inputs." +
           kControlFlowHint);
  }

  // A value for `example` where the traces disagree: the batch size, or an error.
  Value* generalized(Node* user, const IValue& x, const IValue& y, const std::string& where, size_t i) {
    const std::string what = argument_name(user, i, where) + " is " + show(x) +
                             " on the example inputs (batch " + std::to_string(batches_.example) + ") and " +
                             show(y) + " on the check inputs (batch " + std::to_string(batches_.check) + ")";
    if (x.isInt() && y.isInt() && is_batch(x.toInt(), y.toInt())) return batch_size(what);
    if (x.isIntList() && y.isIntList() && x.toIntVector().size() == y.toIntVector().size()) {
      const auto u = x.toIntVector(), v = y.toIntVector();
      std::vector<Value*> items;
      torch::jit::WithInsertPoint here(user);
      for (size_t k = 0; k < u.size(); ++k) {
        if (u[k] != v[k] && !is_batch(u[k], v[k])) fail(not_batch(what));
        items.push_back(u[k] == v[k] ? example_.insertConstant(u[k]) : batch_size(what));
      }
      return example_.insertNode(example_.createList(c10::IntType::get(), items))->output();
    }
    fail(not_batch(what));
  }

  bool is_batch(int64_t x, int64_t y) const {
    return batches_.example != batches_.check && x == batches_.example && y == batches_.check;
  }

  std::string not_batch(const std::string& what) const {
    return what + ": the forward computed it from its input (x.size(d), a tensor's value), and a trace keeps it"
                  " as a constant. Only the batch size itself can be made dynamic: use -1 in view/reshape,"
                  " flatten(), or *_like factories instead.";
  }

  // `aten::size(x, 0)` of the first tensor input, inserted once at the top of the graph.
  Value* batch_size(const std::string& what) {
    if (!dynamic_batch_)
      fail(what + ": the forward bakes the batch size in (x.size(0) is a constant to the tracer); enable"
                  " TraceOptions::dynamic_batch or use -1 in view/reshape.");
    if (batch_) return batch_;
    Value* input = nullptr;
    for (Value* v : example_.inputs())
      if (!input && v->type()->isSubtypeOf(*c10::TensorType::get())) input = v;
    if (!input) fail(what + ", and there is no tensor input to read the batch size from");
    torch::jit::WithInsertPoint top(example_.nodes().front());
    batch_ = example_.insert(c10::aten::size, {input, 0});
    return batch_;
  }

  Graph& example_;
  Graph& check_;
  TracedBatches batches_;
  bool dynamic_batch_;
  std::unordered_map<const Value*, const Value*> same_;
  Value* batch_ = nullptr;
};

// The length of an int[] value: a ListConstruct's inputs or a constant list's size.
int64_t list_length(const Value* list) {
  if (list->node()->kind() == c10::prim::ListConstruct) return int64_t(list->node()->inputs().size());
  const auto constant = torch::jit::toIValue(list);
  return constant && constant->isIntList() ? int64_t(constant->toIntVector().size()) : -1;
}

bool is_constant(const Value* value, int64_t expected) {
  const auto constant = torch::jit::toIValue(value);
  return constant && (constant->isInt() || constant->isBool()) &&
         (constant->isInt() ? constant->toInt() : int64_t(constant->toBool())) == expected;
}

// Reroutes `old`'s uses to `kind(inputs)`, inserted where `old` was; dead code elimination removes `old`.
void replace_with(Node* old, c10::Symbol kind, const std::vector<Value*>& inputs) {
  Graph& graph = *old->owningGraph();
  Node* node = graph.create(kind, inputs, 1)->insertBefore(old);
  node->output()->setType(c10::TensorType::get());
  old->output()->replaceAllUsesWith(node->output());
}

// aten::_convolution(x, w, b, stride, padding, dilation, transposed=False, output_padding, groups, ...).
void rewrite_convolution(Node* n) {
  static const c10::Symbol convs[] = {c10::aten::conv1d, c10::aten::conv2d, c10::aten::conv3d};
  const int64_t dims = list_length(n->input(3));
  if (n->inputs().size() != 13 || !is_constant(n->input(6), 0) || dims < 1 || dims > 3) return;
  replace_with(n, convs[dims - 1], {n->input(0), n->input(1), n->input(2), n->input(3), n->input(4), n->input(5),
                                    n->input(8)});
}

// The weight `w` when `value` is aten::t(w), else null.
Value* transposed_weight(const Value* value) {
  return value->node()->kind() == c10::aten::t ? value->node()->input(0) : nullptr;
}

// addmm(b, x, w.t(), 1, 1) -> linear(x, w, b).
void rewrite_addmm(Node* n) {
  Value* w = transposed_weight(n->input(2));
  if (!w || !is_constant(n->input(3), 1) || !is_constant(n->input(4), 1)) return;
  replace_with(n, c10::aten::linear, {n->input(1), w, n->input(0)});
}

// matmul(x, w.t()) [then add_(·, b, 1) as its one use] -> linear(x, w, b or None).
void rewrite_matmul(Node* n) {
  Value* w = transposed_weight(n->input(1));
  if (!w) return;
  const auto& uses = n->output()->uses();
  Node* add = uses.size() == 1 ? uses[0].user : nullptr;
  if (add && add->kind() == c10::aten::add_ && add->input(0) == n->output() && is_constant(add->input(2), 1)) {
    replace_with(add, c10::aten::linear, {n->input(0), w, add->input(1)});
    return;
  }
  torch::jit::WithInsertPoint here(n);
  replace_with(n, c10::aten::linear, {n->input(0), w, n->owningGraph()->insertConstant(IValue())});
}

}  // namespace

void canonicalize_layers(std::shared_ptr<Graph>& graph) {
  std::vector<Node*> nodes(graph->nodes().begin(), graph->nodes().end());
  for (Node* n : nodes) {
    if (n->kind() == c10::aten::_convolution) rewrite_convolution(n);
    else if (n->kind() == c10::aten::addmm) rewrite_addmm(n);
    else if (n->kind() == c10::aten::matmul) rewrite_matmul(n);
    // Where view succeeds reshape returns the same view; unlike view it also takes the
    // channels-last tensors that passes like int8 quantization put between the layers.
    else if (n->kind() == c10::aten::view && n->inputs().size() == 2)
      replace_with(n, c10::aten::reshape, {n->input(0), n->input(1)});
  }
  torch::jit::EliminateDeadCode(graph);
}

void generalize_batch(Graph& example, Graph& check, TracedBatches batches, bool dynamic_batch) {
  Walk(example, check, batches, dynamic_batch).run();
}

}  // namespace pare::detail
