// ConvertPrecision: weights to fp16/bf16 except chosen submodules, with casts
// inserted where each layer is called so every layer sees inputs of its own dtype.
//
// TorchScript attaches methods to module *types*, and instances with the same
// attributes share one type, hence one graph. A cast is planned per call node
// of a type's graph; every instance of that type must agree on it.

#include "pare/convert/precision.hpp"

#include <torch/csrc/jit/ir/ir.h>

#include <map>
#include <optional>

namespace pare {
namespace {

using torch::jit::Node;
using torch::jit::Value;

bool is_low_precision(c10::ScalarType dtype) { return dtype == c10::kHalf || dtype == c10::kBFloat16; }

// Modules that own parameters directly are the units that change dtype.
bool owns_floating_tensors(const torch::jit::Module& module) {
  for (const auto& p : module.named_parameters(/*recurse=*/false))
    if (p.value.is_floating_point()) return true;
  return false;
}

// Embedding-like layers take integer indices: their inputs are never cast.
bool takes_indices(const torch::jit::Module& module) {
  const auto type_name = module.type()->name() ? module.type()->name()->name() : std::string();
  return type_name.find("Embedding") != std::string::npos;
}

int64_t floating_bytes(const torch::jit::Module& module) {
  int64_t bytes = 0;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) bytes += p.value.numel() * p.value.element_size();
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    if (b.value.is_floating_point()) bytes += b.value.numel() * b.value.element_size();
  return bytes;
}

void convert_own_tensors(const torch::jit::Module& module, c10::ScalarType dtype, bool channels_last) {
  torch::NoGradGuard no_grad;
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    if (!p.value.is_floating_point()) continue;
    auto converted = p.value.to(dtype);
    if (channels_last && converted.dim() == 4) converted = converted.contiguous(at::MemoryFormat::ChannelsLast);
    p.value.set_data(converted);
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false))
    if (b.value.is_floating_point()) b.value.set_data(b.value.to(dtype));
}

// The submodule a call node's receiver names, following prim::GetAttr back to
// the graph's `self`; nullopt when the receiver is not such a chain.
std::optional<torch::jit::Module> callee_of(const torch::jit::Module& self, const torch::jit::Graph& graph,
                                            Value* receiver) {
  std::vector<std::string> path;
  while (receiver != graph.inputs()[0]) {
    Node* producer = receiver->node();
    if (producer->kind() != c10::prim::GetAttr) return std::nullopt;
    path.push_back(producer->s(c10::attr::name));
    receiver = producer->input(0);
  }
  if (path.empty()) return std::nullopt;  // a call on self: not a layer boundary
  torch::jit::Module module = self;
  for (auto it = path.rbegin(); it != path.rend(); ++it) {
    const auto attr = module.attr(*it);
    if (!attr.isModule()) return std::nullopt;
    module = attr.toModule();
  }
  return module;
}

void collect_calls(torch::jit::Block* block, std::vector<Node*>& calls) {
  for (Node* node : block->nodes()) {
    if (node->kind() == c10::prim::CallMethod) calls.push_back(node);
    for (auto* inner : node->blocks()) collect_calls(inner, calls);
  }
}

struct Plan {
  std::map<Node*, c10::ScalarType> casts;       // call node -> dtype its tensor inputs get
  std::map<Node*, std::string> planned_by;      // for the error message on disagreement
};

class Converter {
 public:
  Converter(const ConvertPrecisionOptions& options) : options_(options) {}

  PrecisionResult run(torch::jit::Module& root) {
    PrecisionResult summary;
    summary.bytes_before = floating_bytes(root);
    std::vector<torch::jit::NameModule> modules;
    for (const auto& m : root.named_modules()) modules.push_back(m);
    check_patterns(modules);
    for (const auto& m : modules) plan_calls(m.name, m.value);
    for (const auto& m : modules) {
      if (!owns_floating_tensors(m.value)) continue;
      const bool keep = kept(m.name);
      (keep ? summary.kept : summary.converted).push_back(m.name);
      if (!keep) convert_own_tensors(m.value, options_.dtype(), options_.channels_last());
    }
    summary.casts_inserted = insert_casts();
    summary.bytes_after = floating_bytes(root);
    return summary;
  }

 private:
  bool kept(const std::string& name) const {
    for (const auto& pattern : options_.keep_fp32())
      if (glob_match(pattern, name)) return true;
    return false;
  }

