#pragma once
// pare::Runner — thread-safe serving of a TorchScript module: dynamic batching,
// an optional inference cache in front, an optional tensor pool underneath,
// and one Prometheus exposition of it all.
//
//   auto cache = std::make_shared<pare::InferenceCache>(pare::InferenceCacheOptions().capacity_bytes(64 << 20));
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
#include "pare/core/arg.hpp"
#include "pare/core/error.hpp"
#include "pare/core/metrics.hpp"
#include "pare/pool/pool.hpp"
#include "pare/serve/padding.hpp"

namespace pare {

/// What RunnerOptions::hint tunes the runner for.
enum class RunnerHint {
  Throughput,  ///< the most requests per second: batches up to 32 rows
  Latency,     ///< short answers: batches up to 8 rows
};
/// "throughput" or "latency".
std::string runner_hint_name(RunnerHint hint);
/// The same as runner_hint_name, under the name every enum's table uses.
std::string to_string(RunnerHint hint);
/// Every hint name, in RunnerHint order.
std::vector<std::string> runner_hint_names();
/// The hint named `name`; pare::Error listing the names otherwise.
RunnerHint parse_runner_hint(const std::string& name);

/// The settings that RunnerOptions::hint may choose, as RunnerOptions::explicitly_set names them.
enum class RunnerSetting { MaxBatch, Threads, BatchGap, Concurrency };

class RunnerOptions {
 public:
  /// A cache consulted before the model (shared: several runners may use one).
  PARE_ARG(std::shared_ptr<InferenceCache>, cache);
  /// The namespace of this runner's entries in the cache. By default the
  /// model's fingerprint (pare::model_fingerprint, computed once at
  /// construction), so runners over different models never share results and
  /// runners over the same model do, across processes too (Redis tier). Set it
  /// to name the model yourself, e.g. "fashion-cnn@3".
  PARE_ARG(std::optional<std::string>, cache_namespace);
  /// A pool whose storage the model's own allocations reuse (PoolAllocatorGuard around each forward).
  PARE_ARG(std::shared_ptr<TensorPool>, pool);
  /// Forward passes run at construction on `example_inputs` (warms allocators and the JIT's profiling).
  PARE_ARG(int64_t, warmup) = 0;
  /// Inputs of one request: for warmup, the hint's measurement and the per-size model copies.
  PARE_ARG(std::vector<c10::IValue>, example_inputs);
  /// Largest merged batch; 1 runs every blocking request on its caller's thread.
  PARE_ARG_NOTED(int64_t, max_batch, RunnerSetting::MaxBatch) = 1;
  /// The longest the first request of a batch waits for company.
  PARE_ARG(std::chrono::microseconds, max_delay){1000};
  /// A batch goes out early when no request arrived for this long, or when every
  /// request the runner has lately held at once is queued or running (all the
  /// callers are waiting): waiting longer can't help. max_delay or more turns both off.
  PARE_ARG_NOTED(std::chrono::microseconds, batch_gap, RunnerSetting::BatchGap){100};
  /// Batch sizes (rows, ascending, each <= max_batch) the model runs best at: a batch
  /// reaching the largest goes out at once, and a batch sent early is cut to the
  /// largest size that the queued rows fill (the rest waits for the next one).
  PARE_ARG(std::vector<int64_t>, preferred_batch_sizes);
  /// Requests allowed to wait in the queue; beyond it run() fails at once with
  /// pare::Error of kind Overloaded. 0: unbounded.
  PARE_ARG(int64_t, max_queue) = 0;
  /// Default deadline of a request, from its arrival: still queued then, it fails
  /// with kind Timeout and never runs. 0: none.
  PARE_ARG(std::chrono::microseconds, timeout){0};
  /// Worker threads that run queued batches (and asynchronous requests).
  PARE_ARG_NOTED(int64_t, threads, RunnerSetting::Threads) = 1;
  /// The most forward passes that run at once on the CPU, on workers and on
  /// callers' threads together; 0 (the default): no limit. With a limit, a
  /// blocking caller that finds a pass free runs the queue's front batches on
  /// its own thread, its own request among them, with no hand-off to a worker
  /// (docs/serving.md: "a request queues only when queueing helps"); workers
  /// run what callers leave and the asynchronous requests. The hint measures
  /// it (see hint()).
  PARE_ARG_NOTED(int64_t, concurrency, RunnerSetting::Concurrency) = 0;
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
  PARE_ARG(std::optional<RunnerHint>, hint);
  /// Requests of different lengths share batches: each is padded to a bucket
  /// length and its answer cut back (pare/serve/padding.hpp). example_inputs
  /// are then unpadded requests too.
  PARE_ARG(std::optional<PaddingOptions>, padding);
  /// Where the model runs: cpu (default) or cuda[:index]. On a GPU the runner
  /// serves a copy of the module moved there; host inputs of a batch are stacked
  /// in pinned memory (from pool() when it holds PoolMemory::Pinned) and cross in
  /// one non-blocking copy, and each worker thread runs on its own CUDA stream.
  PARE_ARG(c10::Device, device) = c10::kCPU;
  /// On a GPU: leave outputs on the device (true) or copy them to the host (false, the default).
  PARE_ARG(bool, outputs_on_device) = false;
  /// Batch sizes (row counts) that run on a module of their own, at most; the
  /// first size served runs on the module itself, the others on copies made on
  /// first use, and sizes beyond the limit share the module. TorchScript's
  /// executor and onednn's int8 kernels keep the plan of the first input shape
  /// they run: other shapes pay for a new plan on every call (docs/serving.md).
  /// Each copy costs the model's memory once. 0: every batch runs on the one
  /// module. CPU only (a GPU model is served as one copy).
  PARE_ARG(int64_t, model_copies) = 8;

