#include "pare/core/pipeline.hpp"

#include <fnmatch.h>

#include <chrono>

#include "core/torch_errors.hpp"
#include "core/text.hpp"

namespace pare {
namespace {

using detail::join;

// The layer kind of a submodule type: the last component of its qualified
// name ("__torch__.torch.nn.modules.linear.Linear" -> "Linear"), or "" when
// it is not a layer pare prunes.
std::string layer_kind(const torch::jit::Module& module) {
  const auto type_name = module.type()->name();
  if (!type_name) return "";
  const std::string name = type_name->name();
  for (const char* kind : {"Linear", "Conv1d", "Conv2d", "Conv3d"})
    if (name == kind) return kind;
  return "";
}

}  // namespace

bool glob_match(const std::string& pattern, const std::string& name) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

bool LayerSelection::selects(const std::string& name) const {
  bool keep = include.empty();
  for (const auto& pattern : include) keep = keep || glob_match(pattern, name);
  for (const auto& pattern : exclude) keep = keep && !glob_match(pattern, name);
  return keep;
}

Pipeline& Pipeline::add(std::shared_ptr<const Pass> pass) {
  require(pass != nullptr, "Pipeline::add: pass is null; expected a pare::Pass");
  passes_.push_back(std::move(pass));
  return *this;
}

Result Pipeline::run(const torch::jit::Module& module) const {
  require(!passes_.empty(), "Pipeline::run: the pipeline has no passes; add at least one with add()");
  Result state;
  state.module = module.clone();  // deep copy: the caller's module and weights stay untouched
  for (const auto& pass : passes_) {
    const auto start = std::chrono::steady_clock::now();
    PassReport entry;
    entry.pass = pass->name();
    // LibTorch's errors become pare::Error naming the pass; exceptions from the
    // user's own callbacks (data streams, progress, optimizer factories) pass through.
    try {
      pass->run(state, entry);
    } catch (const c10::Error& e) {
      throw Error(pass->name() + ": " + detail::torch_message(e), Error::Kind::Runtime);
    }
    entry.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (entry.layers.empty()) entry.layers = weight_table(state.module);
    state.report.passes.push_back(std::move(entry));
  }
  return state;
}

std::vector<NamedWeight> select_weights(const torch::jit::Module& module,
                                        const LayerSelection& selection) {
  std::vector<NamedWeight> out;
  std::vector<std::string> candidates;
  for (const auto& child : module.named_modules()) {
    const std::string kind = layer_kind(child.value);
    if (kind.empty() || !child.value.hasattr("weight")) continue;
    const std::string name = child.name.empty() ? "weight" : child.name + ".weight";
    candidates.push_back(name);
    if (!selection.selects(name)) continue;
    out.push_back({name, kind, child.value.attr("weight").toTensor()});
  }
  require(!out.empty(), "no layer matches: include [" + join(selection.include) + "], exclude [" +
                            join(selection.exclude) + "]; Linear/Conv weights in this module: " +
                            join(candidates));
  return out;
}

std::vector<LayerReport> weight_table(const torch::jit::Module& module) {
  std::vector<LayerReport> table;
  for (const auto& child : module.named_modules()) {
    if (layer_kind(child.value).empty() || !child.value.hasattr("weight")) continue;
    const auto weight = child.value.attr("weight");
    if (!weight.isTensor()) continue;
    LayerReport layer;
    layer.name = child.name.empty() ? "weight" : child.name + ".weight";
    layer.parameters = weight.toTensor().numel();
    layer.nonzeros = weight.toTensor().count_nonzero().item<int64_t>();
    table.push_back(std::move(layer));
  }
  return table;
}

}  // namespace pare
