#pragma once
// pare::L1Prune — L1 magnitude pruning, unstructured or structured, local or global.

#include <optional>

#include "pare/core/pipeline.hpp"

namespace pare {

enum class Scope {
  Local,   ///< each tensor loses `amount` of its own weights
  Global,  ///< one threshold across all selected weights
};

/// "local" or "global": the names the CLI and Python use.
std::string to_string(Scope scope);
/// The inverse of to_string; pare::Error naming the known scopes otherwise.
Scope parse_scope(const std::string& name);
/// Every scope name, in Scope order.
std::vector<std::string> scope_names();

class L1PruneOptions {
 public:
  /// Fraction of weights (or of output channels, when structured) to zero, in [0, 1].
  L1PruneOptions& amount(double value) { amount_ = value; return *this; }
  L1PruneOptions& scope(Scope value) { scope_ = value; return *this; }
  /// Prune whole slices along `dim` (0 = output channels/rows) ranked by L1 norm.
  L1PruneOptions& structured(int64_t dim = 0) { structured_dim_ = dim; return *this; }
  L1PruneOptions& include(std::vector<std::string> patterns) { selection_.include = std::move(patterns); return *this; }
  L1PruneOptions& exclude(std::vector<std::string> patterns) { selection_.exclude = std::move(patterns); return *this; }

  double amount() const { return amount_; }
  Scope scope() const { return scope_; }
  std::optional<int64_t> structured_dim() const { return structured_dim_; }
  const LayerSelection& selection() const { return selection_; }

 private:
  double amount_ = 0.5;
  Scope scope_ = Scope::Local;
  std::optional<int64_t> structured_dim_;
  LayerSelection selection_;
};

/// The pass. Semantics follow torch.nn.utils.prune: the number of weights
/// zeroed is round(amount * n) (round half to even), the smallest |w| go first,
/// and structured pruning keeps the channels with the largest L1 norms. Global
/// structured pruning ranks channels across layers by mean |w| so that layers
/// of different fan-in compare fairly. Masks land in Result::masks.
class L1Prune : public Pass {
 public:
  explicit L1Prune(L1PruneOptions options = {});
  std::string name() const override { return "l1_prune"; }
  void run(Result& state, PassReport& entry) const override;
  const L1PruneOptions& options() const { return options_; }

 private:
  L1PruneOptions options_;
};

/// Zeroes the `count` smallest-magnitude entries across `tensors` (float32 or
/// float64, modified in place) and returns the keep-masks. Exposed for users
/// with their own pruning schedules and for the benchmark.
std::vector<torch::Tensor> prune_smallest(const std::vector<torch::Tensor>& tensors,
                                          int64_t count);

/// torch.nn.utils.prune's count: round(amount * n), round half to even.
int64_t prune_count(double amount, int64_t n);

}  // namespace pare
