// pare::detail::train_student — Distill's training loop, in one process or as
// one rank of a data-parallel job (distributed.hpp): each rank trains on its
// share of the batches, gradients are averaged across ranks before every
// optimizer step, and checkpoints let a restarted run resume.

#include <torch/optim.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>

#include "core/eval_module.hpp"
#include "distill/checkpoint.hpp"
#include "distill/distributed.hpp"
#include "distill/training.hpp"

namespace pare::detail {
namespace {

// The student's parameters with requires_grad and train mode for the duration
// of training; restored (and gradients freed) however training ends.
class TrainingScope {
 public:
  explicit TrainingScope(torch::jit::Module& module) : module_(module) {
    for (const auto& p : module.parameters()) {
      parameters_.push_back(p);
      requires_grad_.push_back(p.requires_grad());
      // Module::clone() of a module whose parameters require grad records the
      // copy in autograd; detaching in place makes them leaves an optimizer accepts.
      if (!p.is_leaf()) parameters_.back().detach_();
      parameters_.back().set_requires_grad(true);
    }
    module.train();
  }
  ~TrainingScope() {
    for (size_t i = 0; i < parameters_.size(); ++i) {
      parameters_[i].mutable_grad() = torch::Tensor();
      parameters_[i].set_requires_grad(requires_grad_[i]);
    }
    module_.eval();
  }
  TrainingScope(const TrainingScope&) = delete;
  TrainingScope& operator=(const TrainingScope&) = delete;
  const std::vector<torch::Tensor>& parameters() const { return parameters_; }

 private:
  torch::jit::Module& module_;
  std::vector<torch::Tensor> parameters_;
  std::vector<bool> requires_grad_;
};

c10::Device device_of(const torch::jit::Module& module) {
  for (const auto& p : module.parameters()) return p.device();
  return c10::kCPU;
}

// Training on options.device(): the student moved there for the duration (and
// back however training ends), the teacher as a copy there, batches per step.
class Placement {
 public:
  Placement(torch::jit::Module& student, torch::jit::Module teacher, c10::Device device)
      : student_(student), home_(device_of(student)), device_(device), teacher_(std::move(teacher)) {
    if (device_of(teacher_) != device_) {
      teacher_ = teacher_.clone();
      teacher_.to(device_);
    }
    if (home_ != device_) student_.to(device_);
  }
  ~Placement() {
    if (home_ != device_) student_.to(home_);
  }
  Placement(const Placement&) = delete;
  Placement& operator=(const Placement&) = delete;

  torch::jit::Module& teacher() { return teacher_; }
  Batch batch(const Batch& batch) const {
    if (device_.is_cpu() && batch.first.device().is_cpu()) return batch;
    return {batch.first.to(device_, /*non_blocking=*/true),
            batch.second.defined() ? batch.second.to(device_, /*non_blocking=*/true) : batch.second};
  }

