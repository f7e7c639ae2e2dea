#pragma once
// The runner's tuning to its model and host (internal to pare): what
// RunnerOptions::hint chooses from one measurement of the model at batch 1 and
// batch 8. Split from the measuring so the choice is a pure function, tested
// without timing anything.

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include <ATen/core/ivalue.h>

#include "pare/serve/runner.hpp"

namespace pare::detail {

/// Below this share of time saved per row by a batch of 8, queueing can't win
/// over running each request on its caller's thread.
constexpr double kBatchingPays = 0.3;

/// A candidate within this share of the best measured throughput counts as
/// good as the best; the most passes among those is chosen.
constexpr double kPassesWithin = 0.9;

/// `options` with the hint's choices for every setting not given explicitly.
/// `batch_saving`: 1 - time(batch 8) / (8 x time(batch 1)); `passes`: the
/// concurrency chosen by choose_passes.
RunnerOptions tuned(RunnerOptions options, double batch_saving, int passes);

/// The pass counts the hint tries: 1, one per core, and two per core unless
/// batching pays (cores divided by LibTorch's intra-op threads). When batching
/// pays, a pass beyond one per core takes requests that would have joined a
/// batch: on a 16-core host two per core left the int8 CNN at one request per
/// batch and 0.85x of its callers' own throughput at 128 callers.
std::vector<int> pass_candidates(unsigned cores, int intra_op_threads, bool batching_pays);

/// From (passes, rows per second) pairs: the most passes within kPassesWithin
/// of the best. Two per core let a core run another pass while the callers
/// a pass answered wake up (on a 16-core host, one per core left a quarter of
/// the cores idle); on a 2-core machine whose BLAS serializes concurrent calls,
/// one pass served 5-15x more than four.
int choose_passes(const std::vector<std::pair<int, double>>& throughput);

/// Each candidate's rows per second with that many concurrent batch-1 passes of `forward`.
std::vector<std::pair<int, double>> measure_passes(const std::vector<int>& candidates,
                                                   const std::vector<c10::IValue>& example_inputs,
                                                   const std::function<void(const std::vector<c10::IValue>&)>& forward);

/// pare::Error naming the first option out of range.
void validate(const RunnerOptions& options);

/// The hint's measurement: 1 - time(batch 8) / (8 x time(batch 1)) of
/// `forward` on the example inputs cut or repeated to 1 and 8 rows.
double measure_batch_saving(const std::vector<c10::IValue>& example_inputs,
                            const std::function<void(const std::vector<c10::IValue>&)>& forward);

/// The example inputs with `rows` rows: the first row of each tensor repeated.
/// pare::Error when an input is not a tensor with a batch dimension.
std::vector<c10::IValue> example_rows(const std::vector<c10::IValue>& inputs, int64_t rows);

}  // namespace pare::detail
