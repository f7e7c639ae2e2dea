#pragma once
// pare::distillation_loss and pare::Distill — knowledge distillation (Hinton et
// al., 2015): a student learns from a teacher's softened outputs. Distill is a
// pass that fine-tunes the pipeline's module against a teacher and keeps every
// pruning mask, so a pruned model recovers accuracy without losing sparsity.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pare/core/arg.hpp"
#include "pare/core/batches.hpp"
#include "pare/core/pipeline.hpp"
#include "pare/distill/distributed.hpp"
#include "pare/distill/match.hpp"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace pare {

class DistillLossOptions {
 public:
  /// Softmax temperature T > 0; higher T exposes more of the teacher's ranking of wrong classes.
  PARE_ARG(double, temperature) = 4.0;
  /// Weight of the distillation term in [0, 1]; 1 - alpha weighs cross-entropy on the targets.
  PARE_ARG(double, alpha) = 0.7;
};

/// alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (mean over the
/// batch) + (1 - alpha) * cross_entropy(student, targets).
///
/// Logits are N x C floating-point tensors of one shape and dtype; targets are
/// N class indices (int64), optional when alpha == 1. Computed with
/// log-softmax, so large logits do not overflow. Gradients flow to the student
/// only: the teacher's logits are detached. pare::Error on invalid options,
/// shapes or dtypes.
torch::Tensor distillation_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                const torch::Tensor& targets = {}, const DistillLossOptions& options = {});

/// (input, target) — one training batch; the target holds class indices.
using Batch = std::pair<torch::Tensor, torch::Tensor>;
/// Training batches: a list (reused every epoch, shuffled unless
/// shuffle(false)) or batches produced on demand for each epoch.
using TrainingData = BatchSource<Batch>;
/// Builds the optimizer over the student's trainable parameters.
using OptimizerFactory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(const std::vector<torch::Tensor>& parameters)>;
/// Called after every step with (step, steps, running loss); steps is -1 when
/// the data's length is unknown. Same shape as the examples' progress bar.
using DistillProgress = std::function<void(int64_t step, int64_t steps, double loss)>;

enum class OptimizerKind { SGD, Adam };
/// "sgd" or "adam": the names the CLI, Python and the report use.
std::string to_string(OptimizerKind kind);
/// The inverse of to_string; pare::Error naming the known optimizers otherwise.
OptimizerKind parse_optimizer_kind(const std::string& name);
/// Every optimizer name, in OptimizerKind order.
std::vector<std::string> optimizer_kind_names();

class DistillOptions {
 public:
  /// `teacher`: the trained model to learn from; run in eval mode without
  /// gradients (one in training mode is deep-copied for the run: yours keeps
  /// its mode). `data`: the training batches.
  DistillOptions(torch::jit::Module teacher, TrainingData data)
      : teacher_(std::move(teacher)), data_(std::move(data)) {}
  /// The trained model to learn from.
  PARE_ARG(torch::jit::Module, teacher);
  /// The training batches.
  PARE_ARG(TrainingData, data);
  /// Passes over the data.
  PARE_ARG(int64_t, epochs) = 1;
  /// Built-in optimizers: SGD (with momentum()) or Adam, at lr() and weight_decay().
  PARE_ARG(OptimizerKind, optimizer) = OptimizerKind::Adam;
  /// Any torch::optim optimizer; when set, it overrides optimizer().
  PARE_ARG(OptimizerFactory, optimizer_factory);
  /// Learning rate of the built-in optimizer (default 1e-3).
  PARE_ARG(double, lr) = 1e-3;
  /// SGD momentum in [0, 1) (default 0.9).
  PARE_ARG(double, momentum) = 0.9;
  /// L2 penalty of the built-in optimizer (default 0).
  PARE_ARG(double, weight_decay) = 0.0;
  /// The loss's softmax temperature (DistillLossOptions::temperature).
  PARE_ARG(double, temperature) = DistillLossOptions().temperature();
  /// The loss's distillation weight (DistillLossOptions::alpha).
  PARE_ARG(double, alpha) = DistillLossOptions().alpha();
  /// Intermediate outputs to distill besides the logits: (teacher submodule,
  /// student submodule) pairs, each an MSE or cosine term of its weight added
  /// to the loss. `.match({"layers.3", {"layers.5", "layers.2"}})`; for depths
  /// that differ, DistillMatch::layers maps them uniformly (docs/distill.md).
  PARE_ARG(std::vector<DistillMatch>, match);
  /// Batches on which to report top-1 accuracy before and after training.
  PARE_ARG(std::vector<Batch>, evaluate_on);
  /// Shuffle a listed data set's batches every epoch (default on; streamed data comes in its own order).
  PARE_ARG(bool, shuffle) = true;
  /// Seed of the shuffle.
  PARE_ARG(uint64_t, seed) = 0;
  /// Called after every optimizer step.
  PARE_ARG(DistillProgress, progress);
  /// Where training runs: cpu or cuda[:index] (unset: where the student's parameters are). The student is moved
  /// there for training and back to its own device afterwards; the teacher runs
  /// there as a copy; masks and batches follow (listed batches are copied once).
  PARE_ARG(std::optional<c10::Device>, device);
  /// Train as one rank of a data-parallel job (docs/scaling.md): each rank
  /// trains on every world_size()-th batch, gradients are averaged across ranks
  /// before each step (the global batch is world_size() batches), parameters
  /// start as rank 0's, and every rank ends with the same model.
  PARE_ARG(std::optional<DistributedOptions>, distributed);
  /// Save the student, the optimizer's state and the epochs done to this file
  /// after every epoch (atomically; rank 0 writes it); a run that finds it
  /// resumes after its last epoch. Every rank must read the same file.
  PARE_ARG(std::string, checkpoint);

