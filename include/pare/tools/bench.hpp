#pragma once
// pare::benchmark_models — latency and throughput of TorchScript models side by
// side, as `pare bench` and `python -m pare bench` print them.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "pare/core/error.hpp"

namespace pare {

class BenchOptions {
 public:
  /// Input shapes with the batch as their first dimension, e.g. {{1, 1, 28, 28}};
  /// the first dimension is replaced by each batch size.
  BenchOptions& inputs(std::vector<std::vector<int64_t>> shapes) { inputs_ = std::move(shapes); return *this; }
  /// Batch sizes measured, each with every thread count.
  BenchOptions& batches(std::vector<int64_t> sizes) { batches_ = std::move(sizes); return *this; }
  /// Client threads calling forward concurrently on the same module.
  BenchOptions& threads(std::vector<int> counts) { threads_ = std::move(counts); return *this; }
  /// Measuring time per (model, batch, threads) cell, after warm-up.
  BenchOptions& duration(std::chrono::milliseconds value) { duration_ = value; return *this; }
  /// Forward passes per cell before measuring.
  BenchOptions& warmup(int runs) { warmup_ = runs; return *this; }
  /// The duration is split into this many slices, and the slices of all cells
  /// run in turn (model A, B, C, A, B, C, ...): a slow spell of the machine then
  /// weighs on every model alike instead of on the one measured during it. 1:
  /// each cell measured in one stretch. In [1, 100]; default 10 (docs/cli.md: why).
  BenchOptions& rounds(int value) { rounds_ = value; return *this; }

  const std::vector<std::vector<int64_t>>& inputs() const { return inputs_; }
  const std::vector<int64_t>& batches() const { return batches_; }
  const std::vector<int>& threads() const { return threads_; }
  std::chrono::milliseconds duration() const { return duration_; }
  int warmup() const { return warmup_; }
  int rounds() const { return rounds_; }

 private:
  std::vector<std::vector<int64_t>> inputs_{{1, 1, 28, 28}};
  std::vector<int64_t> batches_{1};
  std::vector<int> threads_{1};
  std::chrono::milliseconds duration_{1000};
  int warmup_ = 10;
  int rounds_ = 10;
};

/// One measured cell.
struct BenchRow {
  std::string model;
  int64_t batch = 0;
  int threads = 0;
  int64_t calls = 0;
  double p50_ms = 0, p95_ms = 0, p99_ms = 0;
  double samples_per_second = 0;
  double p50_ratio = 1, throughput_ratio = 1;  ///< against the first model's same cell
};

/// Measures every model (name, module) at every batch size and thread count.
std::vector<BenchRow> benchmark_models(std::vector<std::pair<std::string, torch::jit::Module>> models,
                                       const BenchOptions& options);

/// A fixed-width table with ratios against the first model.
std::string bench_table(const std::vector<BenchRow>& rows);
/// The rows as a JSON array.
std::string bench_json(const std::vector<BenchRow>& rows);
/// One self-contained HTML page: latency percentiles and throughput of every
/// cell as bar charts side by side, and the table.
std::string bench_html(const std::vector<BenchRow>& rows, const std::string& title = "pare bench");

class Runner;

/// Open-loop load: requests sent at a fixed offered rate whatever the answers do.
class OpenLoopOptions {
 public:
  /// `rate`: requests per second offered, with Poisson (exponential) gaps between sends.
  explicit OpenLoopOptions(double rate) : rate_(rate) {}
  /// Sending time; the answers still outstanding at its end are waited for.
  OpenLoopOptions& duration(std::chrono::milliseconds value) { duration_ = value; return *this; }
  /// Seed of the arrival process (the same seed sends at the same offsets).
  OpenLoopOptions& seed(uint64_t value) { seed_ = value; return *this; }
  /// The inputs sent, one list per request, cycled through.
  OpenLoopOptions& inputs(std::vector<std::vector<c10::IValue>> value) { inputs_ = std::move(value); return *this; }

  double rate() const { return rate_; }
  std::chrono::milliseconds duration() const { return duration_; }
  uint64_t seed() const { return seed_; }
  const std::vector<std::vector<c10::IValue>>& inputs() const { return inputs_; }

 private:
  double rate_;
  std::chrono::milliseconds duration_{2000};
  uint64_t seed_ = 0;
  std::vector<std::vector<c10::IValue>> inputs_;
};

/// What an open-loop run saw. Latency runs from each request's scheduled send
/// time (not the moment it was actually sent), so a sender that falls behind
/// shows up as latency instead of hiding it (no coordinated omission).
struct OpenLoopResult {
  double offered_rate = 0;   ///< requests per second asked for
  double achieved_rate = 0;  ///< successful answers per second of sending time
  uint64_t sent = 0, succeeded = 0, rejected = 0, timeouts = 0, failed = 0;  ///< failed: other errors
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, p999_ms = 0;  ///< successful requests only
};

/// Drives `runner` (through run_async) with Poisson arrivals; every request ends
/// as a success, a rejection, a timeout or another failure before it returns.
OpenLoopResult run_open_loop(Runner& runner, const OpenLoopOptions& options);

/// One line per result: offered and achieved rate, percentiles, rejections and timeouts.
std::string open_loop_table(const std::vector<std::pair<std::string, OpenLoopResult>>& rows);
std::string open_loop_json(const std::vector<std::pair<std::string, OpenLoopResult>>& rows);

/// Parses "1x1x28x28" into {1, 1, 28, 28}; pare::Error on anything else.
std::vector<int64_t> parse_shape(const std::string& text);

}  // namespace pare
