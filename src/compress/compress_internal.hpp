#pragma once
// CompressTo's search, shared by its two sources: the state of one search and
// how one candidate is built and measured.

#include <string>
#include <vector>

#include "pare/compress/compress_to.hpp"
#include "pare/quantize/quantize.hpp"

namespace pare::detail {

/// What every candidate of one search shares.
struct CompressSearch {
  const torch::jit::Module& input;  ///< in eval mode
  const CompressToOptions& options;
  std::vector<int64_t> shape;          ///< one row of the eval batches' input, batch first (batch 1)
  std::vector<int64_t> measure_shape;  ///< the same, measured at the target's batch
  InputBatches calibration;            ///< the first calibration_batches() train inputs
  std::string cache_dir;               ///< the latency table's cache for this search
  double input_accuracy = 0;
};

/// The target's measuring settings as a speedup target of `factor`, cached in `cache_dir`.
Latency with_factor(const Latency& target, double factor, const std::string& cache_dir);

/// Builds, exports and measures one candidate (channels pruned to `prune_speedup`, 1: none);
/// `out` receives the exported module. A refused width search is returned with its note.
CompressCandidate build_candidate(const CompressSearch& search, double prune_speedup, torch::jit::Module& out);

}  // namespace pare::detail
