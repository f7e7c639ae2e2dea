#pragma once
// pare::Runner — thread-safe serving of a TorchScript module: dynamic batching,
// an optional inference cache in front, an optional tensor pool underneath,
// and one Prometheus exposition of it all.
//
//   auto cache = std::make_shared<pare::InferenceCache>(pare::CacheOptions().capacity_bytes(64 << 20));
//   pare::Runner runner(torch::jit::load("model.pt"),
//                       pare::RunnerOptions().cache(cache).max_batch(32)
//                           .max_delay(std::chrono::microseconds(500)).threads(1));
//   auto logits = runner.run({image}).toTensor();   // from any number of threads
//   std::cout << runner.metrics_text();

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "pare/cache.hpp"
#include "pare/error.hpp"
#include "pare/pool.hpp"

namespace pare {

class RunnerOptions {
 public:
  /// A cache consulted before the model (shared: several runners may use one).
  RunnerOptions& cache(std::shared_ptr<InferenceCache> value) { cache_ = std::move(value); return *this; }
  /// A pool whose storage the model's own allocations reuse (PoolAllocatorGuard around each forward).
  RunnerOptions& pool(TensorPool value) { pool_ = std::move(value); return *this; }
  /// Forward passes run at construction on `example_inputs` (warms allocators and the JIT's profiling).
  RunnerOptions& warmup(int runs) { warmup_ = runs; return *this; }
  RunnerOptions& example_inputs(std::vector<c10::IValue> inputs) { example_inputs_ = std::move(inputs); return *this; }
  /// Largest merged batch; 1 runs every request on its caller's thread.
  RunnerOptions& max_batch(int64_t rows) { max_batch_ = rows; return *this; }
  /// How long the first request of a batch waits for company.
  RunnerOptions& max_delay(std::chrono::microseconds value) { max_delay_ = value; return *this; }
  /// Worker threads that run merged batches (max_batch > 1).
  RunnerOptions& threads(int count) { threads_ = count; return *this; }
  /// Where the model runs: cpu (default) or cuda[:index]. On a GPU the runner
  /// serves a copy of the module moved there; host inputs of a batch are stacked
  /// in pinned memory (from pool() when it holds PoolMemory::Pinned) and cross in
  /// one non-blocking copy, and each worker thread runs on its own CUDA stream.
  RunnerOptions& device(c10::Device value) { device_ = value; return *this; }
  /// On a GPU: leave outputs on the device (true) or copy them to the host (false, the default).
  RunnerOptions& outputs_on_device(bool value) { outputs_on_device_ = value; return *this; }

  const std::shared_ptr<InferenceCache>& cache() const { return cache_; }
  const std::optional<TensorPool>& pool() const { return pool_; }
  int warmup() const { return warmup_; }
  const std::vector<c10::IValue>& example_inputs() const { return example_inputs_; }
  int64_t max_batch() const { return max_batch_; }
  std::chrono::microseconds max_delay() const { return max_delay_; }
  int threads() const { return threads_; }
  const c10::Device& device() const { return device_; }
  bool outputs_on_device() const { return outputs_on_device_; }

 private:
  std::shared_ptr<InferenceCache> cache_;
  std::optional<TensorPool> pool_;
  int warmup_ = 0;
  std::vector<c10::IValue> example_inputs_;
  int64_t max_batch_ = 1;
  std::chrono::microseconds max_delay_{1000};
  int threads_ = 1;
  c10::Device device_ = c10::kCPU;
  bool outputs_on_device_ = false;
};

struct RunnerStats {
  uint64_t requests = 0;
  uint64_t failures = 0;
  uint64_t batches = 0;                ///< forward passes run (cache hits run none)
  double seconds = 0;                  ///< since construction
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0;  ///< over the most recent requests
  std::vector<uint64_t> batch_sizes;   ///< batch_sizes[n]: forward passes that merged n requests
  double throughput() const { return seconds > 0 ? double(requests) / seconds : 0.0; }
};

class Runner {
 public:
  Runner(torch::jit::Module module, RunnerOptions options = {});
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  /// The model's output for `inputs` (batch-of-one tensors along dim 0 when
  /// batching). Thread-safe. A model error reaches the callers whose requests
  /// were in the failing batch, as pare::Error (Runtime) with the model's message.
  c10::IValue run(std::vector<c10::IValue> inputs);

  RunnerStats stats() const;
  /// Runner, latency histogram, cache and pool metrics as one Prometheus text exposition.
  std::string metrics_text() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pare
