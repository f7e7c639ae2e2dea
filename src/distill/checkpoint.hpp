#pragma once
// Distill's checkpoints (internal): the student's parameters and buffers, the
// optimizer's state and the epochs done, written atomically after each epoch
// and read back by a restarted run.

#include <torch/script.h>
#include <torch/optim.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pare::detail {

struct CheckpointState {
  int64_t epochs_done = 0;
  int64_t steps = 0;
  std::vector<double> epoch_loss;
};

/// Writes `path` atomically (a reader sees the previous checkpoint or this one).
void save_checkpoint(const std::string& path, const torch::jit::Module& student, torch::optim::Optimizer& optimizer,
                     const CheckpointState& state);

/// Restores the student and the optimizer from `path`; nullopt (nothing
/// changed) when there is no such file. pare::Error when the file is not a
/// checkpoint or holds another model (names and shapes are checked first).
std::optional<CheckpointState> load_checkpoint(const std::string& path, torch::jit::Module& student,
                                               torch::optim::Optimizer& optimizer);

}  // namespace pare::detail
