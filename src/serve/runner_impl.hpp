#pragma once
// Internal to pare, included by runner.cpp alone: the Runner's state and the
// path of a request (on its caller's thread, through the queue, on a worker),
// apart from the public methods in runner.cpp.

#include "pare/serve/runner.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <shared_mutex>
#include <optional>
#include <thread>

#include <ATen/Parallel.h>
#include <c10/core/StreamGuard.h>

#include "pare/cache/fingerprint.hpp"
#include "serve/batch_queue.hpp"
#include "core/eval_module.hpp"
#include "core/torch_errors.hpp"
#include "serve/padding.hpp"
#include "serve/runner_device.hpp"
#include "serve/runner_metrics.hpp"
#include "serve/runner_tuning.hpp"

namespace pare {

using detail::Clock;
using detail::Inputs;
using detail::RequestPtr;
using detail::ServedModel;

namespace {

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }
int64_t nanoseconds(Clock::duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }
constexpr int64_t kForwardSample = 8;  // RunnerStats::forward_seconds: one pass in 8 is timed

RunOutcome failure(std::string message, Error::Kind kind) { return RunOutcome{c10::IValue(), std::move(message), kind}; }
RunOutcome success(c10::IValue output) { return RunOutcome{std::move(output), std::nullopt, Error::Kind::Runtime}; }

RunOutcome timed_out(const detail::Request& request) {
  const double waited_ms = 1e3 * seconds_since(request.arrival);
  return failure("Runner: the request's deadline passed after " + std::to_string(waited_ms) +
                     " ms in the queue; it never ran (give it a later deadline, add threads or bound the queue "
                     "with max_queue)",
                 Error::Kind::Timeout);
}

}  // namespace

// Gives a claimed pass back however the caller's run ends.
struct PassRelease {
  detail::BatchQueue& queue;
  ~PassRelease() { queue.release_pass(); }
};

struct Runner::Impl {
  RunnerOptions options;
  std::optional<detail::DeviceIO> io;  // the model's device and the copies around it
  Clock::time_point started = Clock::now();
  detail::LatencyRecorder latencies;
  std::unique_ptr<detail::BatchQueue> queue;
  std::atomic<uint64_t> next_id{1};
  // Where the time goes (RunnerStats): counted without a lock on the serving path.
  std::atomic<uint64_t> caller_batches{0};
  std::atomic<int64_t> queue_ns{0}, assemble_ns{0}, forward_ns{0};
  double batch_saving = 0;  // the hint's measurement

  // Every request reads the model and counts its pass: shared locks and
  // atomics, so callers on many cores never queue behind one another here.
  mutable std::shared_mutex mutex;  // guards `model`
  std::shared_ptr<ServedModel> model;
  std::atomic<uint64_t> batches{0}, swaps{0};
  size_t batch_size_slots = 0;  // max_batch + 1, set once before serving
  std::unique_ptr<std::atomic<uint64_t>[]> batch_sizes;  // [n]: passes that merged n requests
  std::vector<std::thread> workers;

  // The one place the served model changes: the module and its cache namespace
  // together. The namespace is the one given, else the model's fingerprint, so
  // models sharing a cache never see each other's results.
  std::shared_ptr<ServedModel> prepare(torch::jit::Module module, std::optional<std::string> cache_namespace) const {
    if (!cache_namespace && options.cache()) cache_namespace = model_fingerprint(module);
    if (io->on_accelerator()) {  // serve a copy: the caller's module stays where it is
      module = module.clone();
      module.to(io->device());
    }
    auto served = std::make_shared<ServedModel>();
    served->module = std::move(module);
    served->cache_namespace = cache_namespace.value_or("");
    return served;
  }

  void install(std::shared_ptr<ServedModel> served) {
    std::unique_lock<std::shared_mutex> lock(mutex);
    model = std::move(served);
  }

  std::shared_ptr<ServedModel> current_model() const {
    std::shared_lock<std::shared_mutex> lock(mutex);
    return model;
  }

