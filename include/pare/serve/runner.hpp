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
//   std::cout << runner.to_prometheus();

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "pare/cache/cache.hpp"
#include "pare/core/error.hpp"
#include "pare/pool/pool.hpp"

namespace pare {

/// What RunnerOptions::hint tunes the runner for.
enum class RunnerHint {
  Throughput,  ///< the most requests per second: batches up to 32 rows
  Latency,     ///< short answers: batches up to 8 rows
};
/// "throughput" or "latency".
std::string runner_hint_name(RunnerHint hint);
/// The hint named `name`; pare::Error listing the names otherwise.
RunnerHint parse_runner_hint(const std::string& name);

/// The settings that RunnerOptions::hint may choose, as RunnerOptions::explicitly_set names them.
enum class RunnerSetting { MaxBatch, Threads, BatchGap, Concurrency };

class RunnerOptions {
 public:
  /// A cache consulted before the model (shared: several runners may use one).
  RunnerOptions& cache(std::shared_ptr<InferenceCache> value) { cache_ = std::move(value); return *this; }
  /// The namespace of this runner's entries in the cache. By default the
  /// model's fingerprint (pare::model_fingerprint, computed once at
  /// construction), so runners over different models never share results and
  /// runners over the same model do, across processes too (Redis tier). Set it
  /// to name the model yourself, e.g. "fashion-cnn@3".
  RunnerOptions& cache_namespace(std::string value) { cache_namespace_ = std::move(value); return *this; }
  /// A pool whose storage the model's own allocations reuse (PoolAllocatorGuard around each forward).
  RunnerOptions& pool(std::shared_ptr<TensorPool> value) { pool_ = std::move(value); return *this; }
  /// Forward passes run at construction on `example_inputs` (warms allocators and the JIT's profiling).
  RunnerOptions& warmup(int runs) { warmup_ = runs; return *this; }
  RunnerOptions& example_inputs(std::vector<c10::IValue> inputs) { example_inputs_ = std::move(inputs); return *this; }
  /// Largest merged batch; 1 runs every blocking request on its caller's thread.
  RunnerOptions& max_batch(int64_t rows) { return set(RunnerSetting::MaxBatch, max_batch_, rows); }
  /// The longest the first request of a batch waits for company.
  RunnerOptions& max_delay(std::chrono::microseconds value) { max_delay_ = value; return *this; }
  /// A batch goes out early when no request arrived for this long, or when every
  /// request the runner has lately held at once is queued or running (all the
  /// callers are waiting): waiting longer can't help. max_delay or more turns both off.
  RunnerOptions& batch_gap(std::chrono::microseconds value) { return set(RunnerSetting::BatchGap, batch_gap_, value); }
  /// Batch sizes (rows, ascending, each <= max_batch) the model runs best at: a batch
  /// reaching the largest goes out at once, and a batch sent early is cut to the
  /// largest size that the queued rows fill (the rest waits for the next one).
  RunnerOptions& preferred_batch_sizes(std::vector<int64_t> rows) { preferred_ = std::move(rows); return *this; }
  /// Requests allowed to wait in the queue; beyond it run() fails at once with
  /// pare::Error of kind Overloaded. 0: unbounded.
  RunnerOptions& max_queue(size_t requests) { max_queue_ = requests; return *this; }
  /// Default deadline of a request, from its arrival: still queued then, it fails
  /// with kind Timeout and never runs. 0: none.
  RunnerOptions& timeout(std::chrono::microseconds value) { timeout_ = value; return *this; }
  /// Worker threads that run queued batches (and asynchronous requests).
  RunnerOptions& threads(int count) { return set(RunnerSetting::Threads, threads_, count); }
  /// The most forward passes that run at once on the CPU, on workers and on
  /// callers' threads together; 0 (the default): no limit. With a limit, a
  /// blocking caller that finds a pass free runs the queue's front batches on
  /// its own thread, its own request among them, with no hand-off to a worker
  /// (docs/serving.md: "a request queues only when queueing helps"); workers
  /// run what callers leave and the asynchronous requests. The hint measures
  /// it (see hint()).
  RunnerOptions& concurrency(int passes) { return set(RunnerSetting::Concurrency, concurrency_, passes); }
  /// Tune the runner to this model on this host at construction: a short
  /// measurement on example_inputs (required) at batch 1 and 8 tells whether a
  /// batch saves time per row. If it saves under 30%, queueing can't win and
  /// every blocking request runs on its caller's thread (max_batch 1);
  /// otherwise max_batch is 32 (Throughput) or 8 (Latency), batches go out as
  /// soon as a pass is free (batch_gap 0), cut to powers of two (each size
  /// warmed on a module of its own). Either way concurrency is measured too:
  /// 1, one per core and two per core concurrent batch-1 passes, keeping the
  /// most passes within 10% of the best rows per second; threads is as many
  /// workers. Settings given explicitly are kept. The choice
  /// and the measurement are in stats() and the Prometheus exposition. CPU
  /// only: on a GPU the hint changes nothing.
  RunnerOptions& hint(RunnerHint value) { hint_ = value; return *this; }
  /// Where the model runs: cpu (default) or cuda[:index]. On a GPU the runner
  /// serves a copy of the module moved there; host inputs of a batch are stacked
  /// in pinned memory (from pool() when it holds PoolMemory::Pinned) and cross in
  /// one non-blocking copy, and each worker thread runs on its own CUDA stream.
  RunnerOptions& device(c10::Device value) { device_ = value; return *this; }
  /// On a GPU: leave outputs on the device (true) or copy them to the host (false, the default).
  RunnerOptions& outputs_on_device(bool value) { outputs_on_device_ = value; return *this; }
  /// Batch sizes (row counts) that run on a module of their own, at most; the
  /// first size served runs on the module itself, the others on copies made on
  /// first use, and sizes beyond the limit share the module. TorchScript's
  /// executor and onednn's int8 kernels keep the plan of the first input shape
  /// they run: other shapes pay for a new plan on every call (docs/serving.md).
  /// Each copy costs the model's memory once. 0: every batch runs on the one
  /// module. CPU only (a GPU model is served as one copy).
  RunnerOptions& model_copies(size_t sizes) { model_copies_ = sizes; return *this; }

