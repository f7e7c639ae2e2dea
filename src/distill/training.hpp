#pragma once
// What distill.cpp (the loss, masks, one step) shares with train.cpp (the
// training loop, one process or many). Internal.

#include <torch/script.h>
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "pare/distill/distill.hpp"

namespace pare::detail {

/// A parameter and where its mask says "pruned".
struct MaskedParameter {
  torch::Tensor parameter, pruned;
};

std::vector<MaskedParameter> resolve_masks(const torch::jit::Module& module, const Masks& masks);
/// Sets every pruned weight to zero.
void zero_pruned(const std::vector<MaskedParameter>& masked);
/// pare::Error on invalid options.
void check_options(const DistillOptions& options);
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const DistillOptions& options,
                                                        const std::vector<torch::Tensor>& parameters);
/// Forward, loss (checked finite before any update), backward, pruned gradients zeroed; returns the batch loss.
double backward_step(torch::jit::Module& student, torch::jit::Module& teacher, torch::optim::Optimizer& optimizer,
                     const Batch& batch, const DistillLossOptions& loss_options,
                     const std::vector<MaskedParameter>& masked, int64_t epoch, int64_t step);
/// The optimizer's step; pruned weights stay exactly zero whatever it does.
void update_step(torch::optim::Optimizer& optimizer, const std::vector<MaskedParameter>& masked);

/// The training loop of distill().
DistillResult train_student(torch::jit::Module& student, const DistillOptions& options, const Masks& masks);

}  // namespace pare::detail
