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

/// Rewrites what the C++ frontend's layers leave in a trace into the operators
/// Python's torch.nn layers script to, which pare's passes (int8 quantization,
/// BatchNorm folding) recognise: aten::_convolution -> aten::conv1d/2d/3d, and
/// torch::nn::functional::linear's addmm(b, x, w.t()) / matmul(x, w.t()) [+= b]
/// -> aten::linear(x, w, b); aten::view -> aten::reshape (the same wherever view works).
void canonicalize_layers(std::shared_ptr<torch::jit::Graph>& graph);

}  // namespace pare::detail