  const std::shared_ptr<InferenceCache>& cache() const { return cache_; }
  const std::optional<std::string>& cache_namespace() const { return cache_namespace_; }
  const std::shared_ptr<TensorPool>& pool() const { return pool_; }
  int warmup() const { return warmup_; }
  const std::vector<c10::IValue>& example_inputs() const { return example_inputs_; }
  int64_t max_batch() const { return max_batch_; }
  std::chrono::microseconds max_delay() const { return max_delay_; }
  std::chrono::microseconds batch_gap() const { return batch_gap_; }
  const std::vector<int64_t>& preferred_batch_sizes() const { return preferred_; }
  size_t max_queue() const { return max_queue_; }
  std::chrono::microseconds timeout() const { return timeout_; }
  int threads() const { return threads_; }
  int concurrency() const { return concurrency_; }
  const std::optional<RunnerHint>& hint() const { return hint_; }
  /// Whether `setting` was given explicitly (the hint keeps those).
  bool explicitly_set(RunnerSetting setting) const { return explicit_ & (1u << unsigned(setting)); }
  const c10::Device& device() const { return device_; }
  bool outputs_on_device() const { return outputs_on_device_; }
  size_t model_copies() const { return model_copies_; }

 private:
  std::shared_ptr<InferenceCache> cache_;
  std::optional<std::string> cache_namespace_;
  std::shared_ptr<TensorPool> pool_;
  int warmup_ = 0;
  std::vector<c10::IValue> example_inputs_;
  int64_t max_batch_ = 1;
  std::chrono::microseconds max_delay_{1000};
  std::chrono::microseconds batch_gap_{100};
  std::vector<int64_t> preferred_;
  size_t max_queue_ = 0;
  std::chrono::microseconds timeout_{0};
  int threads_ = 1;
  c10::Device device_ = c10::kCPU;
  bool outputs_on_device_ = false;
  size_t model_copies_ = 8;
  int concurrency_ = 0;
  std::optional<RunnerHint> hint_;
  unsigned explicit_ = 0;

