#pragma once
// pare::DistillMatch — distillation on intermediate outputs (hidden states,
// attention maps) besides logits, as DistilBERT, TinyBERT and MiniLM do: a
// student submodule's output is pulled towards a teacher submodule's output by
// an MSE or cosine loss. pare::submodule_outputs reads those outputs from any
// TorchScript module, scripted or traced, without changing it.

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

#include "pare/core/arg.hpp"

namespace pare {

/// How a student output is compared with its teacher output.
enum class MatchLoss {
  MSE,     ///< mean squared error over every element
  Cosine,  ///< 1 - cosine similarity along the last dimension, averaged over the rest
};
/// "mse" or "cosine": the names Python and the report use.
std::string to_string(MatchLoss kind);
/// The inverse of to_string; pare::Error naming the known losses otherwise.
MatchLoss parse_match_loss(const std::string& name);
/// Every loss name, in MatchLoss order.
std::vector<std::string> match_loss_names();

/// One (teacher submodule, student submodule) pair whose outputs distillation
/// pulls together. Paths are dotted submodule names as named_modules() gives
/// them ("layers.3", "encoder.layers.encoder_layer_5", "blocks.2.attn.softmax").
/// Both outputs must be tensors of one shape: widths must agree (see docs/distill.md).
class DistillMatch {
 public:
  /// The same submodule name in teacher and student.
  DistillMatch(std::string both) : teacher_(both), student_(std::move(both)) {}  // NOLINT: "layers.3" converts
  DistillMatch(const char* both) : DistillMatch(std::string(both)) {}            // NOLINT: so does a literal
  DistillMatch(std::string teacher, std::string student) : teacher_(std::move(teacher)), student_(std::move(student)) {}
  /// The teacher's submodule.
  PARE_ARG(std::string, teacher);
  /// The student's submodule.
  PARE_ARG(std::string, student);
  /// MSE (default) or cosine.
  PARE_ARG(MatchLoss, loss) = MatchLoss::MSE;
  /// The term's weight in the total loss, >= 0 (the logits term has weight 1).
  PARE_ARG(double, weight) = 1.0;

 public:
  /// Maps a student of `student_layers` blocks onto a teacher of
  /// `teacher_layers` (TinyBERT's uniform mapping): student block j learns
  /// from teacher block (j + 1) * teacher_layers / student_layers - 1, so the
  /// last blocks match. Paths are `prefix + "." + index` ("layers.5").
  /// pare::Error unless 1 <= student_layers <= teacher_layers.
  static std::vector<DistillMatch> layers(const std::string& teacher_prefix, int64_t teacher_layers,
                                          const std::string& student_prefix, int64_t student_layers,
                                          MatchLoss loss = MatchLoss::MSE, double weight = 1.0);
};

/// The loss between a student output and a teacher output of the same shape
/// (the teacher's is detached). pare::Error on undefined tensors or shapes that differ.
torch::Tensor match_loss(const torch::Tensor& student, const torch::Tensor& teacher, MatchLoss kind);

/// Runs `module`'s forward on `inputs` once and returns the outputs of the
/// submodules at `paths` (in that order), then the forward's own output.
/// The module is not changed: a copy of its forward graph, with the calls on
/// the path inlined, returns the submodules' outputs as extra outputs, and
/// runs on the module's own parameters (gradients flow). pare::Error when a
/// path names no submodule (listing those that exist), when forward does not
/// call it exactly once outside loops and branches, or when its output is not a tensor.
class SubmoduleOutputs {
 public:
  SubmoduleOutputs(const torch::jit::Module& module, const std::vector<std::string>& paths,
                   const std::string& who = "submodule_outputs");
  /// (captured tensors in the order of `paths`, forward's output).
  std::pair<std::vector<torch::Tensor>, c10::IValue> run(std::vector<c10::IValue> inputs) const;
  const std::vector<std::string>& paths() const { return paths_; }

 private:
  torch::jit::Module module_;
  std::vector<std::string> paths_;
  std::string who_;
  std::shared_ptr<torch::jit::Function> function_;
};

/// Short for SubmoduleOutputs(module, paths).run(inputs).first.
std::vector<torch::Tensor> submodule_outputs(const torch::jit::Module& module, std::vector<c10::IValue> inputs,
                                             const std::vector<std::string>& paths);

}  // namespace pare
