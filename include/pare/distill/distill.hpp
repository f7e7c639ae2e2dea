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

#include "pare/core/batches.hpp"
#include "pare/core/pipeline.hpp"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace pare {

class DistillLossOptions {
 public:
  /// Softmax temperature T > 0; higher T exposes more of the teacher's ranking of wrong classes.
  DistillLossOptions& temperature(double value) { temperature_ = value; return *this; }
  /// Weight of the distillation term in [0, 1]; 1 - alpha weighs cross-entropy on the targets.
  DistillLossOptions& alpha(double value) { alpha_ = value; return *this; }

  double temperature() const { return temperature_; }
  double alpha() const { return alpha_; }

 private:
  double temperature_ = 4.0;
  double alpha_ = 0.7;
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

class DistillOptions {
 public:
  /// `teacher`: the trained model to learn from; run in eval mode without
  /// gradients (one in training mode is deep-copied for the run: yours keeps
  /// its mode). `data`: the training batches.
  DistillOptions(torch::jit::Module teacher, TrainingData data)
      : teacher_(std::move(teacher)), data_(std::move(data)) {}
  /// Passes over the data.
  DistillOptions& epochs(int64_t value) { epochs_ = value; return *this; }
  /// Built-in optimizers: SGD (with momentum()) or Adam, at lr() and weight_decay().
  DistillOptions& optimizer(OptimizerKind value) { kind_ = value; factory_ = nullptr; return *this; }
  /// Any torch::optim optimizer; overrides the built-in choice.
  DistillOptions& optimizer(OptimizerFactory value) { factory_ = std::move(value); return *this; }
  /// Learning rate of the built-in optimizer (default 1e-3).
  DistillOptions& lr(double value) { lr_ = value; return *this; }
  /// SGD momentum in [0, 1) (default 0.9).
  DistillOptions& momentum(double value) { momentum_ = value; return *this; }
  /// L2 penalty of the built-in optimizer (default 0).
  DistillOptions& weight_decay(double value) { weight_decay_ = value; return *this; }
  /// The loss's softmax temperature (DistillLossOptions::temperature).
  DistillOptions& temperature(double value) { loss_.temperature(value); return *this; }
  /// The loss's distillation weight (DistillLossOptions::alpha).
  DistillOptions& alpha(double value) { loss_.alpha(value); return *this; }
  /// Batches on which to report top-1 accuracy before and after training.
  DistillOptions& evaluate_on(std::vector<Batch> batches) { eval_ = std::move(batches); return *this; }
  /// Shuffle a listed data set's batches every epoch (default on; streamed data comes in its own order).
  DistillOptions& shuffle(bool value) { shuffle_ = value; return *this; }
  /// Seed of the shuffle.
  DistillOptions& seed(uint64_t value) { seed_ = value; return *this; }
  /// Called after every optimizer step.
  DistillOptions& progress(DistillProgress value) { progress_ = std::move(value); return *this; }
  /// Where training runs: cpu or cuda[:index] (unset: where the student's parameters are). The student is moved
  /// there for training and back to its own device afterwards; the teacher runs
  /// there as a copy; masks and batches follow (listed batches are copied once).
  DistillOptions& device(c10::Device value) { device_ = value; return *this; }

  const torch::jit::Module& teacher() const { return teacher_; }
  const TrainingData& data() const { return data_; }
  int64_t epochs() const { return epochs_; }
  OptimizerKind optimizer_kind() const { return kind_; }
  const OptimizerFactory& optimizer_factory() const { return factory_; }
  double lr() const { return lr_; }
  double momentum() const { return momentum_; }
  double weight_decay() const { return weight_decay_; }
  const DistillLossOptions& loss() const { return loss_; }
  const std::vector<Batch>& evaluation_batches() const { return eval_; }
  bool shuffle() const { return shuffle_; }
  uint64_t seed() const { return seed_; }
  const DistillProgress& progress() const { return progress_; }
  const std::optional<c10::Device>& device() const { return device_; }

 private:
  torch::jit::Module teacher_;
  TrainingData data_;
  int64_t epochs_ = 1;
  OptimizerKind kind_ = OptimizerKind::Adam;
  OptimizerFactory factory_;
  double lr_ = 1e-3, momentum_ = 0.9, weight_decay_ = 0.0;
  DistillLossOptions loss_;
  std::vector<Batch> eval_;
  bool shuffle_ = true;
  uint64_t seed_ = 0;
  DistillProgress progress_;
  std::optional<c10::Device> device_;
};

/// What a distillation run did.
struct DistillSummary {
  std::vector<double> epoch_loss;          ///< mean loss per epoch (weighted by batch size)
  int64_t steps = 0;                       ///< optimizer steps taken
  std::optional<double> accuracy_before;  ///< top-1 % on evaluate_on() batches, if given
  std::optional<double> accuracy_after;
  double samples_per_second = 0;           ///< training samples over the training loop's wall time
  std::string device;                      ///< where training ran
};

/// Trains `student` in place against options.teacher(), for users with their
/// own pipeline or none. Masked weights (false in `masks`) are zeroed after
/// every optimizer step, so they stay exactly zero. The student's parameters
/// get requires_grad only while training; it is left in eval mode.
/// pare::Error on invalid options, on a loss that turns NaN or infinite (the
/// student is then left as it was at that step), on malformed batches and on
/// batches the student or teacher rejects (naming the batch's shape and
/// LibTorch's message); no other exception leaves it.
DistillSummary distill(torch::jit::Module& student, const DistillOptions& options, const Masks& masks = {});

/// Zeroes every weight whose mask is false (masks by full parameter name, as
/// L1Prune leaves them). pare::Error on an unknown name or a shape mismatch.
void apply_masks(torch::jit::Module& module, const Masks& masks);

/// Top-1 accuracy in percent of `module` (run in eval mode, no gradients) on
/// `batches`; a module in training mode is copied, so its mode never changes.
double top1_accuracy(torch::jit::Module& module, const std::vector<Batch>& batches);

/// The pass: distill() on the pipeline's module with the masks earlier passes
/// left. Report: series "loss" per epoch; metrics epochs, steps, temperature,
/// alpha, lr, samples_per_second, and accuracy_before/accuracy_after when
/// evaluate_on() is set; label device.
class Distill : public Pass {
 public:
  explicit Distill(DistillOptions options);
  std::string name() const override { return "distill"; }
  void run(Result& state, PassReport& entry) const override;
  const DistillOptions& options() const { return options_; }

 private:
  DistillOptions options_;
};

}  // namespace pare
