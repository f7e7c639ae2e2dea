#pragma once
// pare::CompressTo — one call for the whole job: "this much faster on this
// machine, at most this many points of accuracy lost". It searches channel
// widths (a latency target for PruneChannels), re-estimates BatchNorm
// statistics, recovers accuracy with Distill and, where allowed, quantizes to
// int8 under the remaining accuracy budget; every candidate is exported,
// measured as a file against the input model and evaluated, until one meets
// both the latency target and the accuracy budget, or the best found is kept.
//
//   auto result = pare::Pipeline()
//       .add(pare::CompressTo(pare::CompressToOptions(pare::Latency::speedup(3.0).batch(64), 1.0, train, eval)
//                                 .int8(true).epochs(2)))
//       .run(model);
//   std::cout << result.report.at("compress_to").labels.at("message") << "\n";

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "pare/core/arg.hpp"
#include "pare/core/pipeline.hpp"
#include "pare/distill/distill.hpp"
#include "pare/prune/latency.hpp"

namespace pare {

class CompressToOptions {
 public:
  /// `target`: Latency::speedup(f) or Latency::at_most(time, batch), measured at its batch() with its
  /// threads() and clock; `max_drop`: points of top-1 accuracy (on `eval`) the result may lose
  /// against the input; `train`: (input, label) batches for BatchNorm statistics, Distill and int8
  /// calibration; `eval`: (input, label) batches that measure accuracy.
  CompressToOptions(Latency target, double max_drop, std::vector<Batch> train, std::vector<Batch> eval)
      : target_(std::move(target)), max_drop_(max_drop), train_(std::move(train)), eval_(std::move(eval)) {}
  /// The latency target (its batch(), threads(), repeats(), clock and cache_dir() also govern the measurements).
  PARE_ARG(Latency, target);
  /// Points of top-1 accuracy the result may lose against the input (>= 0).
  PARE_ARG(double, max_drop);
  /// (input, label) batches: BatchNorm statistics, Distill, int8 calibration.
  PARE_ARG(std::vector<Batch>, train);
  /// (input, label) batches on which every candidate's top-1 accuracy is measured.
  PARE_ARG(std::vector<Batch>, eval);
  /// Allow static int8 (QuantizeInt8 with never_slower and max_drop set to the budget left). Default off.
  PARE_ARG(bool, int8) = false;
  /// Distill epochs per candidate, at most: training stops after the first epoch that brings the
  /// candidate within the budget (0: no distillation). Default 2.
  PARE_ARG(int64_t, epochs) = 2;
  /// Candidates built and measured before the search stops with the best found (>= 1). Default 4.
  PARE_ARG(int64_t, max_candidates) = 4;
  /// Train batches used to re-estimate BatchNorm statistics and to calibrate int8 (>= 1). Default 16.
  PARE_ARG(int64_t, calibration_batches) = 16;
  /// Distill's learning rate (Adam). Default 1e-3.
  PARE_ARG(double, lr) = 1e-3;
  /// Quantized engine for int8; empty: the best this LibTorch has.
  PARE_ARG(std::string, engine);
};

/// One model the search built and measured.
struct CompressCandidate {
  double prune_speedup = 1;  ///< the latency target PruneChannels was given (1: no channels removed)
  int64_t epochs = 0;        ///< Distill epochs it was trained
  bool int8 = false;         ///< quantized to int8
  std::string applied;       ///< what was done, e.g. "prune_channels 2.50x + recalibrate_batchnorm + distill 1 + int8"
  double seconds = 0;        ///< the exported file, per call at the target's batch
  double input_seconds = 0;  ///< the input, measured beside it
  double accuracy = 0;       ///< top-1 % on the eval batches
  int64_t file_bytes = 0;    ///< the exported file
  bool meets_latency = false, meets_accuracy = false;
  std::string note;  ///< why it was not built (a refused width search), else empty
  double speedup() const { return seconds > 0 ? input_seconds / seconds : 0; }
};

/// What the search found.
struct CompressToResult {
  torch::jit::Module module;  ///< the chosen candidate as exported (the input itself when none was built)
  std::vector<CompressCandidate> candidates;
  int chosen = -1;            ///< index into candidates; -1 when none was built
  bool met = false;           ///< the chosen candidate meets both the latency target and the budget
  double input_accuracy = 0;  ///< top-1 % of the input on the eval batches
  double target_speedup = 0;  ///< the speedup asked (for at_most: the input's measured time / the time asked)
  std::string message;        ///< what was found, and when not met, by how much it missed
};

/// Runs the search on a copy of `module` (left untouched). pare::Error on invalid options or data;
/// a target that cannot be met is not an error: the best candidate is returned with met == false.
CompressToResult compress_to(const torch::jit::Module& module, const CompressToOptions& options);

/// The pass. Report: one row per candidate (metrics speedup, latency_ms, accuracy, drop,
/// file_bytes, prune_speedup, epochs, int8, meets_latency, meets_accuracy; labels applied, chosen,
/// note), metrics target_speedup, max_drop, input_accuracy, accuracy, speedup, met, candidates;
/// labels message and target. The HTML report draws the candidates as a latency–accuracy chart.
class CompressTo : public Pass {
 public:
  explicit CompressTo(CompressToOptions options);
  std::string name() const override { return "compress_to"; }
  void run(Result& state, PassReport& entry) const override;
  const CompressToOptions& options() const { return options_; }

 private:
  CompressToOptions options_;
};

}  // namespace pare
