#include "pare/distill/distill.hpp"

#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

#include "core/enum_names.hpp"
#include "core/eval_module.hpp"
#include "core/torch_errors.hpp"
#include "distill/training.hpp"

namespace pare {
namespace {

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

std::string dtype_of(const torch::Tensor& t) { return c10::toString(t.scalar_type()); }

void check_loss_options(const DistillLossOptions& options, const std::string& who) {
  require(std::isfinite(options.temperature()) && options.temperature() > 0,
          who + ": temperature " + std::to_string(options.temperature()) + " is invalid; expected a finite T > 0 such as 4");
  require(options.alpha() >= 0 && options.alpha() <= 1,
          who + ": alpha " + std::to_string(options.alpha()) + " is outside [0, 1]; expected e.g. 0.7");
}

void check_logits(const torch::Tensor& student, const torch::Tensor& teacher) {
  const std::string who = "distillation_loss";
  require(student.defined() && teacher.defined(), who + ": student and teacher logits must be defined tensors");
  require(student.is_floating_point(),
          who + ": student logits have dtype " + dtype_of(student) + "; expected floating-point logits");
  require(student.dim() == 2 && student.size(0) > 0,
          who + ": student logits have shape " + shape_of(student) + "; expected N x C with N > 0");
  require(teacher.sizes() == student.sizes(), who + ": teacher logits have shape " + shape_of(teacher) +
                                                   " but student logits " + shape_of(student) + "; expected equal shapes");
  require(teacher.scalar_type() == student.scalar_type(), who + ": teacher logits have dtype " + dtype_of(teacher) +
                                                              " but student logits " + dtype_of(student) +
                                                              "; expected one dtype");
}

void check_targets(const torch::Tensor& targets, const torch::Tensor& student) {
  const std::string who = "distillation_loss";
  require(targets.scalar_type() == torch::kLong,
          who + ": targets have dtype " + dtype_of(targets) + "; expected int64 class indices");
  require(targets.dim() == 1 && targets.size(0) == student.size(0),
          who + ": targets have shape " + shape_of(targets) + "; expected [" + std::to_string(student.size(0)) +
              "], one class index per row of the logits");
  const auto low = targets.min().item<int64_t>(), high = targets.max().item<int64_t>();
  require(low >= 0 && high < student.size(1), who + ": targets span [" + std::to_string(low) + ", " +
                                                  std::to_string(high) + "]; expected class indices in [0, " +
                                                  std::to_string(student.size(1)) + ")");
}

bool has_forward(const torch::jit::Module& module) {
  try {
    return module.find_method("forward").has_value();
  } catch (const c10::Error&) {  // a default-constructed Module holds no object
    return false;
  }
}

void check_device(const std::optional<c10::Device>& requested) {
  if (!requested) return;
  const auto device = *requested;
  require(device.is_cpu() || device.is_cuda(),
          "Distill: device " + device.str() + " is not served; expected cpu or cuda[:index]");
  require(device.is_cpu() || torch::cuda::is_available(),
          "Distill: device " + device.str() + " requested but this process sees no CUDA device "
          "(CPU-only LibTorch, or no GPU visible)", Error::Kind::Runtime);
  require(device.is_cpu() || device.index() < static_cast<int64_t>(torch::cuda::device_count()),
          "Distill: device " + device.str() + " does not exist; this process sees " +
              std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
}

// (matched submodules' outputs, logits) of `module` on `input`; `outputs`
// null runs plain forward. `who` names the caller and the model, e.g. "Distill: the teacher".
std::pair<std::vector<torch::Tensor>, torch::Tensor> outputs_of(torch::jit::Module& module,
                                                                const SubmoduleOutputs* outputs,
                                                                const torch::Tensor& input, const std::string& who) {
  require(input.defined(), who + " got a batch with an undefined input tensor");
  std::pair<std::vector<torch::Tensor>, c10::IValue> result;
  try {
    if (outputs) result = outputs->run({input});
    else result.second = module.forward({input});
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(who + " failed on a batch of shape " + shape_of(input) + " (" + dtype_of(input) +
                    "): " + detail::torch_message(e) + "; expected batches the model accepts",
                Error::Kind::InvalidArgument);
  }
  require(result.second.isTensor(), who + " returned " + result.second.tagKind() + "; expected a tensor of logits");
  return {std::move(result.first), result.second.toTensor()};
}

torch::Tensor logits_of(torch::jit::Module& module, const torch::Tensor& input, const std::string& who) {
  return outputs_of(module, nullptr, input, who).second;
}

// One match() pair's unweighted term; shapes that differ name both outputs.
torch::Tensor matched_term(const DistillMatch& match, const torch::Tensor& student, const torch::Tensor& teacher) {
  require(student.sizes() == teacher.sizes(),
          "Distill: match '" + match.teacher() + "' -> '" + match.student() + "': the teacher's output is " +
              shape_of(teacher) + " but the student's " + shape_of(student) +
              "; expected one shape. A pruned layer is narrower than the teacher's: match outputs whose width "
              "pruning keeps (block outputs, the residual stream), not FFN intermediates");
  require(student.scalar_type() == teacher.scalar_type() && student.is_floating_point(),
          "Distill: match '" + match.teacher() + "' -> '" + match.student() + "': outputs of dtypes " +
              dtype_of(teacher) + " (teacher) and " + dtype_of(student) +
              " (student); expected one floating-point dtype");
  return match_loss(student, teacher, match.loss());
}

void check_match(const DistillOptions& o) {
  std::vector<std::string> teacher_paths;
  for (const auto& m : o.match()) {
    require(std::isfinite(m.weight()) && m.weight() >= 0, "Distill: match '" + m.teacher() + "' -> '" + m.student() +
                                                              "' has weight " + std::to_string(m.weight()) +
                                                              "; expected a finite weight >= 0");
    teacher_paths.push_back(m.teacher());
  }
  if (!teacher_paths.empty()) SubmoduleOutputs(o.teacher(), teacher_paths, "Distill: the teacher");
}

}  // namespace

namespace detail {

std::vector<MaskedParameter> resolve_masks(const torch::jit::Module& module, const Masks& masks) {
  std::map<std::string, torch::Tensor> parameters;
  for (const auto& p : module.named_parameters()) parameters[p.name] = p.value;
  std::vector<MaskedParameter> out;
  for (const auto& [name, mask] : masks) {
    const auto found = parameters.find(name);
    require(found != parameters.end(), "apply_masks: the module has no parameter '" + name +
                                           "'; masks must be keyed by full parameter names such as 'fc1.weight'");
    require(mask.defined() && mask.scalar_type() == torch::kBool && mask.sizes() == found->second.sizes(),
            "apply_masks: mask for '" + name + "' must be a bool tensor of shape " + shape_of(found->second));
    out.push_back({found->second, mask.logical_not()});
  }
  return out;
}

void zero_pruned(const std::vector<MaskedParameter>& masked) {
  torch::NoGradGuard no_grad;
  for (const auto& m : masked) m.parameter.masked_fill_(m.pruned, 0.0);
}

void check_options(const DistillOptions& o) {
  require(has_forward(o.teacher()), "Distill: the teacher has no forward method; expected a trained torch::jit::Module");
  require(!o.data().in_memory() || !o.data().batches().empty(),
          "Distill: no training batches; expected at least one (input, target) batch in DistillOptions(teacher, data)");
  require(o.epochs() >= 1, "Distill: epochs " + std::to_string(o.epochs()) + " is invalid; expected at least 1");
  require(std::isfinite(o.lr()) && o.lr() > 0, "Distill: lr " + std::to_string(o.lr()) + " is invalid; expected lr > 0");
  require(o.momentum() >= 0 && o.momentum() < 1,
          "Distill: momentum " + std::to_string(o.momentum()) + " is outside [0, 1)");
  require(o.weight_decay() >= 0, "Distill: weight_decay " + std::to_string(o.weight_decay()) + " is negative");
  check_loss_options(o.loss_options(), "Distill");
  check_device(o.device());
  check_match(o);
  if (const auto& d = o.distributed()) {
    const std::string who = "Distill: DistributedOptions ";
    require(d->world_size() >= 1 && d->rank() >= 0 && d->rank() < d->world_size(),
            who + "rank " + std::to_string(d->rank()) + " of world_size " + std::to_string(d->world_size()) +
                " is invalid; expected world_size >= 1 and 0 <= rank < world_size");
    require(d->master_port() >= 1 && d->master_port() <= 65535,
            who + "master_port " + std::to_string(d->master_port()) + " is outside [1, 65535]");
    require(d->timeout().count() > 0, who + "timeout must be positive");
    require(std::isfinite(d->bucket_mb()) && d->bucket_mb() > 0, who + "bucket_mb must be positive");
  }
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const DistillOptions& o,
                                                         const std::vector<torch::Tensor>& parameters) {
  if (o.optimizer_factory()) {
    auto optimizer = o.optimizer_factory()(parameters);
    require(optimizer != nullptr, "Distill: the optimizer factory returned null; expected an optimizer");
    return optimizer;
  }
  if (o.optimizer() == OptimizerKind::SGD)
    return std::make_unique<torch::optim::SGD>(
        parameters, torch::optim::SGDOptions(o.lr()).momentum(o.momentum()).weight_decay(o.weight_decay()));
  return std::make_unique<torch::optim::Adam>(parameters,
                                              torch::optim::AdamOptions(o.lr()).weight_decay(o.weight_decay()));
}

StepModels step_models(torch::jit::Module& student, torch::jit::Module& teacher, const DistillOptions& options) {
  StepModels models{student, teacher, nullptr, nullptr};
  if (options.match().empty()) return models;
  std::vector<std::string> student_paths, teacher_paths;
  for (const auto& m : options.match()) {
    teacher_paths.push_back(m.teacher());
    student_paths.push_back(m.student());
  }
  models.teacher_outputs = std::make_shared<const SubmoduleOutputs>(teacher, teacher_paths, "Distill: the teacher");
  models.student_outputs = std::make_shared<const SubmoduleOutputs>(student, student_paths, "Distill: the student");
  return models;
}

// The loss is checked before any update, so a NaN never reaches the weights.
StepLoss backward_step(const StepModels& models, torch::optim::Optimizer& optimizer, const Batch& batch,
                       const DistillOptions& options, const std::vector<MaskedParameter>& masked, int64_t epoch,
                       int64_t step) {
  const auto loss_options = options.loss_options();
  const auto [student_matched, student_logits] =
      outputs_of(models.student, models.student_outputs.get(), batch.first, "Distill: the student");
  std::pair<std::vector<torch::Tensor>, torch::Tensor> teacher;
  if (loss_options.alpha() > 0 || models.teacher_outputs) {
    torch::NoGradGuard no_grad;
    teacher = outputs_of(models.teacher, models.teacher_outputs.get(), batch.first, "Distill: the teacher");
  }
  // alpha 0 is plain cross-entropy on the logits: the teacher's are not needed
  const auto teacher_logits = loss_options.alpha() > 0 ? teacher.second : student_logits.detach();
  auto loss = distillation_loss(student_logits, teacher_logits, batch.second, loss_options);
  StepLoss result;
  for (size_t i = 0; i < student_matched.size(); ++i) {
    const auto& match = options.match()[i];
    const auto term = matched_term(match, student_matched[i], teacher.first[i]);
    result.matched.push_back(term.item<double>());
    loss = loss + term * match.weight();
  }
  result.total = loss.item<double>();
  require(std::isfinite(result.total),
          "Distill: the loss became " + std::to_string(result.total) + " at epoch " + std::to_string(epoch + 1) +
              ", step " + std::to_string(step + 1) + "; lower the learning rate or check the data",
          Error::Kind::Runtime);
  optimizer.zero_grad();
  loss.backward();
  for (const auto& m : masked)  // pruned weights get no update, nor optimizer state
    if (m.parameter.grad().defined()) m.parameter.mutable_grad().masked_fill_(m.pruned, 0.0);
  return result;
}

void update_step(torch::optim::Optimizer& optimizer, const std::vector<MaskedParameter>& masked) {
  optimizer.step();
  zero_pruned(masked);  // and stay exactly zero whatever the optimizer does (weight decay, momentum)
}

}  // namespace detail

torch::Tensor distillation_loss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                const torch::Tensor& targets, const DistillLossOptions& options) {
  check_loss_options(options, "distillation_loss");
  check_logits(student_logits, teacher_logits);
  const double alpha = options.alpha(), temperature = options.temperature();
  require(alpha == 1.0 || targets.defined(),
          "distillation_loss: targets are required when alpha < 1 (alpha = " + std::to_string(alpha) +
              "); pass class indices, or alpha = 1 for pure distillation");
  if (targets.defined()) check_targets(targets, student_logits);

  torch::Tensor loss;
  if (alpha > 0) {
    const auto student = torch::log_softmax(student_logits / temperature, 1);
    const auto teacher = torch::log_softmax(teacher_logits.detach() / temperature, 1);
    // KL(teacher || student) summed, then divided by N: PyTorch's "batchmean".
    const auto kl = torch::kl_div(student, teacher, at::Reduction::Sum, /*log_target=*/true) /
                    double(student_logits.size(0));
    loss = kl * (alpha * temperature * temperature);  // T^2 keeps gradient scale independent of T
  }
  if (alpha < 1) {
    const auto ce = torch::nn::functional::cross_entropy(student_logits, targets) * (1.0 - alpha);
    loss = loss.defined() ? loss + ce : ce;
  }
  return loss;
}

void apply_masks(torch::jit::Module& module, const Masks& masks) {
  detail::zero_pruned(detail::resolve_masks(module, masks));
}

double top1_accuracy(torch::jit::Module& module, const std::vector<Batch>& batches) {
  require(!batches.empty(), "top1_accuracy: no batches; expected at least one (input, target) batch");
  torch::NoGradGuard no_grad;
  auto model = detail::eval_module(module);  // the caller's module keeps its mode
  int64_t correct = 0, total = 0;
  for (const auto& [input, target] : batches) {
    require(target.defined() && target.scalar_type() == torch::kLong && target.dim() == 1,
            "top1_accuracy: targets must be 1-D int64 class indices");
    const auto logits = logits_of(model, input, "top1_accuracy: the model");
    require(logits.dim() == 2 && logits.size(0) == target.size(0),
            "top1_accuracy: logits of shape " + shape_of(logits) + " do not match targets of shape " + shape_of(target));
    correct += logits.argmax(1).eq(target).sum().item<int64_t>();
    total += target.size(0);
  }
  return total == 0 ? 0.0 : 100.0 * double(correct) / double(total);
}

DistillResult distill(torch::jit::Module& student, const DistillOptions& options, const Masks& masks) {
  try {  // LibTorch's errors only: the user's stream, optimizer factory and progress callback throw through
    return detail::train_student(student, options, masks);
  } catch (const c10::Error& e) {
    throw Error("Distill: " + detail::torch_message(e), Error::Kind::Runtime);
  }
}

Distill::Distill(DistillOptions options) : options_(std::move(options)) { detail::check_options(options_); }

void Distill::run(Result& state, PassReport& entry) const {
  const auto summary = distill(state.module, options_, state.masks);
  entry.series = summary.epoch_loss;
  entry.series_name = "loss";
  entry.metrics["epochs"] = double(options_.epochs());
  entry.metrics["steps"] = double(summary.steps);
  entry.metrics["temperature"] = options_.temperature();
  entry.metrics["alpha"] = options_.alpha();
  if (!options_.optimizer_factory()) entry.metrics["lr"] = options_.lr();
  entry.labels["optimizer"] = options_.optimizer_factory() ? "custom" : to_string(options_.optimizer());
  if (summary.accuracy_before) entry.metrics["accuracy_before"] = *summary.accuracy_before;
  if (summary.accuracy_after) entry.metrics["accuracy_after"] = *summary.accuracy_after;
  entry.metrics["samples_per_second"] = summary.samples_per_second;
  for (size_t i = 0; i < options_.match().size(); ++i) {
    const auto& m = options_.match()[i];
    entry.labels["match_" + std::to_string(i)] =
        m.teacher() + " -> " + m.student() + " (" + to_string(m.loss()) + ", " + std::to_string(m.weight()) + ")";
    if (i < summary.match_loss.size() && !summary.match_loss[i].empty())
      entry.metrics["match_" + std::to_string(i) + "_loss"] = summary.match_loss[i].back();
  }
  entry.labels["device"] = summary.device;
  if (summary.world_size > 1) entry.metrics["world_size"] = double(summary.world_size);
}

namespace {
constexpr std::pair<OptimizerKind, const char*> kOptimizerNames[] = {{OptimizerKind::SGD, "sgd"},
                                                                     {OptimizerKind::Adam, "adam"}};
}  // namespace

std::string to_string(OptimizerKind kind) { return detail::name_of(kOptimizerNames, kind); }

OptimizerKind parse_optimizer_kind(const std::string& name) {
  return detail::parse_name(kOptimizerNames, name, "optimizer");
}

std::vector<std::string> optimizer_kind_names() { return detail::names_of(kOptimizerNames); }

}  // namespace pare