  // The module a batch of `rows` rows runs on. TorchScript's executor and
  // onednn's int8 kernels keep the plan of the first input shape they run, and
  // other shapes pay for a new plan on every call (docs/serving.md): each batch
  // size gets a copy of its own, up to model_copies(); the first size (the
  // warm-up's) runs on the module itself, sizes beyond the limit share it.
  torch::jit::Module module_for(ServedModel& served, int64_t rows) {
    if (options.model_copies() == 0 || io->on_accelerator()) return served.module;
    {
      std::shared_lock<std::shared_mutex> lock(served.copies_mutex);
      if (auto it = served.copies.find(rows); it != served.copies.end()) return it->second;
      if (!served.copies.empty() && served.copies.size() >= size_t(options.model_copies())) return served.module;
    }
    {
      std::unique_lock<std::shared_mutex> lock(served.copies_mutex);
      if (auto it = served.copies.find(rows); it != served.copies.end()) return it->second;
      if (served.copies.empty()) return served.copies[rows] = served.module;
      if (served.copies.size() >= size_t(options.model_copies())) return served.module;
    }
    auto copy = detail::reloaded(served.module, "Runner: a copy of the model for batches of " + std::to_string(rows));
    std::unique_lock<std::shared_mutex> lock(served.copies_mutex);  // workers may have added sizes meanwhile
    if (auto it = served.copies.find(rows); it != served.copies.end()) return it->second;
    if (served.copies.size() >= size_t(options.model_copies())) return served.module;
    return served.copies.emplace(rows, std::move(copy)).first->second;
  }

  c10::IValue forward(ServedModel& served, const Inputs& inputs, int64_t rows) {
    torch::NoGradGuard no_grad;
    std::optional<PoolAllocatorGuard> pooled;
    const auto& pool = options.pool();
    if (pool && pool->options().memory() == PoolMemory::Host) pooled.emplace(*pool);
    try {
      auto module = module_for(served, rows);
      // One pass in kForwardSample is timed (and counted kForwardSample times):
      // two clock reads per pass cost more than the pass of a small model.
      thread_local uint32_t pass = 0;
      if (pass++ % kForwardSample != 0) return module.forward(inputs);
      const auto start = Clock::now();
      auto output = module.forward(inputs);
      forward_ns.fetch_add(kForwardSample * nanoseconds(Clock::now() - start), std::memory_order_relaxed);
      return output;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error("the model failed: " + detail::torch_message(e), Error::Kind::Runtime);
    }
  }

  // One request's inputs to the model's device, the forward pass, the output back as callers get it.
  c10::IValue forward_one(ServedModel& served, const Inputs& inputs, const std::optional<c10::Stream>& stream) {
    detail::Staging staging;
    return io->deliver(forward(served, io->to_device(inputs, staging), detail::batch_rows(inputs)), stream);
  }

  void warm_up(ServedModel& served) {
    const auto inputs = model_inputs(options.example_inputs());
    for (int i = 0; i < options.warmup(); ++i) forward_one(served, inputs, std::nullopt);
  }

  // RunnerOptions::hint: measure whether a batch saves time per row, then let
  // tuned() choose every setting not given. On a GPU the hint changes nothing.
  void tune(ServedModel& served) {
    if (!options.hint() || io->on_accelerator()) return;
    batch_saving = detail::measure_batch_saving(model_inputs(options.example_inputs()), [&](const Inputs& inputs) {
      forward_one(served, inputs, std::nullopt);
    });
    int passes = options.concurrency();
    if (!options.explicitly_set(RunnerSetting::Concurrency)) {
      const auto candidates = detail::pass_candidates(std::thread::hardware_concurrency(), at::get_num_threads(),
                                                      batch_saving >= detail::kBatchingPays);
      passes = detail::choose_passes(
          detail::measure_passes(candidates, model_inputs(options.example_inputs()),
                                 [&](const Inputs& inputs) { forward_one(served, inputs, std::nullopt); }));
    }
    options = detail::tuned(options, batch_saving, passes);
    warm_sizes(served);
    forward_ns = 0;  // the serving breakdown starts after the measurement
  }

