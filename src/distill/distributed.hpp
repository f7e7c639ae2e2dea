#pragma once
// The collectives a data-parallel Distill run needs, over c10d (internal).
// Group: one process's membership in the job (rendezvous, Gloo or NCCL, a
// heartbeat in the store so that a failed collective can name the lost rank).
// GradientSync: the student's gradients averaged across ranks in buckets.

#include <torch/script.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pare/distill/distributed.hpp"

namespace pare::detail {

class Group {
 public:
  virtual ~Group() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  /// Sums `tensors` in place across ranks (launched together, waited for together).
  /// `what` names the collective in errors, e.g. "all-reduce of gradients at epoch 1, step 3".
  virtual void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what) = 0;
  /// Copies rank 0's `tensors` into every rank's, in place.
  virtual void broadcast(std::vector<torch::Tensor>& tensors, const std::string& what) = 0;
  /// Waits for every rank; the last collective of a run (rank 0 keeps the store up until then).
  virtual void finish() = 0;
};

/// Joins the job `options` describes, on `device` (cpu: Gloo; cuda: NCCL unless told otherwise).
/// pare::Error naming the ranks that did not arrive within the timeout.
std::unique_ptr<Group> join_group(const DistributedOptions& options, const c10::Device& device);

/// The student's gradients averaged across the group: flattened into buckets
/// of about bucket_mb each, every bucket's all-reduce in flight at once. The
/// last bucket carries three more numbers per rank: 1 if the rank trained on a
/// batch this step, its loss sum and its sample count.
class GradientSync {
 public:
  GradientSync(Group& group, const std::vector<torch::Tensor>& parameters, double bucket_mb);
  struct Step {
    int64_t contributors = 0;  ///< ranks that had a batch this step
    double loss_sum = 0;       ///< summed over ranks (loss x samples)
    int64_t samples = 0;       ///< summed over ranks
  };
  /// Averages the gradients over the ranks that had a batch (a rank without
  /// one contributes nothing); gradients are defined on every rank afterwards.
  Step average(bool had_batch, double loss_sum, int64_t samples, const std::string& what);

 private:
  Group& group_;
  std::vector<torch::Tensor> parameters_;
  std::vector<std::vector<size_t>> buckets_;  // parameter indices per bucket
  std::vector<torch::Tensor> flat_;           // one flat buffer per bucket
};

}  // namespace pare::detail