  template <class T, class V>
  RunnerOptions& set(RunnerSetting setting, T& field, V value) {
    field = value;
    explicit_ |= 1u << unsigned(setting);
    return *this;
  }
};

struct RunnerStats {
  uint64_t requests = 0;               ///< answered, errors included
  uint64_t failures = 0;               ///< ended in an error (rejections and timeouts included)
  uint64_t rejected = 0;               ///< refused at once because the queue was full (kind Overloaded)
  uint64_t timeouts = 0;               ///< failed at their deadline without running (kind Timeout)
  uint64_t swaps = 0;                  ///< models installed by swap()
  uint64_t batches = 0;                ///< forward passes run (cache hits run none)
  uint64_t queue_depth = 0;            ///< requests waiting now
  uint64_t model_copies = 0;           ///< batch sizes the served model runs on a module of its own for
  double seconds = 0;                  ///< since construction
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0;  ///< over the most recent requests (rejections excluded)
  std::vector<uint64_t> batch_sizes;   ///< batch_sizes[n]: forward passes that merged n requests
  // Where a request's time goes (docs/serving.md).
  uint64_t caller_batches = 0;         ///< forward passes run on a calling thread instead of a worker
  double queue_seconds = 0;            ///< summed over queued requests: arrival to their batch's start
  double assemble_seconds = 0;         ///< summed over batches: merging inputs and splitting outputs
  double forward_seconds = 0;          ///< summed over passes: the model itself (one pass in 8 timed, x8)
  // The settings in force, as given or as the hint chose them.
  int64_t max_batch = 1;
  int threads = 1;                     ///< worker threads
  int concurrency = 0;                 ///< forward passes at once; 0: no limit
  std::string hint;                    ///< "throughput", "latency", or empty without one
  double batch_saving = 0;             ///< the hint's measurement: 1 - time(batch 8) / (8 x time(batch 1)); 0 without
  double throughput() const { return seconds > 0 ? double(requests) / seconds : 0.0; }
};

/// What an asynchronous request ends with: the output, or the error run() would throw.
struct RunOutcome {
  c10::IValue output;
  std::optional<std::string> error;
  Error::Kind kind = Error::Kind::Runtime;
  bool ok() const { return !error; }
  /// The output, or the error thrown as pare::Error on the calling thread.
  c10::IValue value() const {
    if (error) throw Error(*error, kind);
    return output;
  }
};

class Runner {
 public:
  using Deadline = std::chrono::steady_clock::time_point;
  /// Called once per asynchronous request, on a worker thread (or on the calling
  /// thread when the request is refused or answered by the cache). Must not throw.
  using Done = std::function<void(RunOutcome)>;

  /// Serves `module` in eval mode. The caller's module is never changed: one
  /// already in eval mode is used as is (shared), one in training mode is
  /// deep-copied once and the copy put in eval mode.
  Runner(torch::jit::Module module, RunnerOptions options = {});
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  /// The model's output for `inputs` (batch-of-one tensors along dim 0 when
  /// batching). Thread-safe. A model error reaches the callers whose requests
  /// were in the failing batch, as pare::Error (Runtime) with the model's message;
  /// a full queue gives kind Overloaded, a deadline passed while queued kind Timeout.
  c10::IValue run(std::vector<c10::IValue> inputs);
  c10::IValue run(std::vector<c10::IValue> inputs, Deadline deadline);

  /// Queues `inputs` and returns at once; the future holds the output or the pare::Error.
  std::future<c10::IValue> run_async(std::vector<c10::IValue> inputs, Deadline deadline = Deadline::max());
  /// Queues `inputs` and returns at once; `done` receives the outcome.
  void run_async(std::vector<c10::IValue> inputs, Done done, Deadline deadline = Deadline::max());

  /// Installs `module` for every request that arrives from now on; requests already
  /// queued or running finish on the model they arrived for. None fails or is
  /// dropped. Runs the options' warmup on `module` first, off the serving path.
  /// `cache_namespace`: the new model's namespace in the cache; by default its
  /// fingerprint (an explicit RunnerOptions::cache_namespace names only the first model).
  void swap(torch::jit::Module module, std::optional<std::string> cache_namespace = std::nullopt);

  RunnerStats stats() const;
  /// Runner, latency and batch size histograms, cache and pool metrics as one Prometheus text exposition.
  std::string to_prometheus() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pare