 private:
  torch::jit::Module& student_;
  c10::Device home_, device_;
  torch::jit::Module teacher_;
};

// This rank's batches of an epoch: every world-th batch from its rank on. A
// listed data set is shuffled alike on every rank (one seed), then dealt out.
TrainingData::Reader batches_of(const DistillOptions& o, int64_t epoch, std::mt19937_64& rng, int64_t rank,
                                int64_t world) {
  if (!o.data().in_memory()) {
    return [next = o.data().open(epoch), rank, world, index = int64_t(0)]() mutable -> std::optional<Batch> {
      while (auto batch = next())
        if (index++ % world == rank) return batch;
      return std::nullopt;
    };
  }
  auto order = std::make_shared<std::vector<size_t>>(o.data().batches().size());
  std::iota(order->begin(), order->end(), size_t(0));
  if (o.shuffle()) std::shuffle(order->begin(), order->end(), rng);
  return [&batches = o.data().batches(), order, next = size_t(rank), world]() mutable -> std::optional<Batch> {
    if (next >= order->size()) return std::nullopt;
    const auto& batch = batches[(*order)[next]];
    next += size_t(world);
    return batch;
  };
}

// What one training run holds while it loops.
struct Loop {
  const DistillOptions& options;
  torch::jit::Module& student;
  Placement& placement;
  const StepModels& models;
  torch::optim::Optimizer& optimizer;
  const std::vector<MaskedParameter>& masked;
  Group* group;        // null in one process
  GradientSync* sync;  // null in one process
  DistillResult& summary;
  int64_t total_steps;  // -1 if unknown
  double running = 0;
  std::vector<double> matched_sums;  // this epoch's match() terms times batch sizes, this rank's
  int64_t matched_samples = 0;
};

// One epoch on this rank's batches; returns (loss sum, samples) over every rank.
std::pair<double, int64_t> run_epoch(Loop& loop, int64_t epoch, std::mt19937_64& rng) {
  const int64_t rank = loop.group ? loop.group->rank() : 0, world = loop.group ? loop.group->size() : 1;
  const auto next = batches_of(loop.options, epoch, rng, rank, world);
  double sum = 0;
  int64_t samples = 0;
  for (int64_t step = 0;; ++step) {
    const auto host_batch = next();
    if (!loop.group && !host_batch) break;
    GradientSync::Step totals{0, 0.0, 0};
    if (host_batch) {
      const auto batch = loop.placement.batch(*host_batch);
      const auto loss = backward_step(loop.models, loop.optimizer, batch, loop.options, loop.masked, epoch, step);
      const auto n = batch.first.size(0);
      totals = {1, loss.total * double(n), n};
      loop.matched_sums.resize(loss.matched.size());
      for (size_t i = 0; i < loss.matched.size(); ++i) loop.matched_sums[i] += loss.matched[i] * double(n);
      loop.matched_samples += n;
    }
    if (loop.sync)  // a rank out of batches still takes part, contributing nothing
      totals = loop.sync->average(
          host_batch.has_value(), totals.loss_sum, totals.samples,
          "all-reduce of gradients at epoch " + std::to_string(epoch + 1) + ", step " + std::to_string(step + 1));
    if (totals.contributors == 0) break;
    update_step(loop.optimizer, loop.masked);
    sum += totals.loss_sum;
    samples += totals.samples;
    const double loss = totals.loss_sum / double(totals.samples);
    loop.running = loop.summary.steps++ == 0 ? loss : 0.98 * loop.running + 0.02 * loss;
    if (loop.options.progress()) loop.options.progress()(loop.summary.steps, loop.total_steps, loop.running);
    if (totals.contributors < world) break;  // some rank ran out: the epoch ends for all
  }
  return {sum, samples};
}

std::vector<torch::Tensor> state_of(const torch::jit::Module& module, bool parameters, bool buffers) {
  std::vector<torch::Tensor> out;
  if (parameters)
    for (const auto& p : module.parameters()) out.push_back(p.detach());
  if (buffers)
    for (const auto& b : module.buffers()) out.push_back(b.detach());
  return out;
}

// Rank 0's parameters and buffers on every rank, and one resume point for all:
// a checkpoint that some ranks see and others do not ends the run on every rank.
void agree(Group& group, torch::jit::Module& student, int64_t start_epoch, const std::string& checkpoint) {
  torch::NoGradGuard no_grad;
  auto tensors = state_of(student, true, true);
  group.broadcast(tensors, "broadcast of rank 0's parameters");
  const double e = double(start_epoch);
  std::vector<torch::Tensor> starts{torch::tensor({e, e * e}, torch::kDouble)};
  group.all_reduce_sum(starts, "the check that every rank resumes from one epoch");
  const double sum = starts[0][0].item<double>(), squares = starts[0][1].item<double>();
  require(sum * sum == squares * double(group.size()),
          "Distill: the ranks resume from different epochs (rank " + std::to_string(group.rank()) + " from epoch " +
              std::to_string(start_epoch) + "); checkpoint '" + checkpoint +
              "' must be one file every rank reads (a shared path), or absent for all",
          Error::Kind::Runtime);
}

// The epochs from `start` on; checkpoints after each (rank 0 writes them).
void run_epochs(Loop& loop, int64_t start, std::mt19937_64& rng, int64_t& trained) {
  const auto& options = loop.options;
  for (int64_t epoch = start; epoch < options.epochs(); ++epoch) {
    const auto [sum, samples] = run_epoch(loop, epoch, rng);
    require(samples > 0,
            "Distill: the data produced no batches in epoch " + std::to_string(epoch + 1) +
                "; streamed data must yield batches every epoch (a one-shot reader runs dry after the first)");
    loop.summary.epoch_loss.push_back(sum / double(samples));
    loop.summary.match_loss.resize(loop.matched_sums.size());
    for (size_t i = 0; i < loop.matched_sums.size(); ++i)
      loop.summary.match_loss[i].push_back(loop.matched_sums[i] / double(std::max<int64_t>(loop.matched_samples, 1)));
    loop.matched_sums.assign(loop.matched_sums.size(), 0.0);
    loop.matched_samples = 0;
    trained += samples;
    if (!options.checkpoint().empty() && (!loop.group || loop.group->rank() == 0))
      save_checkpoint(options.checkpoint(), loop.student, loop.optimizer,
                      {epoch + 1, loop.summary.steps, loop.summary.epoch_loss});
  }
}

// Restores the checkpoint if there is one; returns the first epoch to train.
int64_t resume(const DistillOptions& options, torch::jit::Module& student, torch::optim::Optimizer& optimizer,
               DistillResult& summary, std::mt19937_64& rng) {
  if (options.checkpoint().empty()) return 0;
  const auto state = load_checkpoint(options.checkpoint(), student, optimizer);
  if (!state) return 0;
  require(state->epochs_done <= options.epochs(),
          "Distill: checkpoint '" + options.checkpoint() + "' has " + std::to_string(state->epochs_done) +
              " epochs done, more than epochs() = " + std::to_string(options.epochs()) +
              "; raise epochs() or delete the checkpoint");
  summary.steps = state->steps;
  summary.epoch_loss = state->epoch_loss;
  if (options.data().in_memory() && options.shuffle()) {  // the shuffles of the epochs done, so the rest match
    std::vector<size_t> order(options.data().batches().size());
    for (int64_t e = 0; e < state->epochs_done; ++e) std::shuffle(order.begin(), order.end(), rng);
  }
  return state->epochs_done;
}

void train_on_device(torch::jit::Module& student, torch::jit::Module& teacher, const DistillOptions& options,
                     std::vector<MaskedParameter>& masked, DistillResult& summary) {
  auto device = options.device().value_or(device_of(student));
  if (device.is_cuda() && !device.has_index()) device = c10::Device(c10::kCUDA, 0);
  Placement placement(student, teacher, device);
  summary.device = device.str();
  for (auto& m : masked) m.pruned = m.pruned.to(device);
  TrainingScope scope(student);
  require(!scope.parameters().empty(),
          "Distill: the module has no parameters (frozen?); run Distill before ExportTorchScript(freeze)");
  auto optimizer = make_optimizer(options, scope.parameters());
  zero_pruned(masked);
  std::mt19937_64 rng(options.seed());
  const int64_t start = resume(options, student, *optimizer, summary, rng);
  std::unique_ptr<Group> group;
  std::unique_ptr<GradientSync> sync;
  if (options.distributed()) {
    group = join_group(*options.distributed(), device);
    agree(*group, student, start, options.checkpoint());
    sync = std::make_unique<GradientSync>(*group, scope.parameters(), options.distributed()->bucket_mb());
  }
  const int64_t world = group ? group->size() : 1;
  const int64_t per_epoch = options.data().size();
  const int64_t steps = per_epoch < 0 ? -1 : (per_epoch + world - 1) / world * options.epochs();
  const auto models = step_models(student, placement.teacher(), options);
  Loop loop{options, student, placement, models, *optimizer, masked, group.get(), sync.get(), summary, steps, 0, {}, 0};
  int64_t trained = 0;
  const auto started = std::chrono::steady_clock::now();
  run_epochs(loop, start, rng, trained);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  summary.samples_per_second = seconds > 0 ? double(trained) / seconds : 0.0;  // each step's loss.item() syncs
  if (group) {
    torch::NoGradGuard no_grad;
    auto buffers = state_of(student, false, true);  // rank 0's running statistics on every rank
    if (!buffers.empty()) group->broadcast(buffers, "broadcast of rank 0's buffers after training");
    group->finish();
  }
}

}  // namespace

DistillResult train_student(torch::jit::Module& student, const DistillOptions& options, const Masks& masks) {
  check_options(options);
  require(student._ivalue().get() != options.teacher()._ivalue().get(),
          "Distill: the student is the teacher; expected a separate copy (module.clone()) to train");
  // The caller's teacher keeps its mode: one in training mode is copied.
  torch::jit::Module teacher = eval_module(options.teacher());
  auto masked = resolve_masks(student, masks);
  DistillResult summary;
  if (!options.evaluate_on().empty()) summary.accuracy_before = top1_accuracy(student, options.evaluate_on());
  train_on_device(student, teacher, options, masked, summary);
  if (!options.evaluate_on().empty()) summary.accuracy_after = top1_accuracy(student, options.evaluate_on());
  if (options.distributed()) {
    summary.rank = options.distributed()->rank();
    summary.world_size = options.distributed()->world_size();
  }
  return summary;
}

}  // namespace pare::detail
