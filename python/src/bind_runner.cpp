// Bindings for the serving runner and the command line (python -m pare).

#include "bindings.hpp"

#include <iostream>

#include "pare/tools/cli.hpp"
#include "pare/serve/runner.hpp"

namespace pare::python {
namespace {

// pare.RunnerStats: C++'s RunnerStats field for field (batch_sizes as {size: count}),
// durations in float seconds (the *_ms fields stay for code written against them).
void bind_runner_stats(py::module_& m) {
  using S = RunnerStats;
  py::class_<S>(m, "RunnerStats", "A snapshot of a Runner's counters and latency percentiles (Runner.stats()).")
      .def_readonly("requests", &S::requests, "Requests answered, errors included.")
      .def_readonly("failures", &S::failures, "Requests that ended in an error (rejections and timeouts included).")
      .def_readonly("rejected", &S::rejected, "Requests refused at once because the queue was full (pare.Overloaded).")
      .def_readonly("timeouts", &S::timeouts, "Requests that failed at their deadline without running (pare.Timeout).")
      .def_readonly("swaps", &S::swaps, "Models installed by Runner.swap().")
      .def_readonly("batches", &S::batches, "Forward passes run (cache hits run none).")
      .def_readonly("queue_depth", &S::queue_depth, "Requests waiting now.")
      .def_readonly("model_copies", &S::model_copies, "Batch sizes the served model runs on a module of its own for.")
      .def_readonly("seconds", &S::seconds, "Seconds since construction.")
      .def_property_readonly("p50_seconds", [](const S& s) { return s.p50_ms / 1e3; },
                             "Median latency in seconds over the most recent requests (rejections excluded).")
      .def_property_readonly("p95_seconds", [](const S& s) { return s.p95_ms / 1e3; }, "95th percentile latency, seconds.")
      .def_property_readonly("p99_seconds", [](const S& s) { return s.p99_ms / 1e3; }, "99th percentile latency, seconds.")
      .def_property_readonly("max_seconds", [](const S& s) { return s.max_ms / 1e3; }, "Largest latency, seconds.")
      .def_readonly("p50_ms", &S::p50_ms, "p50_seconds in milliseconds (deprecated: use p50_seconds).")
      .def_readonly("p95_ms", &S::p95_ms, "p95_seconds in milliseconds (deprecated: use p95_seconds).")
      .def_readonly("p99_ms", &S::p99_ms, "p99_seconds in milliseconds (deprecated: use p99_seconds).")
      .def_readonly("max_ms", &S::max_ms, "max_seconds in milliseconds (deprecated: use max_seconds).")
      .def_readonly("caller_batches", &S::caller_batches, "Forward passes run on a calling thread instead of a worker.")
      .def_readonly("queue_seconds", &S::queue_seconds, "Summed over queued requests: arrival to their batch's start.")
      .def_readonly("assemble_seconds", &S::assemble_seconds, "Summed over batches: merging inputs and splitting outputs.")
      .def_readonly("forward_seconds", &S::forward_seconds, "Summed over passes: the model itself.")
      .def_readonly("max_batch", &S::max_batch, "Largest merged batch in force (as given or as the hint chose).")
      .def_readonly("threads", &S::threads, "Worker threads in force.")
      .def_readonly("concurrency", &S::concurrency, "Forward passes at once in force; 0: no limit.")
      .def_readonly("hint", &S::hint, "\"throughput\", \"latency\", or \"\" without a hint.")
      .def_readonly("batch_saving", &S::batch_saving,
                    "The hint's measurement: 1 - time(batch 8) / (8 x time(batch 1)); 0 without a hint.")
      .def_property_readonly("throughput", &S::throughput, "Requests per second since construction.")
      .def("to_prometheus", [](const S& s, const std::map<std::string, std::string>& labels) {
        return s.to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
      }, py::arg("labels") = std::map<std::string, std::string>{},
         "Prometheus text exposition (pare_runner_* families), with these labels on every sample.")
      .def_property_readonly("batch_sizes", [](const S& s) {
        py::dict sizes;
        for (size_t n = 1; n < s.batch_sizes.size(); ++n)
          if (s.batch_sizes[n]) sizes[py::int_(n)] = s.batch_sizes[n];
        return sizes;
      }, "{n: forward passes that merged n requests}.")
      .def("__repr__", [](const S& s) {
        return "<RunnerStats requests=" + std::to_string(s.requests) + " batches=" + std::to_string(s.batches) +
               " failures=" + std::to_string(s.failures) + ">";
      });
}

// pare.Runner: the C++ Runner behind a handle that close() empties. Calls
// copy the shared pointer under the GIL, so a runner closed while a call runs
// is destroyed when that call ends. The destructor joins the workers; it must
// not hold the GIL while a worker might need it (to drop a Python-linked tensor).
class RunnerHandle {
 public:
  explicit RunnerHandle(Runner* runner) : runner_(runner, [](Runner* r) {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      delete r;
    } else {
      delete r;
    }
  }) {}
  std::shared_ptr<Runner> get(const char* what) const {
    require(runner_ != nullptr, std::string(what) + ": the runner is closed; create a new pare.Runner",
            Error::Kind::Runtime);
    return runner_;
  }
  void close() { std::shared_ptr<Runner>().swap(runner_); }
  bool closed() const { return runner_ == nullptr; }

