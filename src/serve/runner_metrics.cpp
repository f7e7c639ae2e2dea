#include "serve/runner_metrics.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "pare/core/metrics.hpp"

namespace pare::detail {

LatencyRecorder::Shard& LatencyRecorder::mine() {
  static std::atomic<size_t> next_thread{0};
  thread_local const size_t shard = next_thread.fetch_add(1, std::memory_order_relaxed) % kShards;
  return shards_[shard];
}

void LatencyRecorder::record(double seconds, bool failed, Error::Kind kind) {
  auto& s = mine();
  const uint64_t n = s.recorded.load(std::memory_order_relaxed);
  s.recent[n % kRecentPerShard].store(seconds, std::memory_order_relaxed);
  s.recorded.store(n + 1, std::memory_order_release);  // a lost race only drops one sample of the ring
  const auto bucket = std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), seconds) - kLatencyBuckets.begin();
  s.in_bucket[size_t(bucket)].fetch_add(1, std::memory_order_relaxed);
  if (failed) s.failures.fetch_add(1, std::memory_order_relaxed);
  if (failed && kind == Error::Kind::Timeout) s.timeouts.fetch_add(1, std::memory_order_relaxed);
  s.nanoseconds.fetch_add(uint64_t(std::llround(seconds * 1e9)), std::memory_order_relaxed);
}

void LatencyRecorder::record_rejection() { mine().rejected.fetch_add(1, std::memory_order_relaxed); }

LatencyRecorder::Totals LatencyRecorder::merged() const {
  Totals all;
  for (const auto& s : shards_) {
    const uint64_t n = std::min<uint64_t>(s.recorded.load(std::memory_order_acquire), kRecentPerShard);
    for (uint64_t i = 0; i < n; ++i) all.recent.push_back(s.recent[i].load(std::memory_order_relaxed));
    for (size_t b = 0; b < all.in_bucket.size(); ++b) {
      all.in_bucket[b] += s.in_bucket[b].load(std::memory_order_relaxed);
      all.count += s.in_bucket[b].load(std::memory_order_relaxed);
    }
    all.failures += s.failures.load(), all.rejected += s.rejected.load(), all.timeouts += s.timeouts.load();
    all.sum += 1e-9 * double(s.nanoseconds.load());
  }
  return all;
}

void LatencyRecorder::fill(RunnerStats& stats) const {
  auto all = merged();
  stats.requests = int64_t(all.count + all.rejected);
  stats.failures = int64_t(all.failures + all.rejected);
  stats.rejected = int64_t(all.rejected);
  stats.timeouts = int64_t(all.timeouts);
  stats.latency_bounds.assign(kLatencyBuckets.begin(), kLatencyBuckets.end());
  stats.latency_counts.assign(all.in_bucket.begin(), all.in_bucket.end());
  stats.latency_seconds = all.sum;
  if (all.recent.empty()) return;
  std::sort(all.recent.begin(), all.recent.end());
  auto at = [&](double q) { return 1e3 * nearest_rank(all.recent, q); };
  stats.p50_ms = at(0.50), stats.p95_ms = at(0.95), stats.p99_ms = at(0.99);
  stats.max_ms = 1e3 * all.recent.back();
}

}  // namespace pare::detail