  // Each preferred batch size runs on a module of its own (model_copies): made
  // and warmed here, off the serving path, instead of by the first requests.
  void warm_sizes(ServedModel& served) {
    if (!options.hint() || io->on_accelerator()) return;
    for (int64_t rows : options.preferred_batch_sizes())
      for (int i = 0; i < 2; ++i)
        forward_one(served, detail::example_rows(model_inputs(options.example_inputs()), rows), std::nullopt);
  }

  // Runs one blocking request on its caller's thread, as one pass of its own.
  c10::IValue run_here(ServedModel& served, const Inputs& inputs, Clock::time_point deadline) {
    if (deadline != Clock::time_point::max())
      require(Clock::now() < deadline, "Runner: the request's deadline had passed before it started; it never ran",
              Error::Kind::Timeout);
    count_batch(1);
    caller_batches.fetch_add(1, std::memory_order_relaxed);
    return forward_one(served, inputs, std::nullopt);  // on the caller's thread and current stream
  }

  void count_batch(size_t requests) {
    batches.fetch_add(1, std::memory_order_relaxed);
    batch_sizes[std::min(requests, batch_size_slots - 1)].fetch_add(1, std::memory_order_relaxed);
  }

  Clock::time_point resolve(Deadline deadline, Clock::time_point now) const {
    if (deadline != Deadline::max() || options.timeout().count() == 0) return deadline;
    return now + options.timeout();
  }

  static Error overloaded(size_t max_queue) {
    return Error("Runner: the queue is full (" + std::to_string(max_queue) +
                     " requests waiting, RunnerOptions::max_queue); retry later or raise max_queue",
                 Error::Kind::Overloaded);
  }

  RequestPtr make_request(std::shared_ptr<ServedModel> served, Inputs inputs, Clock::time_point deadline, Done done) {
    auto request = std::make_unique<detail::Request>();
    request->id = next_id.fetch_add(1, std::memory_order_relaxed);
    request->rows = detail::batch_rows(inputs);
    request->inputs = std::move(inputs);
    request->model = std::move(served);
    request->arrival = Clock::now();
    request->deadline = deadline;
    request->done = std::move(done);
    return request;
  }

  // Queues a request for the workers; its id, or 0 when the queue is full
  // (counted as a rejection; `done` not called).
  uint64_t enqueue(std::shared_ptr<ServedModel> served, Inputs inputs, Clock::time_point deadline, Done done) {
    auto request = make_request(std::move(served), std::move(inputs), deadline, std::move(done));
    const uint64_t id = request->id;
    if (queue->push(request)) return id;
    latencies.record_rejection();
    return 0;
  }

  // A blocking request padded to its bucket (RunnerOptions::padding) and its answer cut back.
  c10::IValue execute_padded(std::shared_ptr<ServedModel> served, Inputs inputs, Clock::time_point deadline) {
    const auto& padding = options.padding();
    if (!padding) return execute(std::move(served), std::move(inputs), deadline);
    auto padded = detail::pad_request(inputs, *padding);
    auto output = execute(std::move(served), std::exchange(padded.inputs, {}), deadline);
    return detail::cut_to_length(output, padded, *padding);
  }

  // The inputs the model itself runs on for an unpadded request `inputs`.
  Inputs model_inputs(const Inputs& inputs) const {
    return options.padding() && !inputs.empty() ? detail::pad_request(inputs, *options.padding()).inputs : inputs;
  }

  // A blocking request: on this thread without batching; else queued, and run
  // by this thread itself when a pass is free (run_as_caller), or waited for.
  c10::IValue execute(std::shared_ptr<ServedModel> served, Inputs inputs, Clock::time_point deadline) {
    if (options.max_batch() <= 1) return run_here(*served, inputs, deadline);
    if (queue->try_run_now()) {  // nothing queued, a pass free: no request object, no hand-off
      PassRelease release{*queue};
      return run_here(*served, inputs, deadline);
    }
    auto promise = std::make_shared<std::promise<RunOutcome>>();  // shared: the worker may still be in set_value
    auto future = promise->get_future();
    auto request = make_request(std::move(served), std::move(inputs), deadline,
                                [promise](RunOutcome o) { promise->set_value(std::move(o)); });
    const uint64_t id = request->id;
    const auto admission = queue->admit(request);
    if (admission == detail::BatchQueue::Admission::Full) {
      latencies.record_rejection();
      throw overloaded(options.max_queue());
    }
    if (admission == detail::BatchQueue::Admission::Run) run_as_caller(future);
    // At its deadline a request still queued is taken back here, so the caller never waits past it.
    if (deadline != Deadline::max() && future.wait_until(deadline) == std::future_status::timeout)
      if (auto mine = queue->cancel(id)) mine->answer(timed_out(*mine));
    auto output = future.get().value();
    io->hand_over(output);
    return output;
  }