 public:
  /// temperature() and alpha() as the loss's options.
  DistillLossOptions loss_options() const { return DistillLossOptions().temperature(temperature_).alpha(alpha_); }
  [[deprecated("use optimizer_factory(factory)")]] DistillOptions& optimizer(OptimizerFactory value) {
    return optimizer_factory(std::move(value));
  }
  [[deprecated("use optimizer()")]] OptimizerKind optimizer_kind() const { return optimizer_; }
  [[deprecated("use temperature() and alpha(), or loss_options()")]] DistillLossOptions loss() const {
    return loss_options();
  }
  [[deprecated("use evaluate_on()")]] const std::vector<Batch>& evaluation_batches() const { return evaluate_on_; }
};

/// What a distillation run did.
struct DistillResult {
  std::vector<double> epoch_loss;          ///< mean loss per epoch (weighted by batch size)
  int64_t steps = 0;                       ///< optimizer steps taken
  std::optional<double> accuracy_before;  ///< top-1 % on evaluate_on() batches, if given
  std::optional<double> accuracy_after;
  double samples_per_second = 0;           ///< training samples (all ranks') over the training loop's wall time
  /// Per match() pair, its mean unweighted loss per epoch (this rank's batches in a distributed run).
  std::vector<std::vector<double>> match_loss;
  std::string device;                      ///< where training ran
  int64_t rank = 0, world_size = 1;        ///< this process in a distributed run
};
using DistillSummary [[deprecated("renamed DistillResult")]] = DistillResult;

/// Trains `student` in place against options.teacher(), for users with their
/// own pipeline or none. Masked weights (false in `masks`) are zeroed after
/// every optimizer step, so they stay exactly zero. The student's parameters
/// get requires_grad only while training; it is left in eval mode.
/// pare::Error on invalid options, on a loss that turns NaN or infinite (the
/// student is then left as it was at that step), on malformed batches and on
/// batches the student or teacher rejects (naming the batch's shape and
/// LibTorch's message); no other exception leaves it.
DistillResult distill(torch::jit::Module& student, const DistillOptions& options, const Masks& masks = {});

/// Zeroes every weight whose mask is false (masks by full parameter name, as
/// L1Prune leaves them). pare::Error on an unknown name or a shape mismatch.
void apply_masks(torch::jit::Module& module, const Masks& masks);

/// Top-1 accuracy in percent of `module` (run in eval mode, no gradients) on
/// `batches`; a module in training mode is copied, so its mode never changes.
double top1_accuracy(torch::jit::Module& module, const std::vector<Batch>& batches);

/// The pass: distill() on the pipeline's module with the masks earlier passes
/// left. Report: series "loss" per epoch; metrics epochs, steps, temperature,
/// alpha, lr, samples_per_second, and accuracy_before/accuracy_after when
/// evaluate_on() is set; per match() pair i, metric match_i_loss (its last
/// epoch's mean) and label match_i ("teacher -> student (loss, weight)");
/// label device.
class Distill : public Pass {
 public:
  explicit Distill(DistillOptions options);
  /// Short for Distill(DistillOptions(teacher, data)).
  Distill(torch::jit::Module teacher, TrainingData data) : Distill(DistillOptions(std::move(teacher), std::move(data))) {}
  std::string name() const override { return "distill"; }
  void run(Result& state, PassReport& entry) const override;
  const DistillOptions& options() const { return options_; }

 private:
  DistillOptions options_;
};

}  // namespace pare