 private:
  std::shared_ptr<Runner> runner_;
};

constexpr double kMaxRunnerSeconds = 86400;

// max_batch, threads, batch_gap and concurrency are passed on only when given:
// the hint chooses those that are not (RunnerOptions::explicitly_set).
RunnerHandle make_runner(const py::object& module, const py::object& cache, const py::object& pool,
                         std::optional<int64_t> max_batch, double max_delay, std::optional<int> threads, int warmup,
                         const py::object& example_inputs, std::optional<double> batch_gap, size_t max_queue,
                         double timeout, std::vector<int64_t> preferred_batch_sizes, const py::object& cache_namespace,
                         const py::object& device, bool outputs_on_device, size_t model_copies,
                         std::optional<int> concurrency, std::optional<std::string> hint) {
  auto options = RunnerOptions().warmup(warmup).max_delay(
      from_seconds<std::chrono::microseconds>(max_delay, "Runner: max_delay", kMaxRunnerSeconds));
  if (max_batch) options.max_batch(*max_batch);
  if (threads) options.threads(*threads);
  if (concurrency) options.concurrency(*concurrency);
  if (hint) options.hint(parse_runner_hint(*hint));
  if (batch_gap)
    options.batch_gap(from_seconds<std::chrono::microseconds>(*batch_gap, "Runner: batch_gap", kMaxRunnerSeconds));
  options.max_queue(max_queue)
      .timeout(from_seconds<std::chrono::microseconds>(timeout, "Runner: timeout", kMaxRunnerSeconds))
      .preferred_batch_sizes(std::move(preferred_batch_sizes));
  if (!cache.is_none()) options.cache(cache.cast<std::shared_ptr<InferenceCache>>());
  if (!pool.is_none()) options.pool(pool.cast<std::shared_ptr<TensorPool>>());
  if (!example_inputs.is_none()) options.example_inputs(to_inputs(example_inputs, "Runner(example_inputs=...)"));
  if (!cache_namespace.is_none()) options.cache_namespace(cache_namespace.cast<std::string>());
  options.device(parse_device(device, "Runner(device=...)")).outputs_on_device(outputs_on_device);
  options.model_copies(model_copies);
  auto scripted = unwrap_module(module, "Runner");
  py::gil_scoped_release release;
  return RunnerHandle(new Runner(scripted, options));
}

// run(*inputs, timeout=None): the deadline is `timeout` seconds from now.
Runner::Deadline deadline_from(std::optional<double> timeout) {
  if (!timeout) return Runner::Deadline::max();
  return std::chrono::steady_clock::now() +
         from_seconds<std::chrono::steady_clock::duration>(*timeout, "Runner: timeout", kMaxRunnerSeconds);
}

py::object run_blocking(const RunnerHandle& handle, const py::args& args, std::optional<double> timeout) {
  auto runner = handle.get("Runner.run");
  auto inputs = to_inputs(args, "Runner.run");
  const auto deadline = deadline_from(timeout);
  c10::IValue out;
  {
    py::gil_scoped_release release;
    out = runner->run(std::move(inputs), deadline);
    runner.reset();
  }
  return torch::jit::toPyObject(out);
}

py::object python_error(const RunOutcome& outcome) { return error_class(outcome.kind)(*outcome.error); }

// The asyncio side of run_async: a future of the running loop, resolved on the
// loop's own thread (call_soon_threadsafe) from the worker's callback.
struct AsyncCall {
  py::object loop, future, resolve;