  // With a pass that admit() gave this caller: the queue's front batches run
  // here, this caller's request among them, until it is answered or nothing is
  // queued (a worker may have taken it); then the pass goes back. No hand-off:
  // while callers keep arriving, they are the workers.
  void run_as_caller(std::future<RunOutcome>& mine) {
    PassRelease release{*queue};
    while (mine.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      std::vector<RequestPtr> expired;
      auto batch = queue->take_now(expired);
      for (auto& r : expired) r->answer(timed_out(*r));
      if (batch.empty()) {
        if (expired.empty()) return;
        continue;
      }
      caller_batches.fetch_add(1, std::memory_order_relaxed);
      run_batch(batch, std::nullopt);
    }
  }

  void worker() {
    const auto stream = io->new_stream();  // this worker's own CUDA stream (none on the CPU)
    while (true) {
      std::vector<RequestPtr> expired;
      auto batch = queue->next_batch(expired);
      for (auto& r : expired) r->answer(timed_out(*r));
      if (batch.empty() && expired.empty()) return;  // closed and drained
      expired.clear();
      if (batch.empty()) continue;
      run_batch(batch, stream);
      batch.clear();  // drop the inputs before waiting again: freeing them may take time
      queue->release_pass();
    }
  }

  void run_batch(std::vector<RequestPtr>& batch, const std::optional<c10::Stream>& stream) {
    count_batch(batch.size());
    const auto start = Clock::now();
    int64_t waited = 0;
    for (const auto& r : batch) waited += nanoseconds(start - r->arrival);
    queue_ns.fetch_add(waited, std::memory_order_relaxed);
    std::optional<c10::StreamGuard> on_stream;
    if (stream) on_stream.emplace(*stream);
    try {
      auto& served = *batch.front()->model;
      if (batch.size() == 1) {
        batch.front()->answer(success(forward_one(served, batch.front()->inputs, stream)));
        return;
      }
      int64_t total = 0;
      for (const auto& r : batch) total += r->rows;
      detail::Staging staging;  // pinned host buffers, alive until deliver() has waited for the copy
      const auto merged = detail::merge_inputs(batch, [&](const auto& parts) { return io->stack(parts, staging); });
      const auto merge_end = Clock::now();
      const auto output = io->deliver(forward(served, merged, total), stream);
      const auto split_start = Clock::now();
      std::vector<c10::IValue> answers;
      int64_t begin = 0;
      for (auto& r : batch) {
        answers.push_back(detail::split_rows(output, begin, r->rows, total));
        begin += r->rows;
      }
      assemble_ns.fetch_add(nanoseconds(merge_end - start) + nanoseconds(Clock::now() - split_start),
                            std::memory_order_relaxed);
      for (size_t i = 0; i < batch.size(); ++i) batch[i]->answer(success(std::move(answers[i])));
    } catch (const Error& e) {
      fail_unanswered(batch, e.what(), e.kind());
    } catch (const std::exception& e) {
      fail_unanswered(batch, e.what(), Error::Kind::Runtime);
    } catch (...) {
      fail_unanswered(batch, "the model failed with an unknown exception", Error::Kind::Runtime);
    }
  }

  // The whole batch fails together: only its own callers see the error.
  static void fail_unanswered(std::vector<RequestPtr>& batch, const std::string& message, Error::Kind kind) {
    for (auto& r : batch)
      if (!r->answered) r->answer(failure(message, kind));
  }
};

}  // namespace pare
