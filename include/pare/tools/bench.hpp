#pragma once
// pare::benchmark_models — latency and throughput of TorchScript models side by
// side, as `pare bench` and `python -m pare bench` print them.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

#include "pare/core/arg.hpp"
#include "pare/core/error.hpp"

namespace pare {

class BenchOptions {
 public:
  /// Input shapes with the batch as their first dimension, e.g. {{1, 1, 28, 28}};
  /// the first dimension is replaced by each batch size.
  PARE_ARG(std::vector<std::vector<int64_t>>, inputs){{1, 1, 28, 28}};
  /// Batch sizes measured, each with every thread count.
  PARE_ARG(std::vector<int64_t>, batches){1};
  /// Client threads calling forward concurrently on the same module.
  PARE_ARG(std::vector<int64_t>, threads){1};
  /// Measuring time per (model, batch, threads) cell, after warm-up.
  PARE_ARG(std::chrono::milliseconds, duration){1000};
  /// Forward passes per cell before measuring.
  PARE_ARG(int64_t, warmup) = 10;
  /// The duration is split into this many slices, and the slices of all cells
  /// run in turn (model A, B, C, A, B, C, ...): a slow spell of the machine then
  /// weighs on every model alike instead of on the one measured during it. 1:
  /// each cell measured in one stretch. In [1, 100]; default 10 (docs/cli.md: why).
  PARE_ARG(int64_t, rounds) = 10;
};

/// One measured cell.
struct BenchRow {
  std::string model;
  int64_t batch = 0;
  int64_t threads = 0;
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
  /// Requests per second offered.
  PARE_ARG(double, rate);
  /// Sending time; the answers still outstanding at its end are waited for.
  PARE_ARG(std::chrono::milliseconds, duration){2000};
  /// Seed of the arrival process (the same seed sends at the same offsets).
  PARE_ARG(uint64_t, seed) = 0;
  /// The inputs sent, one list per request, cycled through.
  PARE_ARG(std::vector<std::vector<c10::IValue>>, inputs);
};

/// What an open-loop run saw. Latency runs from each request's scheduled send
/// time (not the moment it was actually sent), so a sender that falls behind
/// shows up as latency instead of hiding it (no coordinated omission).
struct OpenLoopResult {
  double offered_rate = 0;   ///< requests per second asked for
  double achieved_rate = 0;  ///< successful answers per second of sending time
  int64_t sent = 0, succeeded = 0, rejected = 0, timeouts = 0, failed = 0;  ///< failed: other errors
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
