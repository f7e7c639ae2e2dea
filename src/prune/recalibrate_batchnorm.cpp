#include "pare/prune/recalibrate_batchnorm.hpp"

#include <set>

#include <torch/csrc/jit/passes/inliner.h>

#include "core/torch_errors.hpp"

namespace pare {

namespace {

using torch::jit::Node;
using torch::jit::Value;

// The attribute path ("layer1.0.bn1.running_mean") a value reads through
// prim::GetAttr from the graph's `self`; empty when it comes from elsewhere
// (a constant, once the module was frozen).
std::string attribute_path(Value* value, Value* self) {
  std::string path;
  while (value != self) {
    Node* node = value->node();
    if (node->kind() != c10::prim::GetAttr) return "";
    path = node->s(c10::attr::name) + (path.empty() ? "" : "." + path);
    value = node->input(0);
  }
  return path;
}

torch::jit::Module owner_of(torch::jit::Module module, const std::string& path, std::string& leaf) {
  size_t start = 0;
  for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1)
    module = module.attr(path.substr(start, dot - start)).toModule();
  leaf = path.substr(start);
  return module;
}

at::Tensor attribute(const torch::jit::Module& module, const std::string& path) {
  std::string leaf;
  return owner_of(module, path, leaf).attr(leaf).toTensor();
}

struct BatchNormStats {
  std::string mean_path, var_path;
  at::Tensor mean_sum, var_sum;
};

bool has(const torch::jit::Module& module, const char* name) { return module.hasattr(name); }

// Every aten::batch_norm of `block` and of the blocks nested in it: scripted
// models call them inside prim::If and prim::Loop too (an inverted residual's
// branch, a dense layer's memory-efficient switch).
std::vector<Node*> batch_norm_nodes(torch::jit::Block* block) {
  std::vector<Node*> found;
  for (Node* node : block->nodes()) {
    if (node->kind() == c10::Symbol::fromQualString("aten::batch_norm")) found.push_back(node);
    for (torch::jit::Block* inner : node->blocks()) {
      const auto nested = batch_norm_nodes(inner);
      found.insert(found.end(), nested.begin(), nested.end());
    }
  }
  return found;
}

// Scripted BatchNorm modules choose their statistics at run time from
// `training`: in the probe they train (their momentum, a compiled constant, is
// replaced in the graph below). Their statistics' paths go to `found`.
void train_scripted(torch::jit::Module& probe, std::vector<BatchNormStats>& found, std::set<std::string>& paths) {
  for (const auto& item : probe.named_modules()) {
    auto module = item.value;
    if (!has(module, "running_mean") || !has(module, "running_var") || !module.attr("running_mean").isTensor() ||
        module.type()->name()->name().find("BatchNorm") == std::string::npos)
      continue;
    module.train(true);
    const std::string prefix = item.name.empty() ? "" : item.name + ".";
    found.push_back({prefix + "running_mean", prefix + "running_var", {}, {}});
    paths.insert(prefix + "running_mean");
  }
}

// Every aten::batch_norm of the probe's forward (a copy that has not run yet,
// callees inlined) gets training true and momentum 1: its running statistics
// become the batch's. Traced graphs read them through prim::GetAttr (their
// paths go to `found`); statistics inlined as constants by freezing are
// counted in `frozen` and left alone.
void train_traced(torch::jit::Module& probe, std::vector<BatchNormStats>& found, const std::set<std::string>& scripted,
                  int64_t& frozen) {
  auto graph = probe.get_method("forward").graph();
  torch::jit::Inline(*graph);
  Value* self = graph->inputs().at(0);
  for (Node* node : batch_norm_nodes(graph->block())) {
    if (node->input(3)->node()->kind() == c10::prim::Constant) {
      ++frozen;
      continue;
    }
    {
      torch::jit::WithInsertPoint guard(node);
      node->replaceInput(5, graph->insertConstant(true));
      node->replaceInput(6, graph->insertConstant(1.0));
    }
    const auto mean = attribute_path(node->input(3), self), var = attribute_path(node->input(4), self);
    if (!mean.empty() && !var.empty() && !scripted.count(mean)) found.push_back({mean, var, {}, {}});
  }
}

std::vector<BatchNormStats> make_probe(torch::jit::Module& probe, int64_t& frozen) {
  std::vector<BatchNormStats> found;
  std::set<std::string> scripted;
  train_scripted(probe, found, scripted);
  train_traced(probe, found, scripted, frozen);
  return found;
}

}  // namespace

RecalibrateBatchNorm::RecalibrateBatchNorm(RecalibrateBatchNormOptions options) : options_(std::move(options)) {
  require(!options_.batches().empty(), "RecalibrateBatchNorm: expected at least one batch of inputs, got none");
  require(options_.max_batches() >= 0,
          "RecalibrateBatchNorm: max_batches must be >= 0 (0: all), got " + std::to_string(options_.max_batches()));
}

void RecalibrateBatchNorm::run(Result& state, PassReport& entry) const {
  require(state.module.find_method("forward").has_value(), "RecalibrateBatchNorm: the module has no forward method");
  auto probe = state.module.clone();  // a fresh copy: its forward has no execution plan yet
  int64_t frozen = 0;
  auto stats = make_probe(probe, frozen);
  const auto& batches = options_.batches();
  const size_t count = options_.max_batches() > 0 ? std::min(batches.size(), size_t(options_.max_batches())) : batches.size();
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < count; ++b) {
    try {
      probe.forward(batches[b]);
    } catch (const std::exception& e) {
      throw Error("RecalibrateBatchNorm: batch " + std::to_string(b) + " failed in the model: " + detail::torch_message(e));
    }
    for (auto& s : stats) {
      const auto mean = attribute(probe, s.mean_path), var = attribute(probe, s.var_path);
      s.mean_sum = s.mean_sum.defined() ? s.mean_sum + mean : mean.clone();
      s.var_sum = s.var_sum.defined() ? s.var_sum + var : var.clone();
    }
  }
  for (const auto& s : stats) {  // into the module's own buffers, shared by every method
    attribute(state.module, s.mean_path).copy_(s.mean_sum / double(count));
    attribute(state.module, s.var_path).copy_(s.var_sum / double(count));
  }
  entry.metrics["batchnorms"] = double(stats.size());
  entry.metrics["batchnorms_frozen"] = double(frozen);
  entry.metrics["batches"] = double(count);
}

}  // namespace pare
