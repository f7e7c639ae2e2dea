#include "serve/runner_tuning.hpp"

#include <algorithm>

#include "core/enum_names.hpp"

namespace pare {

namespace {
constexpr detail::NameTable<RunnerHint, 2> kHintNames{{RunnerHint::Throughput, "throughput"},
                                                       {RunnerHint::Latency, "latency"}};
}  // namespace

std::string runner_hint_name(RunnerHint hint) { return detail::name_of(kHintNames, hint); }
RunnerHint parse_runner_hint(const std::string& name) { return detail::parse_name(kHintNames, name, "runner hint"); }

namespace detail {

RunnerOptions tuned(RunnerOptions options, double batch_saving, unsigned cores, int intra_op_threads) {
  if (!options.hint()) return options;
  // Two passes per core: a core whose pass ended while the callers it answered
  // are still waking up runs another pass meanwhile (on a 16-core host, one
  // pass per core left a quarter of the cores idle under 32 to 128 callers).
  const int passes = 2 * std::max(1, int(std::max(cores, 1u)) / std::max(intra_op_threads, 1));
  const bool batching_pays = batch_saving >= kBatchingPays;
  auto keep = [&](RunnerSetting s) { return options.explicitly_set(s); };
  if (!keep(RunnerSetting::Concurrency)) options.concurrency(passes);
  if (!keep(RunnerSetting::MaxBatch))
    options.max_batch(!batching_pays ? 1 : *options.hint() == RunnerHint::Latency ? 8 : 32);
  // A worker per pass: they run what callers leave, and every asynchronous request.
  if (!keep(RunnerSetting::Threads)) options.threads(options.concurrency() > 0 ? options.concurrency() : passes);
  // Batches form while every pass is busy: a free pass takes what is queued at once.
  if (!keep(RunnerSetting::BatchGap)) options.batch_gap(std::chrono::microseconds(0));
  // Powers of two: a few batch shapes, each with a warmed module of its own,
  // instead of a new execution plan for every size from 1 to max_batch.
  if (options.preferred_batch_sizes().empty() && options.max_batch() > 1) {
    std::vector<int64_t> sizes;
    for (int64_t rows = 1; rows <= options.max_batch(); rows *= 2) sizes.push_back(rows);
    options.preferred_batch_sizes(sizes);
  }
  return options;
}

std::vector<c10::IValue> example_rows(const std::vector<c10::IValue>& inputs, int64_t rows) {
  std::vector<c10::IValue> out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& input = inputs[i];
    require(input.isTensor() && input.toTensor().dim() > 0 && input.toTensor().size(0) > 0,
            "RunnerOptions::hint measures the model at batch 1 and 8: example input " + std::to_string(i) +
                " must be a tensor with a batch dimension (rows along dim 0), got " + input.tagKind());
    const auto& t = input.toTensor();
    std::vector<int64_t> repeats(size_t(t.dim()), 1);
    repeats[0] = rows;
    out.emplace_back(t.narrow(0, 0, 1).repeat(repeats));
  }
  return out;
}

}  // namespace detail
}  // namespace pare
