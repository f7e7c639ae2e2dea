#pragma once
// What distill.cpp (the loss, masks, one step) shares with train.cpp (the
// training loop, one process or many). Internal.

#include <torch/script.h>
#include <torch/optim.h>

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
/// The two models of a step. With DistillOptions::match(), each also runs as
/// a SubmoduleOutputs that returns the matched submodules' outputs.
struct StepModels {
  torch::jit::Module& student;
  torch::jit::Module& teacher;
  std::shared_ptr<const SubmoduleOutputs> student_outputs, teacher_outputs;  // null without match()
};
/// StepModels for `options` (the submodule paths checked, pare::Error naming a missing one).
StepModels step_models(torch::jit::Module& student, torch::jit::Module& teacher, const DistillOptions& options);

/// A batch's loss and, per match() pair, its unweighted term.
struct StepLoss {
  double total = 0;
  std::vector<double> matched;
};
/// Forward, loss (checked finite before any update), backward, pruned gradients zeroed.
StepLoss backward_step(const StepModels& models, torch::optim::Optimizer& optimizer, const Batch& batch,
                       const DistillOptions& options, const std::vector<MaskedParameter>& masked, int64_t epoch,
                       int64_t step);
/// The optimizer's step; pruned weights stay exactly zero whatever it does.
void update_step(torch::optim::Optimizer& optimizer, const std::vector<MaskedParameter>& masked);

/// The training loop of distill().
DistillResult train_student(torch::jit::Module& student, const DistillOptions& options, const Masks& masks);

}  // namespace pare::detail
