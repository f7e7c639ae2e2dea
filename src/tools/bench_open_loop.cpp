// Open-loop load generation: Poisson arrivals at a fixed offered rate, latency
// from the scheduled send time.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "pare/tools/bench.hpp"
#include "pare/serve/runner.hpp"
#include "pare/core/metrics.hpp"

namespace pare {
namespace {

using Clock = std::chrono::steady_clock;

// Answers arrive on worker threads; the sender waits for the last one here.
struct Tally {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<double> latencies_ms;
  uint64_t answered = 0, rejected = 0, timeouts = 0, failed = 0;

  void add(const RunOutcome& outcome, Clock::time_point scheduled) {
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - scheduled).count();
    std::lock_guard<std::mutex> lock(mutex);
    if (outcome.ok()) latencies_ms.push_back(ms);
    else if (outcome.kind == Error::Kind::Overloaded) ++rejected;
    else if (outcome.kind == Error::Kind::Timeout) ++timeouts;
    else ++failed;
    ++answered;
    changed.notify_all();
  }
};

}  // namespace

OpenLoopResult run_open_loop(Runner& runner, const OpenLoopOptions& options) {
  require(options.rate() > 0 && options.rate() <= 1e7, "open loop: rate must be in (0, 1e7] requests per second");
  require(options.duration() > std::chrono::milliseconds(0) && options.duration() <= std::chrono::hours(1),
          "open loop: the duration must be in (0, 1 h], got " + std::to_string(options.duration().count()) + " ms");
  require(!options.inputs().empty(), "open loop: expected at least one input list to send");
  std::mt19937_64 random(options.seed());
  std::exponential_distribution<double> gap(options.rate());
  Tally tally;
  const auto start = Clock::now();
  const auto end = start + options.duration();
  auto scheduled = start;
  uint64_t sent = 0;
  while (true) {
    scheduled += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(random)));
    if (scheduled >= end) break;
    std::this_thread::sleep_until(scheduled);  // a late wake-up counts against latency, not the schedule
    auto inputs = options.inputs()[sent % options.inputs().size()];
    runner.run_async(std::move(inputs), [&tally, scheduled](RunOutcome outcome) { tally.add(outcome, scheduled); });
    ++sent;
  }
  std::unique_lock<std::mutex> lock(tally.mutex);
  tally.changed.wait(lock, [&] { return tally.answered == sent; });
  std::sort(tally.latencies_ms.begin(), tally.latencies_ms.end());
  OpenLoopResult r;
  r.offered_rate = options.rate();
  r.sent = sent;
  r.succeeded = tally.latencies_ms.size();
  r.rejected = tally.rejected, r.timeouts = tally.timeouts, r.failed = tally.failed;
  r.achieved_rate = double(r.succeeded) / std::chrono::duration<double>(options.duration()).count();
  r.p50_ms = nearest_rank(tally.latencies_ms, 0.50);
  r.p95_ms = nearest_rank(tally.latencies_ms, 0.95);
  r.p99_ms = nearest_rank(tally.latencies_ms, 0.99);
  r.p999_ms = nearest_rank(tally.latencies_ms, 0.999);
  return r;
}

std::string open_loop_table(const std::vector<std::pair<std::string, OpenLoopResult>>& rows) {
  std::string out;
  char line[320];
  std::snprintf(line, sizeof line, "%-28s %10s %10s %8s %9s %9s %9s %9s %9s %9s\n", "model", "offered/s", "achieved/s",
                "sent", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "rejected", "timeouts");
  out += line;
  for (const auto& [name, r] : rows) {
    std::snprintf(line, sizeof line, "%-28s %10.0f %10.0f %8llu %9.3f %9.3f %9.3f %9.3f %9llu %9llu\n", name.c_str(),
                  r.offered_rate, r.achieved_rate, (unsigned long long)r.sent, r.p50_ms, r.p95_ms, r.p99_ms, r.p999_ms,
                  (unsigned long long)r.rejected, (unsigned long long)r.timeouts);
    out += line;
  }
  return out;
}

std::string open_loop_json(const std::vector<std::pair<std::string, OpenLoopResult>>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [name, r] : rows)
    out.push_back({{"model", name}, {"offered_rate", r.offered_rate}, {"achieved_rate", r.achieved_rate},
                   {"sent", r.sent}, {"succeeded", r.succeeded}, {"rejected", r.rejected}, {"timeouts", r.timeouts},
                   {"failed", r.failed}, {"p50_ms", r.p50_ms}, {"p95_ms", r.p95_ms}, {"p99_ms", r.p99_ms},
                   {"p999_ms", r.p999_ms}});
  return out.dump(2);
}

}  // namespace pare
