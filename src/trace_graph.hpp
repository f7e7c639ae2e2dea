#pragma once
// Private to pare::trace: comparing two traces of one forward and making the
// batch size they baked in dynamic.

#include <cstdint>
#include <memory>

#include <torch/csrc/jit/ir/ir.h>

namespace pare::detail {

/// The batch sizes of the two input sets a forward was traced with.
struct TracedBatches {
  int64_t example = 0;
  int64_t check = 0;
};

/// Walks `example` and `check` (traces of the same forward on the example and
/// the check inputs) in step. They must run the same operations on the same
/// values; a constant may differ only where it is the batch size (example vs
/// check), and then, when `dynamic_batch`, `example` reads it from
/// `aten::size(first tensor input, 0)` instead. pare::Error names the first
/// operation that differs and why a trace cannot represent it.
void generalize_batch(torch::jit::Graph& example, torch::jit::Graph& check, TracedBatches batches,
                      bool dynamic_batch);

}  // namespace pare::detail
