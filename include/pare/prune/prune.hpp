#pragma once
// pare::L1Prune — L1 magnitude pruning, unstructured or structured, local or global.

#include <optional>

#include "pare/core/arg.hpp"
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
  /// `amount`: fraction of weights (or of output channels, when structured) to zero, in [0, 1].
  explicit L1PruneOptions(double amount) : amount_(amount) {}
  /// The amount used to default to 0.5; pass it: L1PruneOptions(amount).
  [[deprecated("pass the amount: L1PruneOptions(amount)")]] L1PruneOptions() : amount_(0.5) {}

  /// Fraction of weights (or of output channels, when structured) to zero, in [0, 1].
  PARE_ARG(double, amount);
  /// Local: each tensor loses `amount` of its weights. Global: one threshold across them.
  PARE_ARG(Scope, scope) = Scope::Local;
  /// Prune whole slices along this dim (0 = output channels/rows) ranked by L1
  /// norm; unset (the default): unstructured, weight by weight.
  PARE_ARG(std::optional<int64_t>, structured);
  /// Glob patterns on full parameter names; empty: every Linear and Conv weight.
  PARE_ARG(std::vector<std::string>, include);
  /// Glob patterns on full parameter names left untouched.
  PARE_ARG(std::vector<std::string>, exclude);

 public:
  [[deprecated("use structured()")]] std::optional<int64_t> structured_dim() const { return structured_; }
  [[deprecated("use include() and exclude()")]] LayerSelection selection() const { return {include_, exclude_}; }
};

/// The pass. Semantics follow torch.nn.utils.prune: the number of weights
/// zeroed is round(amount * n) (round half to even), the smallest |w| go first,
/// and structured pruning keeps the channels with the largest L1 norms. Global
/// structured pruning ranks channels across layers by mean |w| so that layers
/// of different fan-in compare fairly. Masks land in Result::masks.
class L1Prune : public Pass {
 public:
  explicit L1Prune(L1PruneOptions options);
  /// Short for L1Prune(L1PruneOptions(amount)).
  explicit L1Prune(double amount) : L1Prune(L1PruneOptions(amount)) {}
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
