#pragma once
// pare::Pass and pare::Pipeline — composable transformations of a TorchScript module.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "pare/core/error.hpp"
#include "pare/core/report.hpp"

namespace pare {

/// Pruning masks by parameter name: bool tensors, true where the weight is kept.
using Masks = std::map<std::string, torch::Tensor>;

/// What a pipeline produces, and the state its passes share while it runs.
struct Result {
  torch::jit::Module module;
  Report report;
  Masks masks;  ///< left by L1Prune, honoured by Distill so pruned weights stay zero
  /// Extra files ExportTorchScript embeds (name -> content), e.g. "pare/quantization.json".
  std::map<std::string, std::string> extra_files;
};

/// One transformation. Implementations change `state.module` in place (the
/// pipeline hands them a private copy) and fill `entry`, their report entry.
class Pass {
 public:
  virtual ~Pass() = default;
  virtual std::string name() const = 0;
  virtual void run(Result& state, PassReport& entry) const = 0;
};

/// An ordered list of passes. `run` never modifies its input module.
class Pipeline {
 public:
  Pipeline() = default;

  /// Appends a pass (a copy of it); chainable: `Pipeline().add(a).add(b)`.
  template <class P, class = std::enable_if_t<std::is_base_of_v<Pass, P>>>
  Pipeline& add(P pass) {
    return add(std::make_shared<P>(std::move(pass)));
  }
  Pipeline& add(std::shared_ptr<const Pass> pass);

  /// Runs every pass on a deep copy of `module`; times each pass and, where a
  /// pass leaves its layer table empty, fills it from the module's weights.
  Result run(const torch::jit::Module& module) const;

  const std::vector<std::shared_ptr<const Pass>>& passes() const { return passes_; }

 private:
  std::vector<std::shared_ptr<const Pass>> passes_;
};

/// A weight tensor a pass may act on.
struct NamedWeight {
  std::string name;      ///< full parameter name, e.g. "features.0.weight"
  std::string kind;      ///< "Linear", "Conv1d", "Conv2d" or "Conv3d"
  torch::Tensor tensor;  ///< aliases the module's parameter
};

/// Which weights a pass selects: glob patterns (`*`, `?`, `[...]`) matched
/// against full parameter names. Empty `include` means every Linear and Conv weight.
struct LayerSelection {
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  /// True when `name` matches an include pattern (or include is empty) and no exclude pattern.
  bool selects(const std::string& name) const;
};

/// The weights of every Linear/Conv submodule that `selection` keeps, in
/// module order. pare::Error if patterns match nothing.
std::vector<NamedWeight> select_weights(const torch::jit::Module& module,
                                        const LayerSelection& selection = {});

/// Parameter and non-zero counts of every Linear/Conv weight (empty for a frozen module).
std::vector<LayerReport> weight_table(const torch::jit::Module& module);

/// True when `name` matches the glob `pattern`.
bool glob_match(const std::string& pattern, const std::string& name);

}  // namespace pare
