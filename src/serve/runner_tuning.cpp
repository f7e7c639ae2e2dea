#include "serve/runner_tuning.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "core/enum_names.hpp"
#include "serve/padding.hpp"

namespace pare {

namespace {
constexpr detail::NameTable<RunnerHint, 2> kHintNames{{RunnerHint::Throughput, "throughput"},
                                                       {RunnerHint::Latency, "latency"}};
}  // namespace

std::string runner_hint_name(RunnerHint hint) { return detail::name_of(kHintNames, hint); }
RunnerHint parse_runner_hint(const std::string& name) { return detail::parse_name(kHintNames, name, "runner hint"); }
std::string to_string(RunnerHint hint) { return detail::name_of(kHintNames, hint); }
std::vector<std::string> runner_hint_names() { return detail::names_of(kHintNames); }

namespace detail {

void validate(const RunnerOptions& options) {
  if (options.padding()) validate(*options.padding());
  require(options.max_batch() >= 1, "RunnerOptions: max_batch must be >= 1, got " + std::to_string(options.max_batch()));
  require(options.threads() >= 1 && options.threads() <= 256,
          "RunnerOptions: threads must be in [1, 256], got " + std::to_string(options.threads()));
  require(options.max_delay().count() >= 0, "RunnerOptions: max_delay must not be negative");
  require(options.batch_gap().count() >= 0, "RunnerOptions: batch_gap must not be negative");
  require(options.timeout().count() >= 0, "RunnerOptions: timeout must not be negative (0: no deadline)");
  require(options.warmup() >= 0, "RunnerOptions: warmup must not be negative");
  require(options.concurrency() >= 0 && options.concurrency() <= 4096,
          "RunnerOptions: concurrency must be in [0, 4096] (0: no limit), got " + std::to_string(options.concurrency()));
  require(!options.hint() || !options.example_inputs().empty(),
          "RunnerOptions: hint(" + runner_hint_name(*options.hint()) +
              ") measures the model at construction and needs example_inputs(...) to run on");
  require(options.warmup() == 0 || !options.example_inputs().empty(),
          "RunnerOptions: warmup(" + std::to_string(options.warmup()) + ") needs example_inputs(...) to run on");
  const auto& preferred = options.preferred_batch_sizes();
  for (size_t i = 0; i < preferred.size(); ++i)
    require(preferred[i] >= 1 && preferred[i] <= options.max_batch() && (i == 0 || preferred[i] > preferred[i - 1]),
            "RunnerOptions: preferred_batch_sizes must be ascending row counts in [1, max_batch = " +
                std::to_string(options.max_batch()) + "], got " + std::to_string(preferred[i]) + " at position " +
                std::to_string(i));
}


// Each time the fastest of several passes taken in turn, since a busy host
// only ever adds time (a median moved by +-0.3 from run to run on a shared
// 16-core host). A few untimed passes first: TorchScript's executor profiles
// the first ones.
double measure_batch_saving(const std::vector<c10::IValue>& example_inputs,
                            const std::function<void(const std::vector<c10::IValue>&)>& forward) {
  const auto one = example_rows(example_inputs, 1);
  const auto eight = example_rows(example_inputs, 8);
  auto timed = [&](const std::vector<c10::IValue>& inputs) {
    const auto start = std::chrono::steady_clock::now();
    forward(inputs);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (int i = 0; i < 3; ++i) timed(one), timed(eight);
  double best_one = 1e30, best_eight = 1e30;
  for (int round = 0; round < 7; ++round) {
    best_one = std::min(best_one, timed(one));
    best_eight = std::min(best_eight, timed(eight));
  }
  return 1 - best_eight / (8 * best_one);
}

RunnerOptions tuned(RunnerOptions options, double batch_saving, int passes) {
  if (!options.hint()) return options;
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

std::vector<int> pass_candidates(unsigned cores, int intra_op_threads, bool batching_pays) {
  const int per_core = std::max(1, int(std::max(cores, 1u)) / std::max(intra_op_threads, 1));
  std::vector<int> candidates{1, per_core};
  if (!batching_pays) candidates.push_back(2 * per_core);
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  return candidates;
}

int choose_passes(const std::vector<std::pair<int, double>>& throughput) {
  double best = 0;
  for (const auto& [passes, rate] : throughput) best = std::max(best, rate);
  int chosen = 1;
  for (const auto& [passes, rate] : throughput)
    if (rate >= kPassesWithin * best) chosen = std::max(chosen, passes);
  return chosen;
}

// Each candidate's rows per second: `passes` threads released together, each
// running kRuns passes at batch 1; the best of a few rounds taken in turn.
std::vector<std::pair<int, double>> measure_passes(const std::vector<int>& candidates,
                                                   const std::vector<c10::IValue>& example_inputs,
                                                   const std::function<void(const std::vector<c10::IValue>&)>& forward) {
  constexpr int kRuns = 4, kRounds = 3;
  const auto one = example_rows(example_inputs, 1);
  std::vector<std::pair<int, double>> rates;
  for (int passes : candidates) rates.emplace_back(passes, 0.0);
  for (int round = 0; round < kRounds; ++round)
    for (auto& [passes, rate] : rates) {
      std::atomic<int> ready{0};
      std::atomic<bool> go{false};
      std::vector<std::thread> threads;
      for (int t = 0; t < passes; ++t)
        threads.emplace_back([&] {
          ++ready;
          while (!go) std::this_thread::yield();
          for (int i = 0; i < kRuns; ++i) forward(one);
        });
      while (ready < passes) std::this_thread::yield();
      const auto start = std::chrono::steady_clock::now();
      go = true;
      for (auto& t : threads) t.join();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      rate = std::max(rate, passes * kRuns / std::max(seconds, 1e-9));
    }
  return rates;
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
