#include "pare/runner.hpp"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include <c10/core/StreamGuard.h>

#include "pare/metrics.hpp"
#include "runner_device.hpp"

namespace pare {
namespace {

using Clock = std::chrono::steady_clock;
using Inputs = std::vector<c10::IValue>;

// Upper bounds of the latency histogram, in seconds.
constexpr std::array<double, 14> kLatencyBuckets{1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3,
                                                 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 1.0};
constexpr size_t kRecentLatencies = 8192;

std::string model_message(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

// Latencies: exact percentiles over a ring of recent requests, and cumulative
// bucket counts for Prometheus.
class LatencyRecorder {
 public:
  void record(double seconds, bool failed) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (recent_.size() < kRecentLatencies) recent_.push_back(seconds);
    else recent_[next_++ % kRecentLatencies] = seconds;
    for (size_t b = 0; b < kLatencyBuckets.size(); ++b)
      if (seconds <= kLatencyBuckets[b]) ++buckets_[b];
    ++count_;
    failures_ += failed;
    sum_ += seconds;
  }

  void fill(RunnerStats& stats) const {
    std::lock_guard<std::mutex> lock(mutex_);
    stats.requests = count_;
    stats.failures = failures_;
    if (recent_.empty()) return;
    auto sorted = recent_;
    std::sort(sorted.begin(), sorted.end());
    auto at = [&](double q) { return 1e3 * sorted[std::min(sorted.size() - 1, size_t(q * double(sorted.size())))]; };
    stats.p50_ms = at(0.50), stats.p95_ms = at(0.95), stats.p99_ms = at(0.99);
    stats.max_ms = 1e3 * sorted.back();
  }

  void append_prometheus(std::string& out) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string name = "pare_runner_latency_seconds";
    prometheus::append_header(out, name, "histogram", "Request latency, cache hits included.");
    for (size_t b = 0; b < kLatencyBuckets.size(); ++b)
      prometheus::append_sample(out, name + "_bucket", double(buckets_[b]), {{"le", prometheus::format_value(kLatencyBuckets[b])}});
    prometheus::append_sample(out, name + "_bucket", double(count_), {{"le", "+Inf"}});
    prometheus::append_sample(out, name + "_sum", sum_);
    prometheus::append_sample(out, name + "_count", double(count_));
  }

 private:
  mutable std::mutex mutex_;
  std::vector<double> recent_;
  size_t next_ = 0;
  std::array<uint64_t, kLatencyBuckets.size()> buckets_{};
  uint64_t count_ = 0, failures_ = 0;
  double sum_ = 0;
};

// What a worker hands back to a caller: the output, or the failure as a message
// that the caller throws as its own pare::Error. (No exception object crosses
// threads: its reference counts live in the uninstrumented C++ runtime, where
// ThreadSanitizer can't follow them.)
struct Outcome {
  c10::IValue output;
  std::optional<std::string> error;
  Error::Kind kind = Error::Kind::Runtime;
};

struct Request {
  Inputs inputs;
  int64_t rows = 0;  // 0: not batchable (non-tensor inputs), runs alone
  Clock::time_point arrival;
  std::promise<Outcome> result;
  bool answered = false;
};

int64_t batch_rows(const Inputs& inputs) {
  int64_t rows = -1;
  for (const auto& input : inputs) {
    if (!input.isTensor() || input.toTensor().dim() == 0) return 0;
    const int64_t r = input.toTensor().size(0);
    if (rows >= 0 && r != rows) return 0;
    rows = r;
  }
  return std::max<int64_t>(rows, 0);
}

// Requests merge when every input has the same dtype and the same shape after dim 0.
bool compatible(const Request& a, const Request& b) {
  if (a.rows == 0 || b.rows == 0 || a.inputs.size() != b.inputs.size()) return false;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const auto& x = a.inputs[i].toTensor();
    const auto& y = b.inputs[i].toTensor();
    if (x.scalar_type() != y.scalar_type() || x.sizes().slice(1) != y.sizes().slice(1)) return false;
  }
  return true;
}

// The rows [begin, begin + rows) of a batched output (a tensor, or a tuple/list of tensors).
c10::IValue split_rows(const c10::IValue& output, int64_t begin, int64_t rows, int64_t total) {
  if (output.isTensor()) {
    const auto& t = output.toTensor();
    require(t.dim() > 0 && t.size(0) == total,
            "the model's batched output has " + std::string(t.dim() ? std::to_string(t.size(0)) : "no") +
                " rows for " + std::to_string(total) + " merged input rows; this model can't be batched along "
                "dim 0: use RunnerOptions().max_batch(1)",
            Error::Kind::Runtime);
    return t.narrow(0, begin, rows);
  }
  if (output.isTuple()) {
    std::vector<c10::IValue> parts;
    for (const auto& element : output.toTupleRef().elements()) parts.push_back(split_rows(element, begin, rows, total));
    return c10::ivalue::Tuple::create(std::move(parts));
  }
  if (output.isTensorList()) {
    c10::List<at::Tensor> parts;
    for (const at::Tensor t : output.toTensorList()) parts.push_back(split_rows(c10::IValue(t), begin, rows, total).toTensor());
    return parts;
  }
  throw Error("the model returned a " + output.tagKind() +
                  "; batching splits tensors, tuples and lists of tensors: use RunnerOptions().max_batch(1)",
              Error::Kind::Runtime);
}

}  // namespace

