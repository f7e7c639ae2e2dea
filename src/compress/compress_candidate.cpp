// One CompressTo candidate: channels removed to a latency target, BatchNorm
// statistics re-estimated, Distill until the budget holds (or the epochs run
// out), int8 under the budget left; then exported to bytes, loaded back and
// measured as the file a user would ship, beside the input.

#include "compress/compress_internal.hpp"

#include <cmath>
#include <cstdio>
#include <sstream>

#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/script.h>

#include "pare/prune/prune_channels.hpp"
#include "pare/prune/recalibrate_batchnorm.hpp"
#include "pare/quantize/quantize.hpp"

namespace pare::detail {
namespace {

std::string times(double ratio) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2fx", ratio);
  return text;
}

void run_pass(const Pass& pass, torch::jit::Module& module) {
  Result state{module, {}, {}, {}};
  PassReport entry;
  pass.run(state, entry);
  module = state.module;
}

// Distill one epoch at a time, each epoch's order from its own seed, until the
// drop against the input is at most `budget` or `epochs` ran; the epochs run.
int64_t distill_within(torch::jit::Module& student, const CompressSearch& s, double budget, double& accuracy) {
  int64_t done = 0;
  accuracy = top1_accuracy(student, s.options.eval());
  while (done < s.options.epochs() && s.input_accuracy - accuracy > budget) {
    distill(student, DistillOptions(s.input, s.options.train()).epochs(1).lr(s.options.lr()).seed(uint64_t(done)));
    ++done;
    accuracy = top1_accuracy(student, s.options.eval());
  }
  return done;
}

torch::jit::Module quantized(const torch::jit::Module& model, const CompressSearch& s, double budget) {
  std::vector<LabelledBatch> labelled;
  for (const auto& [inputs, labels] : s.options.eval()) labelled.push_back({{inputs}, labels});
  auto options = QuantizeInt8Options(s.calibration)
                     .engine(s.options.engine())
                     .batch_sizes({s.options.target().batch()})
                     .max_drop(std::max(budget, 0.0))
                     .evaluate(Evaluation(std::move(labelled)));
  return Pipeline().add(QuantizeInt8(options)).run(model).module;
}

// The module as a file: frozen when float (as ExportTorchScript ships it),
// saved to bytes and loaded back; `bytes` is the file's size.
torch::jit::Module exported(torch::jit::Module module, bool int8, int64_t& bytes) {
  module.eval();
  if (!int8) module = torch::jit::freeze(module.clone());
  std::stringstream file;
  module.save(file);
  bytes = int64_t(file.str().size());
  file.seekg(0);
  return torch::jit::load(file);
}

}  // namespace

Latency with_factor(const Latency& target, double factor, const std::string& cache_dir) {
  return Latency::speedup(factor)
      .batch(target.batch())
      .threads(target.threads())
      .snap(target.snap())
      .max_widths(target.max_widths())
      .repeats(target.repeats())
      .attempts(target.attempts())
      .cpu_time(target.cpu_time())
      .keep_freed_memory(target.keep_freed_memory())
      .cache_dir(cache_dir);
}

CompressCandidate build_candidate(const CompressSearch& s, double prune_speedup, torch::jit::Module& out) {
  CompressCandidate c;
  c.prune_speedup = prune_speedup;
  c.int8 = s.options.int8();
  auto model = s.input.clone();
  std::string applied;
  double accuracy = s.input_accuracy;
  if (prune_speedup > 1.0) {
    try {
      model = prune_channels(s.input, PruneChannelsOptions(0).input_shape(s.shape).target(
                                          with_factor(s.options.target(), prune_speedup, s.cache_dir)))
                  .module;
    } catch (const Error& e) {
      c.note = e.what();
      return c;
    }
    run_pass(RecalibrateBatchNorm(RecalibrateBatchNormOptions(s.calibration)), model);
    // With int8 to come, half the budget is left for it.
    c.epochs = distill_within(model, s, c.int8 ? 0.5 * s.options.max_drop() : s.options.max_drop(), accuracy);
    applied = "prune_channels " + times(prune_speedup) + " + recalibrate_batchnorm";
    if (c.epochs > 0) applied += " + distill " + std::to_string(c.epochs);
  }
  if (c.int8) {
    model = quantized(model, s, s.options.max_drop() - (s.input_accuracy - accuracy));
    applied += std::string(applied.empty() ? "" : " + ") + "int8";
  }
  c.applied = applied.empty() ? "nothing" : applied;
  out = exported(model, c.int8, c.file_bytes);
  const auto seconds = measure_seconds({s.input, out}, s.measure_shape, s.options.target());
  c.input_seconds = seconds[0];
  c.seconds = seconds[1];
  c.accuracy = top1_accuracy(out, s.options.eval());
  const auto& target = s.options.target();
  c.meets_latency = target.kind() == Latency::Kind::Speedup ? c.speedup() >= target.factor()
                                                            : c.seconds * 1e6 <= double(target.time().count());
  c.meets_accuracy = s.input_accuracy - c.accuracy <= s.options.max_drop() + 1e-9;
  return c;
}

}  // namespace pare::detail