 public:
  /// Whether `setting` was given explicitly (the hint keeps those).
  bool explicitly_set(RunnerSetting setting) const { return explicit_ & (1u << unsigned(setting)); }

 private:
  void note_set(RunnerSetting setting) { explicit_ |= 1u << unsigned(setting); }
  unsigned explicit_ = 0;
};

struct RunnerStats {
  int64_t requests = 0;                ///< answered, errors included
  int64_t failures = 0;                ///< ended in an error (rejections and timeouts included)
  int64_t rejected = 0;                ///< refused at once because the queue was full (kind Overloaded)
  int64_t timeouts = 0;                ///< failed at their deadline without running (kind Timeout)
  int64_t swaps = 0;                   ///< models installed by swap()
  int64_t batches = 0;                 ///< forward passes run (cache hits run none)
  int64_t queue_depth = 0;             ///< requests waiting now
  int64_t model_copies = 0;            ///< batch sizes the served model runs on a module of its own for
  double seconds = 0;                  ///< since construction
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0;  ///< over the most recent requests (rejections excluded)
  std::vector<int64_t> batch_sizes;                       ///< batch_sizes[n]: forward passes that merged n requests
  // Latency histogram of every request, cache hits included, rejections excluded.
  std::vector<double> latency_bounds;   ///< upper bounds of the buckets, in seconds
  std::vector<int64_t> latency_counts;  ///< requests per bucket; one more than bounds (the last: above them all)
  double latency_seconds = 0;           ///< the latencies summed
  // Where a request's time goes (docs/serving.md).
  int64_t caller_batches = 0;          ///< forward passes run on a calling thread instead of a worker
  double queue_seconds = 0;            ///< summed over queued requests: arrival to their batch's start
  double assemble_seconds = 0;         ///< summed over batches: merging inputs and splitting outputs
  double forward_seconds = 0;          ///< summed over passes: the model itself (one pass in 8 timed, x8)
  // The settings in force, as given or as the hint chose them.
  int64_t max_batch = 1;
  int64_t threads = 1;                 ///< worker threads
  int64_t concurrency = 0;             ///< forward passes at once; 0: no limit
  std::string hint;                    ///< "throughput", "latency", or empty without one
  double batch_saving = 0;             ///< the hint's measurement: 1 - time(batch 8) / (8 x time(batch 1)); 0 without
  double throughput() const { return seconds > 0 ? double(requests) / seconds : 0.0; }
  /// Prometheus text exposition (pare_runner_* families, the latency and batch size histograms).
  std::string to_prometheus(const prometheus::Labels& labels = {}) const;
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
  explicit Runner(torch::jit::Module module, RunnerOptions options = {});
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
  /// The options in force: as given, with the hint's choices filled in.
  const RunnerOptions& options() const;
  /// stats().to_prometheus(labels), then the cache's and the pool's metrics
  /// (with the same labels), as one Prometheus text exposition.
  std::string to_prometheus(const prometheus::Labels& labels = {}) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pare