struct Runner::Impl {
  torch::jit::Module module;
  RunnerOptions options;
  std::optional<TensorPool> pool;  // a handle sharing the options' pool (PoolAllocatorGuard needs it mutable)
  std::optional<detail::DeviceIO> io;  // the model's device and the copies around it
  Clock::time_point started = Clock::now();
  LatencyRecorder latencies;

  std::mutex mutex;  // guards the fields below
  std::condition_variable wake;
  std::deque<std::unique_ptr<Request>> queue;
  bool stopping = false;
  uint64_t batches = 0;
  std::vector<uint64_t> batch_sizes;
  std::vector<std::thread> workers;

  c10::IValue forward(const Inputs& inputs) {
    torch::NoGradGuard no_grad;
    std::optional<PoolAllocatorGuard> pooled;
    if (pool && pool->options().memory() == PoolMemory::Host) pooled.emplace(*pool);
    try {
      return module.forward(inputs);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error("the model failed: " + model_message(e), Error::Kind::Runtime);
    }
  }

  // One request's inputs to the model's device, the forward pass, the output back as callers get it.
  c10::IValue forward_one(const Inputs& inputs, const std::optional<c10::Stream>& stream) {
    detail::Staging staging;
    return io->deliver(forward(io->to_device(inputs, staging)), stream);
  }

  void count_batch(size_t requests) {
    std::lock_guard<std::mutex> lock(mutex);
    ++batches;
    if (batch_sizes.size() <= requests) batch_sizes.resize(requests + 1);
    ++batch_sizes[requests];
  }

  c10::IValue execute(Inputs inputs) {
    if (options.max_batch() <= 1) {
      count_batch(1);
      return forward_one(inputs, std::nullopt);  // on the caller's thread and current stream
    }
    auto request = std::make_unique<Request>();
    request->rows = batch_rows(inputs);
    request->inputs = std::move(inputs);
    request->arrival = Clock::now();
    auto future = request->result.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex);
      queue.push_back(std::move(request));
    }
    wake.notify_one();
    auto outcome = future.get();
    if (outcome.error) throw Error(*outcome.error, outcome.kind);
    io->hand_over(outcome.output);
    return outcome.output;
  }

  // Takes the oldest request and every compatible one behind it, up to max_batch rows.
  std::vector<std::unique_ptr<Request>> take_batch() {
    std::vector<std::unique_ptr<Request>> batch;
    batch.push_back(std::move(queue.front()));
    queue.pop_front();
    int64_t rows = batch.front()->rows;
    for (auto it = queue.begin(); it != queue.end() && rows > 0;) {
      if (compatible(*batch.front(), **it) && rows + (*it)->rows <= options.max_batch()) {
        rows += (*it)->rows;
        batch.push_back(std::move(*it));
        it = queue.erase(it);
      } else {
        ++it;
      }
    }
    return batch;
  }

  int64_t queued_rows() const {
    int64_t rows = 0;
    for (const auto& r : queue) rows += std::max<int64_t>(r->rows, 1);
    return rows;
  }

  void worker() {
    const auto stream = io->new_stream();  // this worker's own CUDA stream (none on the CPU)
    std::unique_lock<std::mutex> lock(mutex);
    while (true) {
      wake.wait(lock, [&] { return stopping || !queue.empty(); });
      if (queue.empty()) return;  // stopping, nothing left
      const auto deadline = queue.front()->arrival + options.max_delay();
      while (!stopping && queued_rows() < options.max_batch() && Clock::now() < deadline)
        wake.wait_until(lock, deadline);
      if (queue.empty()) continue;  // another worker took them while this one waited
      auto batch = take_batch();
      lock.unlock();
      run_batch(batch, stream);
      batch.clear();  // drop the inputs before taking the lock again: freeing them may wait for others
      lock.lock();
    }
  }

  void run_batch(std::vector<std::unique_ptr<Request>>& batch, const std::optional<c10::Stream>& stream) {
    count_batch(batch.size());
    std::optional<c10::StreamGuard> on_stream;
    if (stream) on_stream.emplace(*stream);
    try {
      if (batch.size() == 1) {
        answer(*batch.front(), Outcome{forward_one(batch.front()->inputs, stream)});
        return;
      }
      detail::Staging staging;  // pinned host buffers, alive until deliver() has waited for the copy
      Inputs merged;
      int64_t total = 0;
      for (const auto& r : batch) total += r->rows;
      for (size_t i = 0; i < batch.front()->inputs.size(); ++i) {
        std::vector<at::Tensor> parts;
        for (const auto& r : batch) parts.push_back(r->inputs[i].toTensor());
        merged.emplace_back(io->stack(parts, staging));
      }
      const auto output = io->deliver(forward(merged), stream);
      int64_t begin = 0;
      for (auto& r : batch) {
        answer(*r, Outcome{split_rows(output, begin, r->rows, total)});
        begin += r->rows;
      }
    } catch (const Error& e) {
      fail_unanswered(batch, e.what(), e.kind());
    } catch (const std::exception& e) {
      fail_unanswered(batch, e.what(), Error::Kind::Runtime);
    } catch (...) {
      fail_unanswered(batch, "the model failed with an unknown exception", Error::Kind::Runtime);
    }
  }

  static void answer(Request& request, Outcome outcome) {
    request.result.set_value(std::move(outcome));
    request.answered = true;
  }

  // The whole batch fails together: only its own callers see the error.
  static void fail_unanswered(std::vector<std::unique_ptr<Request>>& batch, const std::string& message,
                              Error::Kind kind) {
    for (auto& r : batch)
      if (!r->answered) answer(*r, Outcome{c10::IValue(), message, kind});
  }
};