  void deliver(RunOutcome outcome) {
    py::gil_scoped_acquire gil;
    try {
      py::object value = outcome.ok() ? torch::jit::toPyObject(outcome.output) : py::none();
      py::object error = outcome.ok() ? py::none() : python_error(outcome);
      loop.attr("call_soon_threadsafe")(resolve, future, value, error);
    } catch (py::error_already_set& e) {  // the loop closed before the answer came
      e.discard_as_unraisable("pare.Runner.run_async");
    }
    loop = future = resolve = py::object();  // dropped here, with the GIL held
  }
};

void resolve_future(const py::object& future, const py::object& value, const py::object& error) {
  if (future.attr("done")().cast<bool>()) return;  // cancelled by its awaiter
  if (error.is_none()) future.attr("set_result")(value);
  else future.attr("set_exception")(error);
}

py::object run_async(const RunnerHandle& handle, const py::args& args, std::optional<double> timeout) {
  auto runner = handle.get("Runner.run_async");
  auto inputs = to_inputs(args, "Runner.run_async");
  const auto deadline = deadline_from(timeout);
  auto call = std::make_shared<AsyncCall>();
  call->loop = py::module_::import("asyncio").attr("get_running_loop")();
  call->future = call->loop.attr("create_future")();
  call->resolve = py::cpp_function(&resolve_future);
  py::object future = call->future;
  py::gil_scoped_release release;
  runner->run_async(std::move(inputs), [call](RunOutcome outcome) { call->deliver(std::move(outcome)); }, deadline);
  runner.reset();
  return future;
}

// pare.Overloaded and pare.Timeout (also a builtin TimeoutError), both pare.RuntimeFailure.
void bind_errors(py::module_& m) {
  py::handle runtime_failure = m.attr("RuntimeFailure");
  auto overloaded = new_exception(m, "Overloaded", {runtime_failure},
                                  "Refused at once: the runner's queue is full (max_queue).");
  auto timeout = new_exception(m, "Timeout", {runtime_failure, PyExc_TimeoutError},
                               "The request's deadline passed while it waited; it never ran.");
  set_runner_error_classes(overloaded.release(), timeout.release());
}

}  // namespace

