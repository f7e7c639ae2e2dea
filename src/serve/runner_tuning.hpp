#pragma once
// The runner's tuning to its model and host (internal to pare): what
// RunnerOptions::hint chooses from one measurement of the model at batch 1 and
// batch 8. Split from the measuring so the choice is a pure function, tested
// without timing anything.

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/ivalue.h>

#include "pare/serve/runner.hpp"

namespace pare::detail {

/// Below this share of time saved per row by a batch of 8, queueing can't win
/// over running each request on its caller's thread.
constexpr double kBatchingPays = 0.3;

/// `options` with the hint's choices for every setting not given explicitly.
/// `batch_saving`: 1 - time(batch 8) / (8 x time(batch 1)); `cores`: the
/// host's hardware threads; `intra_op_threads`: LibTorch's threads per pass.
RunnerOptions tuned(RunnerOptions options, double batch_saving, unsigned cores, int intra_op_threads);

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
