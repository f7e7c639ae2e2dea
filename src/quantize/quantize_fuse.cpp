// A residual add folded into the convolution before it: onednn's
// quantized::conv2d_add(_relu) (LibTorch 2.x) accumulates the convolution's
// result onto the other operand in one pass, instead of writing the
// convolution's int8 output and reading it back for quantized::add(_relu).

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/ir/ir.h>

#include "quantize/quantize_graph.hpp"

namespace pare::detail {
namespace {

using c10::Symbol;

bool has_kind(const Node* n, const char* kind) { return n->kind() == Symbol::fromQualString(kind); }

// Ops that return a tensor of their own, never a view of an input.
bool allocates_output(const Node* n) {
  return n->kind().ns() == Symbol::fromQualString("namespaces::quantized") || has_kind(n, "aten::quantize_per_tensor") ||
         has_kind(n, "aten::max_pool2d");
}

// The fused op writes its result into `accum`'s memory (onednn's sum post-op),
// so `accum` must be dead after `add`: read before it only by convolutions,
// which never return a view of it, and neither a graph output nor a view itself.
bool overwritable(Value* accum, Node* add) {
  if (accum->node()->owningBlock() != add->owningBlock() || !allocates_output(accum->node())) return false;
  for (const auto& use : accum->uses()) {
    if (use.user == add) continue;
    const bool read_by_conv = has_kind(use.user, "quantized::conv2d") || has_kind(use.user, "quantized::conv2d_relu");
    if (!read_by_conv || !use.user->isBefore(add)) return false;
  }
  return true;
}

// A quantized::conv2d whose only reader is `add`.
Node* conv_feeding(Value* v, Node* add) {
  Node* conv = v->node();
  if (!has_kind(conv, "quantized::conv2d") || v->uses().size() != 1 || conv->owningBlock() != add->owningBlock())
    return nullptr;
  return conv;
}

bool can_fuse_conv_add() {
  auto& dispatcher = c10::Dispatcher::singleton();
  return at::globalContext().qEngine() == at::QEngine::ONEDNN &&
         dispatcher.findSchema({"quantized::conv2d_add", ""}).has_value() &&
         dispatcher.findSchema({"quantized::conv2d_add_relu", ""}).has_value();
}

}  // namespace

int64_t fuse_conv_add(Graph& graph) {
  if (!can_fuse_conv_add()) return 0;
  std::vector<Node*> adds;
  for (Node* n : graph.nodes())
    if (has_kind(n, "quantized::add") || has_kind(n, "quantized::add_relu")) adds.push_back(n);
  int64_t fused = 0;
  for (Node* add : adds) {
    for (size_t side = 0; side < 2; ++side) {
      Node* conv = conv_feeding(add->input(side), add);
      Value* accum = add->input(1 - side);
      // The kernel writes into accum while it reads the conv's input: they must differ (`x + conv(x)`).
      if (conv == nullptr || conv->input(0) == accum || !overwritable(accum, add)) continue;
      torch::jit::WithInsertPoint here(add);
      const char* op = has_kind(add, "quantized::add_relu") ? "quantized::conv2d_add_relu" : "quantized::conv2d_add";
      Value* out = graph.insert(Symbol::fromQualString(op),
                                {conv->input(0), accum, conv->input(1), add->input(2), add->input(3)});
      add->output()->replaceAllUsesWith(out);
      add->destroy();
      conv->destroy();
      ++fused;
      break;
    }
  }
  return fused;
}

}  // namespace pare::detail
