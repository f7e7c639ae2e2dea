#pragma once
// pare::RecalibrateBatchNorm — BatchNorm running statistics re-estimated on
// calibration batches, for a model whose layers changed under them (channels
// removed, weights pruned), scripted or traced.
//
//   auto result = pare::Pipeline()
//       .add(pare::PruneChannels(pare::PruneChannelsOptions(0.5).input_shape({1, 1, 28, 28})))
//       .add(pare::RecalibrateBatchNorm(pare::RecalibrateBatchNormOptions(batches)))
//       .run(model);

#include <cstdint>
#include <vector>

#include <torch/script.h>

#include "pare/core/arg.hpp"
#include "pare/core/pipeline.hpp"

namespace pare {

class RecalibrateBatchNormOptions {
 public:
  /// `batches`: one model input list per batch (pare::InputBatches), run as
  /// they come; each BatchNorm's statistics become the mean, over batches, of
  /// the per-channel mean and (unbiased) variance of its input.
  explicit RecalibrateBatchNormOptions(std::vector<std::vector<torch::jit::IValue>> batches)
      : batches_(std::move(batches)) {}
  /// One model input list per batch.
  PARE_ARG(std::vector<std::vector<torch::jit::IValue>>, batches);
  /// Use at most this many batches (0: all of them).
  PARE_ARG(int64_t, max_batches) = 0;
};

/// Re-estimates the running mean and variance of every BatchNorm the forward
/// pass reaches, as PyTorch's train-mode forward would with a cumulative
/// average: each BatchNorm normalizes with its batch's statistics while the
/// batches run, so later ones see what the network computes in training.
/// Parameters are not changed. Report: "batchnorms" (recalibrated),
/// "batchnorms_frozen" (statistics inlined as constants by freezing: left as
/// they are), "batches". pare::Error when no batch is given or a batch fails.
class RecalibrateBatchNorm : public Pass {
 public:
  explicit RecalibrateBatchNorm(RecalibrateBatchNormOptions options);
  /// Short for RecalibrateBatchNorm(RecalibrateBatchNormOptions(batches)).
  explicit RecalibrateBatchNorm(std::vector<std::vector<torch::jit::IValue>> batches)
      : RecalibrateBatchNorm(RecalibrateBatchNormOptions(std::move(batches))) {}
  std::string name() const override { return "recalibrate_batchnorm"; }
  void run(Result& state, PassReport& entry) const override;
  const RecalibrateBatchNormOptions& options() const { return options_; }

 private:
  RecalibrateBatchNormOptions options_;
};

}  // namespace pare
