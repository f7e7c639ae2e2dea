#pragma once
// The runner's latency recorder (internal to pare); RunnerStats::to_prometheus.

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "pare/serve/runner.hpp"

namespace pare::detail {

// Upper bounds of the latency histogram, in seconds.
constexpr std::array<double, 16> kLatencyBuckets{1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
                                                 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0, 5.0};

/// Latencies: exact percentiles over a ring of recent requests, and bucket
/// counts for Prometheus. Also counts outcomes by kind. Lock-free and sharded
/// by thread: on a 16-core host, a lock taken by every request of every caller
/// held whole cores idle whenever its holder was preempted (docs/serving.md).
class LatencyRecorder {
 public:
  /// One finished request: its latency and, for a failure, its error kind.
  void record(double seconds, bool failed, Error::Kind kind = Error::Kind::Runtime);
  /// A request refused at once (queue full): counted, but not a latency.
  void record_rejection();
  /// The counts, percentiles and latency histogram of `stats`.
  void fill(RunnerStats& stats) const;

 private:
  static constexpr size_t kShards = 16;
  static constexpr size_t kRecentPerShard = 512;
  struct alignas(64) Shard {
    std::array<std::atomic<double>, kRecentPerShard> recent{};
    std::atomic<uint64_t> recorded{0};  // latencies written to `recent`, ever
    std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> in_bucket{};  // last: above every bound
    std::atomic<uint64_t> failures{0}, rejected{0}, timeouts{0}, nanoseconds{0};
  };
  struct Totals {
    std::vector<double> recent;
    std::array<uint64_t, kLatencyBuckets.size() + 1> in_bucket{};
    uint64_t count = 0, failures = 0, rejected = 0, timeouts = 0;
    double sum = 0;
  };
  Shard& mine();
  /// Every shard's counters and recent latencies added up.
  Totals merged() const;
  std::array<Shard, kShards> shards_;
};

}  // namespace pare::detail