Runner::Runner(torch::jit::Module module, RunnerOptions options) : impl_(std::make_unique<Impl>()) {
  require(options.max_batch() >= 1, "RunnerOptions: max_batch must be >= 1, got " + std::to_string(options.max_batch()));
  require(options.threads() >= 1 && options.threads() <= 256,
          "RunnerOptions: threads must be in [1, 256], got " + std::to_string(options.threads()));
  require(options.max_delay().count() >= 0, "RunnerOptions: max_delay must not be negative");
  require(options.warmup() >= 0, "RunnerOptions: warmup must not be negative");
  require(options.warmup() == 0 || !options.example_inputs().empty(),
          "RunnerOptions: warmup(" + std::to_string(options.warmup()) + ") needs example_inputs(...) to run on");
  require(module.find_method("forward").has_value(), "Runner: the module has no forward method");
  module.eval();
  impl_->io.emplace(options.device(), options.outputs_on_device(), options.pool());
  if (impl_->io->on_accelerator()) {  // serve a copy: the caller's module stays where it is
    module = module.clone();
    module.to(impl_->io->device());
  }
  impl_->module = std::move(module);
  impl_->options = std::move(options);
  impl_->pool = impl_->options.pool();
  for (int i = 0; i < impl_->options.warmup(); ++i) impl_->forward_one(impl_->options.example_inputs(), std::nullopt);
  impl_->started = Clock::now();
  if (impl_->options.max_batch() > 1)
    for (int i = 0; i < impl_->options.threads(); ++i) impl_->workers.emplace_back([this] { impl_->worker(); });
}

Runner::~Runner() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  for (auto& worker : impl_->workers) worker.join();
}

c10::IValue Runner::run(std::vector<c10::IValue> inputs) {
  const auto start = Clock::now();
  bool failed = true;
  struct Record {  // records the latency however run() leaves
    Impl& impl; const Clock::time_point& start; bool& failed;
    ~Record() { impl.latencies.record(std::chrono::duration<double>(Clock::now() - start).count(), failed); }
  } record{*impl_, start, failed};
  c10::IValue output = impl_->options.cache()
                           ? impl_->options.cache()->get_or_compute(inputs, [&] { return impl_->execute(inputs); })
                           : impl_->execute(std::move(inputs));
  failed = false;
  return output;
}

RunnerStats Runner::stats() const {
  RunnerStats stats;
  impl_->latencies.fill(stats);
  stats.seconds = std::chrono::duration<double>(Clock::now() - impl_->started).count();
  std::lock_guard<std::mutex> lock(impl_->mutex);
  stats.batches = impl_->batches;
  stats.batch_sizes = impl_->batch_sizes;
  return stats;
}

std::string Runner::metrics_text() const {
  const auto s = stats();
  std::string out;
  prometheus::append_metric(out, "pare_runner_requests_total", "counter", "Requests answered, failures included.", double(s.requests));
  prometheus::append_metric(out, "pare_runner_failures_total", "counter", "Requests that ended in an error.", double(s.failures));
  prometheus::append_metric(out, "pare_runner_forward_passes_total", "counter", "Forward passes run (cache hits run none).", double(s.batches));
  prometheus::append_metric(out, "pare_runner_throughput_requests_per_second", "gauge", "Requests per second since start.", s.throughput());
  prometheus::append_header(out, "pare_runner_batch_requests", "gauge", "Forward passes by the number of requests they merged.");
  for (size_t n = 1; n < s.batch_sizes.size(); ++n)
    if (s.batch_sizes[n]) prometheus::append_sample(out, "pare_runner_batch_requests", double(s.batch_sizes[n]), {{"requests", std::to_string(n)}});
  impl_->latencies.append_prometheus(out);
  if (impl_->options.cache()) out += impl_->options.cache()->to_prometheus();
  if (impl_->options.pool()) out += impl_->options.pool()->to_prometheus();
  return out;
}

}  // namespace pare
