#include "serve/runner_impl.hpp"

namespace pare {

Runner::Runner(torch::jit::Module module, RunnerOptions options) : impl_(std::make_unique<Impl>()) {
  detail::validate(options);
  require(module.find_method("forward").has_value(), "Runner: the module has no forward method");
  impl_->options = std::move(options);
  impl_->io.emplace(impl_->options.device(), impl_->options.outputs_on_device(), impl_->options.pool());
  // The caller's module keeps its mode (and its device: an accelerator serves a copy).
  auto served = impl_->prepare(detail::eval_module(module), impl_->options.cache_namespace());
  impl_->warm_up(*served);
  impl_->install(std::move(served));
  impl_->warm_up(*impl_->model);
  impl_->tune(*impl_->model);
  const auto& o = impl_->options;
  impl_->batch_size_slots = size_t(o.max_batch()) + 1;
  impl_->batch_sizes = std::make_unique<std::atomic<uint64_t>[]>(impl_->batch_size_slots);
  // A limit on passes applies to the CPU: a GPU's passes queue on its streams.
  const size_t slots = impl_->io->on_accelerator() ? 0 : size_t(o.concurrency());
  impl_->queue = std::make_unique<detail::BatchQueue>(detail::BatchRule{
      o.max_batch(), o.max_delay(), o.batch_gap(), o.preferred_batch_sizes(), size_t(o.max_queue()), slots});
  impl_->started = Clock::now();
  for (int64_t i = 0; i < o.threads(); ++i) impl_->workers.emplace_back([this] { impl_->worker(); });
}

Runner::~Runner() {
  impl_->queue->close();
  for (auto& worker : impl_->workers) worker.join();
}

c10::IValue Runner::run(std::vector<c10::IValue> inputs) { return run(std::move(inputs), Deadline::max()); }

c10::IValue Runner::run(std::vector<c10::IValue> inputs, Deadline deadline) {
  const auto start = Clock::now();
  deadline = impl_->resolve(deadline, start);
  try {
    auto served = impl_->current_model();  // one model answers, and its namespace keys the cache
    const auto& cache = impl_->options.cache();
    c10::IValue output =
        cache ? cache->get_or_compute(
                    inputs, [&] { return impl_->execute_padded(served, inputs, deadline); }, served->cache_namespace)
              : impl_->execute_padded(served, std::move(inputs), deadline);
    impl_->latencies.record(seconds_since(start), false);
    return output;
  } catch (const Error& e) {
    if (e.kind() != Error::Kind::Overloaded) impl_->latencies.record(seconds_since(start), true, e.kind());
    throw;
  } catch (...) {
    impl_->latencies.record(seconds_since(start), true);
    throw;
  }
}

void Runner::run_async(std::vector<c10::IValue> inputs, Done done, Deadline deadline) {
  require(bool(done), "Runner.run_async: expected a callback, got an empty std::function");
  const auto start = Clock::now();
  auto call = [user = std::make_shared<Done>(std::move(done))](RunOutcome outcome) {
    try {
      (*user)(std::move(outcome));
    } catch (...) {  // a throwing callback must not take a worker down with it
    }
  };
  Done finish = [impl = impl_.get(), start, call](RunOutcome outcome) {
    impl->latencies.record(seconds_since(start), !outcome.ok(), outcome.kind);
    call(std::move(outcome));
  };
  auto served = impl_->current_model();
  if (const auto& cache = impl_->options.cache()) {
    if (auto hit = cache->get(inputs, served->cache_namespace)) return finish(success(*hit));
    finish = [cache, inputs, start, ns = served->cache_namespace, recorded = std::move(finish)](RunOutcome outcome) {
      if (outcome.ok()) cache->put(inputs, outcome.output, std::chrono::duration<double>(seconds_since(start)), ns);
      recorded(std::move(outcome));
    };
  }
  if (const auto& padding =
          impl_->options.padding()) {  // padded for the model; answers cut back before the cache keeps them
    detail::PaddedRequest padded;
    try {
      padded = detail::pad_request(inputs, *padding);
    } catch (const Error& e) {
      return finish(failure(e.what(), e.kind()));
    }
    inputs = std::exchange(padded.inputs, {});
    // The runner's options outlive its requests: no copy of the padding per request.
    finish = [padded, impl = impl_.get(), recorded = std::move(finish)](RunOutcome outcome) {
      if (outcome.ok()) outcome.output = detail::cut_to_length(outcome.output, padded, *impl->options.padding());
      recorded(std::move(outcome));
    };
  }
  if (impl_->enqueue(std::move(served), std::move(inputs), impl_->resolve(deadline, start), std::move(finish)) == 0) {
    const auto error = Impl::overloaded(impl_->options.max_queue());
    call(failure(error.what(), error.kind()));
  }
}

std::future<c10::IValue> Runner::run_async(std::vector<c10::IValue> inputs, Deadline deadline) {
  auto promise = std::make_shared<std::promise<c10::IValue>>();
  auto future = promise->get_future();
  run_async(std::move(inputs), [promise](RunOutcome outcome) {
    if (outcome.ok()) promise->set_value(std::move(outcome.output));
    else promise->set_exception(std::make_exception_ptr(Error(*outcome.error, outcome.kind)));
  }, deadline);
  return future;
}

void Runner::swap(torch::jit::Module module, std::optional<std::string> cache_namespace) {
  require(module.find_method("forward").has_value(), "Runner.swap: the module has no forward method");
  // The caller's module keeps its mode and device; warmed off the serving path:
  // requests keep flowing to the current model meanwhile.
  auto served = impl_->prepare(detail::eval_module(module), std::move(cache_namespace));
  impl_->warm_up(*served);
  impl_->warm_sizes(*served);
  impl_->install(std::move(served));
  impl_->swaps.fetch_add(1, std::memory_order_relaxed);
}

RunnerStats Runner::stats() const {
  RunnerStats stats;
  impl_->latencies.fill(stats);
  stats.seconds = seconds_since(impl_->started);
  stats.queue_depth = impl_->queue->depth();
  const auto& o = impl_->options;
  stats.caller_batches = impl_->caller_batches.load();
  stats.queue_seconds = 1e-9 * double(impl_->queue_ns.load());
  stats.assemble_seconds = 1e-9 * double(impl_->assemble_ns.load());
  stats.forward_seconds = 1e-9 * double(impl_->forward_ns.load());
  stats.max_batch = o.max_batch();
  stats.threads = o.threads();
  stats.concurrency = impl_->io->on_accelerator() ? 0 : o.concurrency();
  stats.hint = o.hint() ? runner_hint_name(*o.hint()) : "";
  stats.batch_saving = impl_->batch_saving;
  if (const auto served = impl_->current_model()) {
    std::shared_lock<std::shared_mutex> lock(served->copies_mutex);
    stats.model_copies = served->copies.size();
  }
  stats.batches = impl_->batches.load();
  stats.swaps = impl_->swaps.load();
  for (size_t n = 0; n < impl_->batch_size_slots; ++n)
    if (const uint64_t count = impl_->batch_sizes[n].load()) {
      stats.batch_sizes.resize(n + 1);
      stats.batch_sizes[n] = int64_t(count);
    }
  return stats;
}

const RunnerOptions& Runner::options() const { return impl_->options; }

std::string Runner::to_prometheus(const prometheus::Labels& labels) const {
  std::string out = stats().to_prometheus(labels);
  if (impl_->options.cache()) out += impl_->options.cache()->to_prometheus(labels);
  if (impl_->options.pool()) out += impl_->options.pool()->to_prometheus(labels);
  return out;
}

}  // namespace pare