void bind_runner(py::module_& m) {
  bind_errors(m);
  bind_runner_stats(m);
  const RunnerOptions defaults;
  const auto seconds = [](std::chrono::microseconds d) { return std::chrono::duration<double>(d).count(); };
  py::class_<RunnerHandle>(m, "Runner",
                           "Thread-safe serving of a ScriptModule with dynamic batching, a cache and a pool.\n\n"
                           "Close it with close() or a with block: `with pare.Runner(m) as runner: ...`.")
      .def(py::init(&make_runner), py::arg("module"), py::kw_only(), py::arg("cache") = py::none(),
           py::arg("pool") = py::none(), py::arg("max_batch") = py::none(),
           py::arg("max_delay") = seconds(defaults.max_delay()), py::arg("threads") = py::none(),
           py::arg("warmup") = defaults.warmup(), py::arg("example_inputs") = py::none(),
           py::arg("batch_gap") = py::none(), py::arg("max_queue") = defaults.max_queue(),
           py::arg("timeout") = seconds(defaults.timeout()),
           py::arg("preferred_batch_sizes") = defaults.preferred_batch_sizes(),
           py::arg("cache_namespace") = py::none(), py::arg("device") = defaults.device().str(),
           py::arg("outputs_on_device") = defaults.outputs_on_device(),
           py::arg("model_copies") = defaults.model_copies(), py::arg("concurrency") = py::none(),
           py::arg("hint") = py::none(),
           ("Serves `module` (a torch.jit.ScriptModule). Durations are float seconds: max_delay (the longest the "
            "first request of a batch waits for company), batch_gap, timeout (default deadline of a request; 0: "
            "none). max_batch (default " + std::to_string(defaults.max_batch()) + "), threads (" +
            std::to_string(defaults.threads()) + "), batch_gap (" + py::repr(py::float_(seconds(defaults.batch_gap()))).cast<std::string>() +
            ") and concurrency (" + std::to_string(defaults.concurrency()) +
            ": no limit): None keeps the default, or the choice of hint ('throughput' or 'latency': tuned to the "
            "model and host at construction on example_inputs; see RunnerStats.hint and batch_saving). max_queue: "
            "requests allowed to wait (0: unbounded; beyond it pare.Overloaded). cache: a pare.InferenceCache "
            "consulted first; pool: a pare.TensorPool for the model's allocations; device: \"cpu\" or \"cuda[:N]\".")
               .c_str())
      .def("run", &run_blocking, py::arg("timeout") = py::none(),
           "The model's output for inputs (tensors or TorchScript values, batch-of-one along dim 0 when batched). "
           "timeout: seconds from now after which a still-queued request fails with pare.Timeout (None: the "
           "runner's default).")
      .def("__call__", &run_blocking, py::arg("timeout") = py::none(), "Same as run().")
      .def("run_async", &run_async, py::arg("timeout") = py::none(),
           "An asyncio future of the output (await it inside a running event loop); the loop never blocks.")
      .def("swap", [](const RunnerHandle& handle, const py::object& module) {
             auto runner = handle.get("Runner.swap");
             auto scripted = unwrap_module(module, "Runner.swap");
             py::gil_scoped_release release;
             runner->swap(scripted);
             runner.reset();
           }, py::arg("module"), "Serve `module` from now on; queued requests finish on the current one.")
      .def("stats", [](const RunnerHandle& handle) {
             auto runner = handle.get("Runner.stats");
             py::gil_scoped_release release;
             auto stats = runner->stats();
             runner.reset();
             return stats;
           }, "A snapshot of the counters, settings and latency percentiles (pare.RunnerStats).")
      .def("to_prometheus", [](const RunnerHandle& handle, const std::map<std::string, std::string>& labels) {
             auto runner = handle.get("Runner.to_prometheus");
             py::gil_scoped_release release;
             auto text = runner->to_prometheus(prometheus::Labels(labels.begin(), labels.end()));
             runner.reset();
             return text;
           }, py::arg("labels") = std::map<std::string, std::string>{},
           "The runner's metrics, then its cache's and pool's, in the Prometheus text exposition format, with "
           "these labels on every sample.")
      .def("close", [](RunnerHandle& handle) { handle.close(); },
           "Stops the runner: its workers finish the queued requests and are joined (after the calls running "
           "now return). Later calls raise pare.RuntimeFailure. Closing twice is allowed.")
      .def_property_readonly("closed", &RunnerHandle::closed, "Whether close() was called.")
      .def("__enter__", [](py::object self) { return self; }, "Returns the runner itself.")
      .def("__exit__", [](RunnerHandle& handle, const py::object&, const py::object&, const py::object&) {
             handle.close();
             return false;
           }, py::arg("exc_type"), py::arg("exc_value"), py::arg("traceback"), "Closes the runner.");

  m.def("cli_main", [](std::vector<std::string> args) {
    py::gil_scoped_release release;
    return cli_main(args, std::cout, std::cerr);
  }, py::arg("argv"), "Runs the pare command line (argv[0] is the program name); returns the exit code.");
  m.def("inspect_model", &inspect_model, py::arg("path"),
        "A readable summary of the TorchScript file at `path`: its inputs, layers and size.");
  m.def("inspect_report", &inspect_report, py::arg("path"),
        "The report embedded in a pare export (if any) plus the file's weights and size, as a Report.");
}

}  // namespace pare::python