  void check_patterns(const std::vector<torch::jit::NameModule>& modules) const {
    for (const auto& pattern : options_.keep_fp32()) {
      bool matched = false;
      for (const auto& m : modules) matched = matched || (!m.name.empty() && glob_match(pattern, m.name));
      require(matched, "ConvertPrecision: keep_fp32 pattern '" + pattern +
                           "' matches no submodule; expected full module names such as 'fc2' or 'classifier.*'");
    }
  }

  static std::string join(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
  }

  // Plans a cast before every call of a parameter-owning submodule, in every method of `module`'s type.
  void plan_calls(const std::string& name, const torch::jit::Module& module) {
    for (const auto& method : module.get_methods()) {
      auto graph = method.graph();
      std::vector<Node*> calls;
      collect_calls(graph->block(), calls);
      for (Node* call : calls) {
        const auto callee = callee_of(module, *graph, call->input(0));
        if (!callee || !owns_floating_tensors(*callee) || takes_indices(*callee)) continue;
        const auto callee_name = join(name, relative_name(module, *callee));
        const auto dtype = kept(callee_name) ? c10::kFloat : options_.dtype();
        const auto [it, fresh] = plan_.casts.emplace(call, dtype);
        if (fresh) {
          plan_.planned_by[call] = callee_name;
          graphs_[call] = graph;
        }
        require(it->second == dtype, "ConvertPrecision: '" + plan_.planned_by[call] + "' and '" + callee_name +
                                         "' are called from shared TorchScript code (instances of one module type) "
                                         "but would need different dtypes; keep both in fp32 or neither");
      }
    }
  }

  // The attribute path from `parent` to `child` (both modules), for names in messages and patterns.
  static std::string relative_name(const torch::jit::Module& parent, const torch::jit::Module& child) {
    for (const auto& m : parent.named_modules())
      if (m.value._ivalue() == child._ivalue()) return m.name;
    return "?";
  }

  int64_t insert_casts() {
    int64_t inserted = 0;
    for (const auto& [call, dtype] : plan_.casts) {
      auto& graph = *graphs_.at(call);
      torch::jit::WithInsertPoint guard(call);
      for (size_t i = 1; i < call->inputs().size(); ++i) {
        Value* input = call->input(i);
        if (!input->type()->cast<c10::TensorType>()) continue;
        Value* cast = graph.insert(c10::aten::to, {input, static_cast<int64_t>(dtype), false, false});
        call->replaceInput(i, cast);
        ++inserted;
      }
    }
    return inserted;
  }

  const ConvertPrecisionOptions& options_;
  Plan plan_;
  std::map<Node*, std::shared_ptr<torch::jit::Graph>> graphs_;
};

void check(const ConvertPrecisionOptions& options) {
  require(is_low_precision(options.dtype()),
          std::string("ConvertPrecisionOptions: dtype ") + c10::toString(options.dtype()) +
              " is not served; expected torch::kHalf (fp16) or torch::kBFloat16 (bf16)");
}

}  // namespace

PrecisionResult convert_precision(torch::jit::Module& module, const ConvertPrecisionOptions& options) {
  check(options);
  require(module.find_method("forward").has_value(), "convert_precision: the module has no forward method");
  require(module.parameters().size() > 0,
          "convert_precision: the module has no parameters (frozen?); convert before ExportTorchScript(freeze)");
  return Converter(options).run(module);
}

ConvertPrecision::ConvertPrecision(ConvertPrecisionOptions options) : options_(std::move(options)) { check(options_); }

void ConvertPrecision::run(Result& state, PassReport& entry) const {
  const auto summary = convert_precision(state.module, options_);
  const std::string dtype = options_.dtype() == c10::kHalf ? "fp16" : "bf16";
  entry.labels["dtype"] = dtype;
  entry.metrics["bytes_before"] = double(summary.bytes_before);
  entry.metrics["bytes_after"] = double(summary.bytes_after);
  entry.metrics["casts_inserted"] = double(summary.casts_inserted);
  entry.metrics["layers_converted"] = double(summary.converted.size());
  entry.metrics["layers_kept_fp32"] = double(summary.kept.size());
  std::string kept;
  for (const auto& name : summary.kept) kept += (kept.empty() ? "" : ",") + (name.empty() ? "<root>" : name);
  if (!kept.empty()) entry.labels["kept_fp32"] = kept;
  if (options_.channels_last()) entry.labels["layout"] = "channels_last";
}

}  // namespace pare