namespace pare {
namespace {

prometheus::Labels with_labels(const prometheus::Labels& labels, prometheus::Labels more) {
  more.insert(more.begin(), labels.begin(), labels.end());
  return more;
}

void append_latency_histogram(std::string& out, const RunnerStats& s, const prometheus::Labels& labels) {
  const std::string name = "pare_runner_latency_seconds";
  prometheus::append_header(out, name, "histogram", "Request latency, cache hits included, rejections excluded.");
  int64_t below = 0, count = 0;  // Prometheus buckets are cumulative
  for (size_t b = 0; b < s.latency_counts.size(); ++b) {
    count += s.latency_counts[b];
    if (b >= s.latency_bounds.size()) continue;  // the last count: above every bound
    below += s.latency_counts[b];
    prometheus::append_sample(out, name + "_bucket", double(below),
                              with_labels(labels, {{"le", prometheus::format_value(s.latency_bounds[b])}}));
  }
  prometheus::append_sample(out, name + "_bucket", double(count), with_labels(labels, {{"le", "+Inf"}}));
  prometheus::append_sample(out, name + "_sum", s.latency_seconds, labels);
  prometheus::append_sample(out, name + "_count", double(count), labels);
}

// Requests per forward pass as a histogram with power-of-two bounds.
void append_batch_histogram(std::string& out, const std::vector<int64_t>& batch_sizes,
                            const prometheus::Labels& labels) {
  const std::string name = "pare_runner_batch_size";
  prometheus::append_header(out, name, "histogram", "Requests merged into each forward pass.");
  int64_t count = 0, sum = 0;
  for (size_t n = 0; n < batch_sizes.size(); ++n) count += batch_sizes[n], sum += int64_t(n) * batch_sizes[n];
  int64_t below = 0;
  size_t n = 0;
  for (size_t bound = 1; bound < 2 * std::max<size_t>(batch_sizes.size(), 1); bound *= 2) {
    for (; n <= bound && n < batch_sizes.size(); ++n) below += batch_sizes[n];
    prometheus::append_sample(out, name + "_bucket", double(below),
                              with_labels(labels, {{"le", std::to_string(bound)}}));
  }
  prometheus::append_sample(out, name + "_bucket", double(count), with_labels(labels, {{"le", "+Inf"}}));
  prometheus::append_sample(out, name + "_sum", double(sum), labels);
  prometheus::append_sample(out, name + "_count", double(count), labels);
}

}  // namespace

std::string RunnerStats::to_prometheus(const prometheus::Labels& labels) const {
  const RunnerStats& s = *this;
  std::string out;
  auto counter = [&](const char* name, const char* help, int64_t value) {
    prometheus::append_metric(out, name, "counter", help, double(value), labels);
  };
  counter("pare_runner_requests_total", "Requests answered, failures included.", s.requests);
  counter("pare_runner_failures_total", "Requests that ended in an error, rejections and timeouts included.", s.failures);
  counter("pare_runner_rejected_total", "Requests refused at once because the queue was full.", s.rejected);
  counter("pare_runner_timeouts_total", "Requests whose deadline passed while they waited; they never ran.", s.timeouts);
  counter("pare_runner_swaps_total", "Models installed by swap().", s.swaps);
  counter("pare_runner_batches_total", "Batches: forward passes run (cache hits run none).", s.batches);
  prometheus::append_metric(out, "pare_runner_queue_depth", "gauge", "Requests waiting in the queue.",
                            double(s.queue_depth), labels);
  prometheus::append_metric(out, "pare_runner_model_copies", "gauge",
                            "Batch sizes the model runs on a module of its own for.", double(s.model_copies), labels);
  prometheus::append_metric(out, "pare_runner_throughput_requests_per_second", "gauge",
                            "Requests per second since start.", s.throughput(), labels);
  counter("pare_runner_caller_batches_total", "Forward passes run on a calling thread instead of a worker.", s.caller_batches);
  auto seconds = [&](const char* name, const char* help, double value) {
    prometheus::append_metric(out, name, "counter", help, value, labels);
  };
  seconds("pare_runner_queue_seconds_total", "Summed over queued requests: arrival to their batch's start.", s.queue_seconds);
  seconds("pare_runner_assemble_seconds_total", "Summed over batches: merging inputs and splitting outputs.", s.assemble_seconds);
  seconds("pare_runner_forward_seconds_total", "Summed over forward passes: the model itself.", s.forward_seconds);
  prometheus::append_metric(out, "pare_runner_config", "gauge",
                            "The settings in force (as given, or as the hint chose them); the value is always 1.", 1.0,
                            with_labels(labels, {{"hint", s.hint.empty() ? "none" : s.hint},
                                                 {"max_batch", std::to_string(s.max_batch)},
                                                 {"threads", std::to_string(s.threads)},
                                                 {"concurrency", std::to_string(s.concurrency)}}));
  prometheus::append_metric(out, "pare_runner_batch_saving_ratio", "gauge",
                            "The hint's measurement: 1 - time(batch 8) / (8 x time(batch 1)); 0 without a hint.",
                            s.batch_saving, labels);
  append_batch_histogram(out, s.batch_sizes, labels);
  append_latency_histogram(out, s, labels);
  return out;
}

}  // namespace pare
